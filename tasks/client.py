"""The one client factory every flow uses.

Credentials come from the environment first (IMEDNET_API_KEY,
IMEDNET_SECURITY_KEY, IMEDNET_BASE_URL), else from Prefect: Secret blocks
`imednet-api-key` / `imednet-security-key` and the Variable `imednet-base-url`.
They are never flow parameters, so they never reach the run's stored
parameters, logs or artifacts. A missing key is an error, never a fall-back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from prefect.blocks.system import Secret
from prefect.logging import get_run_logger
from prefect.settings import PREFECT_API_URL
from prefect.variables import Variable

from imednet_flows.edc.client import Credentials, ImednetClient
from imednet_flows.edc.errors import ImednetFlowsError

API_KEY_BLOCK = "imednet-api-key"
SECURITY_KEY_BLOCK = "imednet-security-key"
BASE_URL_VARIABLE = "imednet-base-url"
DEFAULT_CONCURRENCY = 4


def _secret(env: str, block: str) -> str:
    value = os.environ.get(env, "").strip()
    if value:
        return value
    try:
        return str(Secret.load(block).get()).strip()  # type: ignore[union-attr]
    except ValueError:
        raise ImednetFlowsError(
            f"no iMednet credential: set the environment variable {env} or create the Prefect "
            f"Secret block '{block}' (`imednet-flows configure` does it)."
        ) from None


def resolve_credentials() -> Credentials:
    base_url = os.environ.get("IMEDNET_BASE_URL", "").strip() or None
    if base_url is None:
        base_url = Variable.get(BASE_URL_VARIABLE, default=None) or None
    return Credentials(
        base_url=base_url,
        api_key=_secret("IMEDNET_API_KEY", API_KEY_BLOCK),
        security_key=_secret("IMEDNET_SECURITY_KEY", SECURITY_KEY_BLOCK),
    )


def default_concurrency() -> int:
    return int(os.environ.get("IMEDNET_FLOWS_MAX_CONCURRENCY") or DEFAULT_CONCURRENCY)


@contextmanager
def imednet_client(max_concurrency: int | None = None) -> Iterator[ImednetClient]:
    """A client for one flow run; its semaphore bounds every API task of the run."""
    credentials = resolve_credentials()
    client = ImednetClient(
        credentials,
        max_concurrency=max_concurrency or default_concurrency(),
        credentials_source=resolve_credentials,
    )
    get_run_logger().info("iMednet API at %s", credentials.base_url or "the hosted service")
    try:
        yield client
    finally:
        client.close()


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
