"""Whether a command's run is recorded in Prefect, decided without importing Prefect.

Importing Prefect alone costs about a second, and a flow run with no Prefect API configured
starts a temporary server first (most of the ten seconds `imednet-flows queries` used to
take). So the command line asks this module first: with an API configured, a command runs
its flow and the run is recorded there; without one, it runs the same workflow functions
directly and says it was not recorded.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from imednet_flows.settings import Settings, settings


def configured_api_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The Prefect API a flow run would report to: `PREFECT_API_URL` from the environment
    (this process's unless `environ` is given), else from the active profile (where
    `prefect config set` writes it). None means Prefect would start a temporary server of
    its own for the run."""
    config = settings() if environ is None else Settings.of(environ)
    if config.prefect_api_url:
        return config.prefect_api_url
    home = Path(config.prefect_home or "~/.prefect").expanduser()
    path = Path(config.prefect_profiles_path or home / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None  # Prefect itself falls back to its default (temporary server) profile
    active = config.prefect_profile or profiles.get("active")
    profile = (profiles.get("profiles") or {}).get(active) or {}
    value = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return str(value or "").strip() or None


@dataclass(frozen=True)
class Recording:
    """How one command runs: as a Prefect flow run (recorded) or directly (not)."""

    as_flow: bool
    api_url: str | None

    def announcement(self) -> str:
        """Said before a run starts, so a person knows where (or whether) to look for it."""
        if not self.as_flow:
            return (
                "not recorded in Prefect: no Prefect API is configured (PREFECT_API_URL), so "
                "the flow's code runs directly; to record it, set PREFECT_API_URL or put --record "
                "before the command"
            )
        if self.api_url is None:
            return (
                "recorded in Prefect: no Prefect API is configured, so Prefect starts a "
                "temporary local server first (several seconds) and keeps the run in the "
                "database under PREFECT_HOME"
            )
        return f"recorded in Prefect at {self.api_url}"


def decide(record: bool | None, environ: Mapping[str, str] | None = None) -> Recording:
    """`record` is the user's choice (--record / --no-record); None follows the
    configuration: a flow run when a Prefect API is configured, direct otherwise."""
    url = configured_api_url(environ)
    return Recording(as_flow=url is not None if record is None else record, api_url=url)
