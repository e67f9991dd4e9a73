"""Progress of long work, told to whoever listens (no Prefect).

Listings, sync pages and upsert batches publish steps here from any thread. Nobody listens
by default, so a scheduled flow run pays one check per page. The command line, which runs
flows in its own process, subscribes and draws a bar (or prints plain lines): the same
steps reach it whether the work runs as a Prefect flow or directly. Prefect's own progress
artifact is fed separately by the sync task; this registry is what a terminal sees.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

#: The sync's page callback (`StudySync(progress=...)`): entity, page (1-based), total pages.
PageCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Step:
    """One piece of news about one piece of work. A listener shows one line per `key`.

    `completed` is absolute (page 3 of 7); `advance` adds to what was there (a batch of
    rows sent), for work whose parts finish in any order on several threads.
    """

    key: str
    label: str
    unit: str = "pages"
    completed: int | None = None
    advance: int = 0
    total: int | None = None


Listener = Callable[[Step], None]

_listeners: list[Listener] = []
_lock = threading.Lock()
_numbers = itertools.count(1)


def listening() -> bool:
    """Whether anyone listens; publishers skip building steps when not."""
    return bool(_listeners)


@contextmanager
def subscribed(listener: Listener) -> Iterator[None]:
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def publish(step: Step) -> None:
    """Tell every listener. A listener that fails is ignored: progress is a nicety and must
    never fail the work it reports on."""
    for listener in tuple(_listeners):
        with contextlib.suppress(Exception):
            listener(step)


def new_key(label: str) -> str:
    """A key of its own for one listing: two listings of the same route (the chunks of a
    restricted extraction) get two lines."""
    return f"{label}#{next(_numbers)}"


def study_pages(study_key: str, inner: PageCallback | None = None) -> PageCallback:
    """The sync's page callback for one study: tells `inner` (the Prefect progress artifact,
    when there is one) and the listeners here, one line per entity."""
    keys: dict[str, str] = {}

    def report(entity: str, page: int, total_pages: int) -> None:
        if inner is not None:
            inner(entity, page, total_pages)
        if not listening():
            return
        label = f"{study_key} {entity}"
        if page <= 1 or entity not in keys:
            keys[entity] = new_key(label)
        publish(Step(keys[entity], label, "pages", completed=page, total=total_pages))

    return report


def upsert_key(study_key: str, what: str) -> str:
    """Keys of the upsert's two lines ("rows" sent, "jobs" finished): the tasks publish to
    them, and the command line announces their totals before the flow starts."""
    return f"upsert {study_key} {what}"
