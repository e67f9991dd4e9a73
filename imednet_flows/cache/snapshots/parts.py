"""Which id ranges a table's parts cover, and which of them a set of changed ids touches.

A table of a snapshot set (``records.parquet/``) is a directory of parts; part k holds the
rows whose id lies in ``[lo_k, lo_{k+1})`` (the first part's range is open below, the last
one's above), so every id, even one added later, falls in exactly one part. Ranges are cut
by row counts, never by id values, so sparse ids do not make small files: a table built
whole gets a new part every ``part_rows`` rows, ids added later go to the part whose range
holds them, and a part that grows past twice ``part_rows`` is split again.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

#: Rows per part when a table is built whole. Measured (benchmarks/snapshot_throughput.py,
#: 200k records): a delta of the newest 0.1 % costs 0.27 / 0.45 / 0.84 s with parts of 8k /
#: 16k / 32k rows, a delta of 0.1 % random edits about 3 s with any of them (it touches
#: every part), a full build the same; 16k keeps the file count at 200k records near 70.
PART_ROWS = 16_384
#: The size of a part still being written (see `writer._SetWriter.finish`).
UNSIZED = -1


@dataclass(frozen=True)
class Part:
    """One file of a table: its range's lower bound (None: open below), its row count,
    its file name inside the table's directory, and its size (checked before reuse)."""

    lo: Any
    rows: int
    file: str
    bytes: int

    def entry(self) -> dict[str, Any]:
        return {"lo": self.lo, "rows": self.rows, "file": self.file, "bytes": self.bytes}

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> Part:
        return cls(entry["lo"], int(entry["rows"]), str(entry["file"]), int(entry["bytes"]))


@dataclass(frozen=True)
class Range:
    """Ids ``lo <= id < hi``; None leaves that side open."""

    lo: Any = None
    hi: Any = None


_PART_FILE = re.compile(r"part-[0-9]{5,}\.parquet")


def part_file(number: int) -> str:
    """Part names sort in id order, so engines reading a directory read rows in id order."""
    return f"part-{number:05d}.parquet"


def ranges(parts: Sequence[Part]) -> list[Range]:
    """The id range each part covers; together they cover every id."""
    return [
        Range(None if k == 0 else part.lo, parts[k + 1].lo if k + 1 < len(parts) else None)
        for k, part in enumerate(parts)
    ]


def touched(parts: Sequence[Part], ids: Iterable[Any]) -> dict[int, list[Any]] | None:
    """The ids of `ids` in each part whose range holds any of them, by part index; None if
    an id cannot be placed (its type does not compare with the bounds), so the caller
    rebuilds the table."""
    bounds = [part.lo for part in parts[1:]]
    found: dict[int, list[Any]] = {}
    try:
        for row_id in ids:
            found.setdefault(bisect_right(bounds, row_id), []).append(row_id)
    except TypeError:
        return None
    return found


def chunk_sizes(rows: int, part_rows: int, split_above: int) -> list[int]:
    """How many rows each part of a range holding `rows` gets: one part up to
    `split_above`, else parts of at most `part_rows`, evenly filled."""
    if rows <= split_above:
        return [rows]
    count = math.ceil(rows / part_rows)
    base, extra = divmod(rows, count)
    return [base + 1] * extra + [base] * (count - extra)


def parse_parts(entry: dict[str, Any] | None) -> list[Part] | None:
    """A manifest entry's parts, or None if they are missing or malformed (the table is
    then rebuilt, which is always correct)."""
    if not isinstance(entry, dict):
        return None
    try:
        parts = [Part.from_entry(p) for p in entry["parts"]]
    except (KeyError, TypeError, ValueError):
        return None
    if not parts or parts[0].lo is not None:
        return None
    if not all(_PART_FILE.fullmatch(p.file) for p in parts):
        return None  # only files this code names are ever linked from an older set
    lows = [p.lo for p in parts[1:]]
    try:
        if any(a >= b for a, b in pairwise(lows)):
            return None
    except TypeError:
        return None
    return parts
