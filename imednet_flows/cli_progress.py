"""How the command line shows progress: bars on a terminal, plain lines anywhere else.

Both listen to `imednet_flows.progress` and write to stderr, so stdout keeps only results
(a frame, JSON) that a script may read. A log file or a pipe gets a line when a piece of
work starts, when it ends, and at most every few seconds in between, never the escape codes
a bar is drawn with.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from imednet_flows import progress
from imednet_flows.progress import Step


class Display(Protocol):
    def expect(self, key: str, label: str, unit: str, total: int | None) -> None: ...

    def __call__(self, step: Step) -> None: ...


@dataclass
class _Line:
    label: str
    unit: str
    done: int = 0
    total: int | None = None
    said_at: float | None = None
    said_done: int = -1


class PlainLines:
    """`label: done/total unit` lines: the first news of each piece of work, its end, and
    at most one line per `every` seconds of each in between."""

    def __init__(
        self, stream: TextIO, every: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stream = stream
        self.every = every
        self.clock = clock
        self.lines: dict[str, _Line] = {}
        self.lock = threading.Lock()

    def expect(self, key: str, label: str, unit: str, total: int | None) -> None:
        with self.lock:
            self.lines[key] = _Line(label, unit, total=total)

    def __call__(self, step: Step) -> None:
        with self.lock:
            line = self.lines.setdefault(step.key, _Line(step.label, step.unit))
            line.done = step.completed if step.completed is not None else line.done + step.advance
            if step.total is not None:
                line.total = step.total
            now = self.clock()
            finished = line.total is not None and line.done >= line.total
            due = line.said_at is None or now - line.said_at >= self.every
            if line.done != line.said_done and (finished or due):
                line.said_at, line.said_done = now, line.done
                of = f"/{line.total}" if line.total is not None else ""
                self.stream.write(f"{line.label}: {line.done}{of} {line.unit}\n")
                self.stream.flush()

    def close(self) -> None:
        """Say where each piece of work stopped, if the last news was not said yet."""
        with self.lock:
            for line in self.lines.values():
                if line.done != line.said_done and line.said_at is not None:
                    of = f"/{line.total}" if line.total is not None else ""
                    self.stream.write(f"{line.label}: {line.done}{of} {line.unit}\n")
            self.stream.flush()


def _terminal_log_handlers() -> list[logging.Handler]:
    """Log handlers that print to a terminal through a rich console of their own, as
    Prefect's console handler does (each once, wherever it is attached)."""
    from rich.console import Console

    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    found: dict[int, logging.Handler] = {}
    for logger in loggers:
        for handler in logger.handlers:
            console = getattr(handler, "console", None)
            if isinstance(console, Console) and console.is_terminal:
                found.setdefault(id(handler), handler)
    return list(found.values())


class Bars:
    """One rich progress bar per piece of work, left on screen when done.

    Log lines printed while the bars show must go through the bars' console, which draws
    them above the bars; printed past it, each lands inside a bar and the bars are drawn
    again below it. So a log handler that prints to a terminal through a rich console of its
    own (Prefect's does) prints through the bars' console until they close. (Sharing the
    handler's console instead fails: Prefect's theme has none of the bars' styles.)
    """

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            console=Console(file=stream),
        )
        self.tasks: dict[str, int] = {}
        self.lock = threading.Lock()
        self.shared: list[tuple[logging.Handler, Any]] = []

    def expect(self, key: str, label: str, unit: str, total: int | None) -> None:
        with self.lock:
            self.tasks[key] = self.progress.add_task(label, total=total, unit=unit)

    def __call__(self, step: Step) -> None:
        with self.lock:
            task = self.tasks.get(step.key)
            if task is None:
                task = self.tasks[step.key] = self.progress.add_task(
                    step.label, total=step.total, unit=step.unit
                )
        self.progress.update(
            task, completed=step.completed, advance=step.advance or None, total=step.total
        )

    def start(self) -> None:
        for handler in _terminal_log_handlers():
            self.shared.append((handler, handler.console))  # type: ignore[attr-defined]
            handler.console = self.progress.console  # type: ignore[attr-defined]
        self.progress.start()

    def close(self) -> None:
        self.progress.stop()
        for handler, console in self.shared:
            handler.console = console  # type: ignore[attr-defined]
        self.shared.clear()


def on_terminal(stream: TextIO) -> bool:
    """What rich itself would draw on (a TTY that is not TERM=dumb, or FORCE_TERMINAL)."""
    from rich.console import Console

    console = Console(file=stream)
    return console.is_terminal and not console.is_dumb_terminal


@contextmanager
def shown(stream: TextIO | None = None) -> Iterator[Display]:
    """Progress of everything published while the block runs, on `stream` (stderr)."""
    stream = stream or sys.stderr
    display: Bars | PlainLines
    if on_terminal(stream):
        display = Bars(stream)
        display.start()
    else:
        display = PlainLines(stream)
    try:
        with progress.subscribed(display):
            yield display
    finally:
        display.close()
