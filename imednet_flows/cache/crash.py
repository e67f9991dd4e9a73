"""Named crash points for reliability tests: `IMEDNET_FLOWS_CRASH_AT=<point>` makes the
process write a marker file and SIGKILL itself there, the harshest way a sync can die."""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "IMEDNET_FLOWS_CRASH_AT"
MARKER_ENV = "IMEDNET_FLOWS_CRASH_MARKER"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) != name:
        return
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).write_text(name)
    os.kill(os.getpid(), signal.SIGKILL)
