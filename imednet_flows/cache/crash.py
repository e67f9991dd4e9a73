"""Named crash points for reliability tests: `IMEDNET_FLOWS_CRASH_AT=<point>` makes the
process write a marker file (`IMEDNET_FLOWS_CRASH_MARKER`) and SIGKILL itself there, the
harshest way a sync can die."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from imednet_flows.settings import Settings, settings

ENV = Settings.variable("crash_at")
MARKER_ENV = Settings.variable("crash_marker")


def crash_point(name: str) -> None:
    config = settings()
    if config.crash_at != name:
        return
    if config.crash_marker:
        Path(config.crash_marker).write_text(name)
    os.kill(os.getpid(), signal.SIGKILL)
