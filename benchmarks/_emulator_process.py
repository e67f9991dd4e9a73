"""The emulator in its own process, shared by the benchmark scripts.

Why a separate process: a benchmark must not pay for the emulator's CPU and memory, nor
see its own numbers skewed by it, and the emulator's RSS is read from /proc from outside.
Every script also needs the same guarantees: the pipes are drained for the whole run (a
full pipe would block the emulator) and the process is stopped on any error, Ctrl-C or
SIGTERM instead of being orphaned. Imported by path (`benchmarks/` is sys.path[0] when a
script in it runs), not as a package.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from imednet_flows.emulator import DEMO_API_KEY, DEMO_SECURITY_KEY, EmulatorClient

#: The headers the SDK sends; raw-HTTP measurements use exactly these.
AUTH_HEADERS = {"x-api-key": DEMO_API_KEY, "x-imn-security-key": DEMO_SECURITY_KEY}
_LISTENING = re.compile(r"listening on (http://\S+)")
_SEEDED = re.compile(r"seeded in ([0-9.]+)s")


def log(message: str) -> None:
    """Progress goes to stderr so `--json` output on stdout stays machine-readable."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def read_memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) from /proc: the kernel's view, no psutil needed."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024.0  # kB -> MiB
    return values


def console_command() -> str:
    """The venv's `imednet-flows` script, so the emulator runs exactly as a user starts it."""
    sibling = Path(sys.executable).with_name("imednet-flows")
    if sibling.exists():
        return str(sibling)
    found = shutil.which("imednet-flows")
    if found is None:
        raise RuntimeError("the imednet-flows console command is not installed in this venv")
    return found


@dataclass
class EmulatorProcess:
    """The emulator in its own process, so its memory and CPU are measured apart from ours."""

    records: int
    study: str
    intervals: int
    forms_per_interval: int
    proc: subprocess.Popen[str] | None = None
    base_url: str = ""
    stdout_lines: list[str] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    _first_line: threading.Event = field(default_factory=threading.Event)

    def _pump(self, stream: IO[str], sink: list[str], signal_first: bool) -> None:
        # Drain the pipes for the whole run: a full pipe would block the emulator.
        for line in stream:
            sink.append(line.rstrip("\n"))
            if signal_first:
                self._first_line.set()
        self._first_line.set()  # EOF: let start() notice the process died

    def start(self, timeout: float) -> None:
        cmd = [
            console_command(),
            "emulator",
            "--port",
            "0",
            "--records",
            str(self.records),
            "--study",
            self.study,
            "--intervals",
            str(self.intervals),
            "--forms-per-interval",
            str(self.forms_per_interval),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for stream, sink, first in (
            (self.proc.stdout, self.stdout_lines, True),
            (self.proc.stderr, self.stderr_lines, False),
        ):
            threading.Thread(target=self._pump, args=(stream, sink, first), daemon=True).start()
        if not self._first_line.wait(timeout) or not self.stdout_lines:
            raise RuntimeError(f"emulator printed nothing in {timeout:.0f}s{self._stderr_tail()}")
        listening = time.perf_counter()
        match = _LISTENING.search(self.stdout_lines[0])
        if match is None:
            first = self.stdout_lines[0]
            raise RuntimeError(f"unexpected first line {first!r}{self._stderr_tail()}")
        self.base_url = match.group(1)
        admin = EmulatorClient(self.base_url)
        try:
            admin.wait_ready(timeout=timeout)
        finally:
            admin.close()
        ready = time.perf_counter()
        seeded = _SEEDED.search(self.stdout_lines[0])
        self.timings = {
            "to_listening_line_s": listening - started,
            "to_ready_s": ready - started,
            "seeded_in_s": float(seeded.group(1)) if seeded else float("nan"),
        }

    def _stderr_tail(self) -> str:
        tail = "\n".join(self.stderr_lines[-15:])
        return f"\nemulator stderr:\n{tail}" if tail else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def memory(self) -> dict[str, float]:
        return read_memory_mib(self.pid)

    def stop(self) -> int | None:
        """SIGTERM, then wait; SIGKILL only if it will not go. Safe to call twice."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log("emulator ignored SIGTERM for 30 s; killing it")
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so a CI timeout still reaches `finally` and stops
    the emulator process instead of orphaning it."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def table_row(cells: Sequence[str], widths: Sequence[int]) -> str:
    """One line of the results table: metric, value, target, verdict."""
    return f"{cells[0]:<{widths[0]}}  {cells[1]:>{widths[1]}}  {cells[2]:<{widths[2]}}  {cells[3]}"


def positive(text: str) -> int:
    """argparse type for counts that must be at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


@contextmanager
def environment(updates: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a block and restore the caller's values afterwards."""
    previous = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_main(
    results_of: Callable[[], dict[str, Any]], render: Callable[[dict[str, Any]], str], as_json: bool
) -> int:
    """Run a benchmark (SIGTERM stops it cleanly) and print its table or its JSON."""
    with sigterm_as_interrupt():
        results = results_of()
    if as_json:
        sys.stdout.write(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render(results))
    return 0
