"""The one writer of a cache: a FileLock beside the SQLite file.

Writers queue on `<cache_path>.lock`; readers never take it (WAL lets them read while a
sync writes). The lock is an OS lock, so a killed process releases it. Whoever holds it is
the only live run of that cache, which is what makes clearing the cache's staging
leftovers safe right after taking it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from imednet_flows.cache import staging


def lock_path(cache_path: str | Path) -> Path:
    path = Path(cache_path).resolve()
    return path.with_name(path.name + ".lock")


@contextmanager
def exclusive_writer(cache_path: str | Path, timeout: float) -> Iterator[FileLock]:
    """Hold the cache's lock (raises filelock.Timeout after `timeout` seconds) with the
    staging files of crashed earlier runs cleared."""
    lock = FileLock(lock_path(cache_path), timeout=timeout)
    with lock:
        staging.clear_leftovers(cache_path)
        yield lock
