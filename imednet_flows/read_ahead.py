"""An iterator worked one step ahead in a thread of its own.

Downloading the next page, or reading the next batch of rows out of SQLite, waits on
sockets and disks and releases the GIL for much of it: done in a worker thread while the
caller handles the current item, it overlaps the caller's work instead of adding to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
_END = object()


@contextmanager
def read_ahead(items: Iterable[T], name: str) -> Iterator[Iterator[T]]:
    """`items`, advanced in a worker thread one item ahead of the caller: two items in
    memory at most. Leaving the block waits for the one item under way, so the source
    (a cursor, a client) is never used by two threads at once, nor after the block."""
    source = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix=name) as pool:

        def ahead() -> Iterator[T]:
            pending = pool.submit(next, source, _END)
            while True:
                item = pending.result()
                if item is _END:
                    return
                pending = pool.submit(next, source, _END)
                yield item  # type: ignore[misc]

        yield ahead()
