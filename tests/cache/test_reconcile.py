"""The hard-delete walk, tested directly against an in-memory server: exact answers, and a
request count that grows with the number of differences, not with the study.

README promises O(d log N) requests for d hard deletes among N rows, and none beyond the
first count when nothing changed; the end-to-end sync tests only see that it works.
"""

from __future__ import annotations

import bisect
import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from imednet_flows.cache.reconcile import LEAF_ROWS, Differences, find_differences


class Server:
    """Ids the server holds, answering the two questions the walk asks."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = sorted(ids)
        self.counts = 0
        self.listings = 0

    def count(self, lo: int, hi: int) -> int:
        self.counts += 1
        return bisect.bisect_right(self.ids, hi) - bisect.bisect_left(self.ids, lo)

    def rows(self, lo: int, hi: int) -> list[dict[str, int]]:
        self.listings += 1
        found = self.ids[bisect.bisect_left(self.ids, lo) : bisect.bisect_right(self.ids, hi)]
        return [{"recordId": i} for i in found]


def walk(local: list[int], server: Server) -> Differences:
    return find_differences(sorted(local), len(server.ids), server.count, server.rows, "recordId")


def test_nothing_changed_costs_no_request() -> None:
    ids = list(range(1, 100_001))
    server = Server(ids)
    out = walk(ids, server)
    assert (out.vanished, out.missing, out.requests) == ([], [], 0)


def test_d_deletions_among_n_rows_cost_o_d_log_n_requests() -> None:
    n = 100_000
    ids = list(range(1, n + 1))
    rng = random.Random(7)
    for d in (1, 10, 100):
        gone = sorted(rng.sample(ids, d))
        server = Server(sorted(set(ids) - set(gone)))
        out = walk(ids, server)
        assert out.vanished == gone
        assert out.missing == []
        assert out.requests == server.counts + server.listings
        depth = math.ceil(math.log2(n / LEAF_ROWS)) + 1
        assert out.requests <= d * (depth + 1), (d, out.requests)


def test_rows_the_cache_lacks_are_found_on_the_way() -> None:
    ids = list(range(1, 50_001))
    skipped = [17, 25_000, 49_999]
    server = Server(ids)
    out = walk(sorted(set(ids) - set(skipped)), server)
    assert out.vanished == []
    assert [row["recordId"] for row in out.missing] == skipped


def test_an_empty_cache_lists_what_the_server_has() -> None:
    server = Server([3, 9, 1_000_000])
    out = walk([], server)
    assert [row["recordId"] for row in out.missing] == [3, 9, 1_000_000]


def test_everything_deleted_on_the_server_is_found() -> None:
    ids = list(range(1, 5_001))
    out = walk(ids, Server([]))
    assert out.vanished == ids


id_sets = st.sets(st.integers(min_value=1, max_value=10**7), max_size=2_000)


@settings(max_examples=60, deadline=None)
@given(local=id_sets, data=st.data())
def test_only_deletions_are_found_exactly(local: set[int], data: st.DataObject) -> None:
    gone = data.draw(st.sets(st.sampled_from(sorted(local)))) if local else set()
    out = walk(sorted(local), Server(sorted(local - gone)))
    assert out.vanished == sorted(gone)
    assert out.missing == []


@settings(max_examples=60, deadline=None)
@given(local=id_sets, added=id_sets)
def test_only_additions_are_found_exactly(local: set[int], added: set[int]) -> None:
    new = added - local
    out = walk(sorted(local), Server(sorted(local | new)))
    assert out.vanished == []
    assert sorted(row["recordId"] for row in out.missing) == sorted(new)
