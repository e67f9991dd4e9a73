"""Where the iMednet keys come from, and where `imednet-flows configure` stores them.

Credentials come from the environment first (IMEDNET_API_KEY, IMEDNET_SECURITY_KEY,
IMEDNET_BASE_URL, read through `imednet_flows.settings`), else from Prefect: Secret blocks
`imednet-api-key` / `imednet-security-key` and the Variable `imednet-base-url`. They are
never flow parameters, so they never reach the run's stored parameters, logs or
artifacts. A missing key is an error, never a fall-back.

In the library, not with the flows: a direct run, `doctor` and `configure` need the keys
but no Prefect project. It imports Prefect, so import it only where keys are looked up
there; `edc/` stays free of Prefect.
"""

from __future__ import annotations

import httpx
from prefect.blocks.system import Secret
from prefect.settings import PREFECT_API_URL
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect.variables import Variable

from imednet_flows.edc.client import Credentials
from imednet_flows.edc.errors import ImednetFlowsError
from imednet_flows.settings import Settings, settings

API_KEY_BLOCK = "imednet-api-key"
SECURITY_KEY_BLOCK = "imednet-security-key"
BASE_URL_VARIABLE = "imednet-base-url"

#: (settings field, Secret block) of each key, in the order they are looked up.
KEYS = (("api_key", API_KEY_BLOCK), ("security_key", SECURITY_KEY_BLOCK))


def _env(config: Settings, field: str) -> str:
    """A key or the base URL as the environment holds it; "" when unset."""
    value = getattr(config, field)
    if value is None:
        return ""
    return value if isinstance(value, str) else value.get_secret_value()


def _missing(field: str, block: str) -> ImednetFlowsError:
    return ImednetFlowsError(
        f"no iMednet credential: set the environment variable {Settings.variable(field)} "
        "or create the Prefect "
        f"Secret block '{block}' (`imednet-flows configure` does it)."
    )


def resolve_credentials() -> Credentials:
    """`aresolve_credentials` from synchronous code (one lookup, not a sync twin of it)."""
    return run_coro_as_sync(aresolve_credentials())


async def aresolve_credentials() -> Credentials:
    """The keys and base URL: the environment first, else Prefect's Secret blocks and
    Variable (awaited: in an async flow Prefect's block and variable calls must be)."""
    config = settings()
    keys = []
    for name, block in KEYS:
        value = _env(config, name)
        if not value:
            try:
                value = str((await Secret.aload(block)).get()).strip()
            except ValueError:
                raise _missing(name, block) from None
        keys.append(value)
    base_url = (
        _env(config, "base_url") or await Variable.aget(BASE_URL_VARIABLE, default=None) or None
    )
    return Credentials(base_url, *keys)


def store_credentials(api_key: str, security_key: str, base_url: str | None = None) -> None:
    """What `imednet-flows configure` stores: keys as Secret blocks, the URL as a Variable."""
    if not api_key.strip() or not security_key.strip():
        raise ImednetFlowsError("both the API key and the security key are needed")
    try:
        Secret(value=api_key.strip()).save(API_KEY_BLOCK, overwrite=True)
        Secret(value=security_key.strip()).save(SECURITY_KEY_BLOCK, overwrite=True)
        if base_url:
            Variable.set(BASE_URL_VARIABLE, base_url.strip(), overwrite=True)
    except (httpx.TransportError, OSError) as exc:
        url = PREFECT_API_URL.value()
        raise ImednetFlowsError(
            f"cannot reach the Prefect API at {url} ({exc}); nothing was stored. Start that "
            "server (`prefect server start`) or correct PREFECT_API_URL (unset, a local "
            "Prefect database under PREFECT_HOME is used)."
        ) from exc
