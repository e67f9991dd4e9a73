"""Finding hard deletes without downloading the study again.

The server's count over an id range is one `size=1` request. Where the count
of a range differs from the cache's, split the range at the median cached id
(the right half's server count follows by subtraction, so a split costs one
request) until a range is small enough to list its ids in one page. With d
vanished rows that is O(d log N) requests; with none, zero beyond the first
count. The same walk finds rows the cache lacks, so a row skipped while paging
is recovered too.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imednet_flows.edc.server_checks import check_split

#: Largest range listed outright; one page of the API.
LEAF_ROWS = 200
#: Above every id the API hands out: the search's top range ends here.
ID_CEILING = 2**62

CountFn = Callable[[int, int], int]
ListFn = Callable[[int, int], list[dict[str, Any]]]


@dataclass
class Differences:
    vanished: list[int] = field(default_factory=list)  # cached, gone from the server
    missing: list[dict[str, Any]] = field(default_factory=list)  # on the server, not cached
    requests: int = 0


def find_differences(
    local_ids: list[int],
    server_total: int,
    server_count: CountFn,
    server_rows: ListFn,
    id_field: str,
    leaf_rows: int = LEAF_ROWS,
) -> Differences:
    """Compare the cached ids (sorted) with the server's, given the server's total."""
    out = Differences()
    if not local_ids and server_total == 0:
        return out
    lo = min(local_ids[0], 0) if local_ids else 0
    _walk(
        local_ids, lo, ID_CEILING, server_total, server_count, server_rows, id_field, leaf_rows, out
    )
    out.vanished.sort()
    return out


def _walk(
    ids: list[int],
    lo: int,
    hi: int,
    server_n: int,
    server_count: CountFn,
    server_rows: ListFn,
    id_field: str,
    leaf_rows: int,
    out: Differences,
) -> None:
    if server_n == len(ids):
        return  # same count: taken as the same set (see module docstring)
    # A range of at most leaf_rows ids is listed whatever its count: a count derived while
    # rows vanish can exceed what the range holds, and halving ranges must end somewhere.
    if len(ids) <= leaf_rows and (server_n <= leaf_rows or hi - lo < leaf_rows):
        rows = server_rows(lo, hi)
        out.requests += 1
        server_ids = {row[id_field] for row in rows}
        local = set(ids)
        out.vanished += sorted(local - server_ids)
        out.missing += [row for row in rows if row[id_field] not in local]
        return
    # Split at the median cached id; with (almost) none cached, split the id range itself.
    mid = lo + (hi - lo) // 2 if len(ids) <= 1 else ids[len(ids) // 2]
    if mid <= lo:
        mid = lo + 1
    left_n = server_count(lo, mid - 1)
    out.requests += 1
    check_split(left_n, lo, mid - 1, server_n, lo, hi, id_field)
    split = bisect.bisect_left(ids, mid)
    _walk(ids[:split], lo, mid - 1, left_n, server_count, server_rows, id_field, leaf_rows, out)
    _walk(
        ids[split:], mid, hi, server_n - left_n, server_count, server_rows, id_field, leaf_rows, out
    )
