"""What the command-line tests share: a user's environment for a real process."""

from __future__ import annotations

import os
import re
from pathlib import Path

from imednet_flows.emulator import DEMO_API_KEY, DEMO_SECURITY_KEY, EmulatorServer


def user_env(server: EmulatorServer, home: Path, api_url: str | None = None) -> dict[str, str]:
    """A user's environment: keys and URL of the emulator exported, Prefect's home empty (no
    profile, so no Prefect API is configured unless `api_url` is given), and none of this
    test process's Prefect settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        IMEDNET_BASE_URL=server.base_url,
        IMEDNET_API_KEY=DEMO_API_KEY,
        IMEDNET_SECURITY_KEY=DEMO_SECURITY_KEY,
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return env


def one_line(output: str) -> str:
    """A CLI message as one line: Rich's error box and its line wrapping removed, so a check
    for a phrase does not depend on where a long path made the box wrap it."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())
