"""Parquet parts written in a thread of their own, while the next rows are read and typed.

Arrow encodes and compresses a row group without holding the GIL, and reads a part or a
block of JSON the same way, so a set's next batch (a SQLite read and Arrow's typing) can
proceed while the previous batch is encoded: on two cores a set takes about as long as
its slower side (typing in a full build, encoding in a delta) rather than the sum of
both. A second writing thread measured no better on two cores. Writes run in one thread,
in the order they were submitted, and at most `MAX_PENDING` wait at a time, so memory
stays a few batches whatever the size of the study.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

#: Writes queued at most (each holds one batch or one patched part in memory).
MAX_PENDING = 2


class PartFile:
    """One Parquet part, opened on its first write (in the writing thread)."""

    def __init__(self, path: Path, schema: pa.Schema, options: dict[str, Any]) -> None:
        self.path = path
        self.schema = schema
        self.options = options
        self._writer: pq.ParquetWriter | None = None

    def _open(self) -> pq.ParquetWriter:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self.schema, **self.options)
        return self._writer

    def write(self, table: pa.Table, row_group_size: int) -> None:
        self._open().write_table(table, row_group_size=row_group_size)

    def close(self, empty: bool, mode: int) -> None:
        """Finish the file (an empty part still gets the columns readers need) and make it
        read-only: parts are shared between sets by hard links."""
        writer = self._open()
        if empty:
            writer.write_table(self.schema.empty_table())
        writer.close()
        self.path.chmod(mode)


class BackgroundWriter:
    """One writing thread; errors surface at the next `submit` or at `wait`."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-write")
        self._pending: deque[Future[None]] = deque()
        self._max_pending = max_pending

    def submit(self, job: Callable[..., None], *args: Any) -> None:
        while len(self._pending) >= self._max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(job, *args))

    def wait(self) -> None:
        """Every submitted write done, or the first one's error raised."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Stop: what is queued is dropped, what runs is let finish (a set that failed is
        left in its temporary folder, which the next run removes)."""
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
