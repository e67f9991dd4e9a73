"""The one pager every listing and the sync go through, tested directly: the stop rule, the
start page, how far prefetch runs ahead, and the filter scope the SDK would send.

End-to-end tests only see whole listings; a pager that fetched one page too many, or ran
ahead of a caller that stopped, would pass there and cost requests (or worse, read a page the
server no longer has) in production.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from imednet_flows.edc.paging import page_params, paged, scoped_filter, study_scope


@dataclass(frozen=True)
class FakePage:
    number: int
    total_pages: int


class Server:
    """Pages of a listing whose page count may change while it is read."""

    def __init__(self, total_pages: list[int] | int) -> None:
        self.totals = total_pages
        self.fetched: list[int] = []
        self.lock = threading.Lock()

    def fetch(self, number: int) -> FakePage:
        with self.lock:
            self.fetched.append(number)
            calls = len(self.fetched)
        total = self.totals if isinstance(self.totals, int) else self.totals[calls - 1]
        return FakePage(number, total)


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize(("total", "expected"), [(0, [0]), (1, [0]), (3, [0, 1, 2])])
def test_pages_until_total_pages_says_stop(total: int, expected: list[int], prefetch: bool) -> None:
    """An empty listing is still one request (the server's answer says it is empty)."""
    server = Server(total)
    assert [p.number for p in paged(server.fetch, prefetch=prefetch)] == expected
    assert sorted(server.fetched) == expected


@pytest.mark.parametrize("prefetch", [False, True])
def test_starts_at_the_page_asked_for(prefetch: bool) -> None:
    server = Server(5)
    assert [p.number for p in paged(server.fetch, start=3, prefetch=prefetch)] == [3, 4]


@pytest.mark.parametrize("prefetch", [False, True])
def test_a_listing_that_shrinks_while_read_stops_at_its_new_end(prefetch: bool) -> None:
    """The stop rule reads each page's own totalPages: rows deleted mid-listing end it sooner."""
    server = Server([4, 2, 2, 2])
    assert [p.number for p in paged(server.fetch, prefetch=prefetch)] == [0, 1]


def test_prefetch_runs_at_most_one_page_ahead() -> None:
    server = Server(10)
    pages = paged(server.fetch, prefetch=True)
    for consumed, _page in enumerate(pages, start=1):
        assert len(server.fetched) <= consumed + 1
        if consumed == 4:
            break
    pages.close()  # a caller that stops early waits for the one page under way
    assert server.fetched == [0, 1, 2, 3, 4]


def test_a_failing_page_raises_where_it_is_read() -> None:
    def fetch(number: int) -> FakePage:
        if number == 2:
            raise RuntimeError("page 2 failed")
        return FakePage(number, 5)

    got = []
    with pytest.raises(RuntimeError, match="page 2 failed"):
        for page in paged(fetch, prefetch=True):
            got.append(page.number)
    assert got == [0, 1]


def test_page_params_keep_the_listing_and_add_page_and_size() -> None:
    base = {"filter": 'studyKey=="K"'}
    assert page_params(base, 3, 500) == {"filter": 'studyKey=="K"', "page": 3, "size": 500}
    assert base == {"filter": 'studyKey=="K"'}


def test_scoped_filter_puts_the_study_in_every_or_group() -> None:
    text = scoped_filter("records", 'K"1', [["formKey==AE"], ["formKey==VS"]])
    assert text == 'formKey==AE;studyKey=="K\\"1",formKey==VS;studyKey=="K\\"1"'
    assert study_scope("sites", "K") == [[]]
    assert scoped_filter("sites", "K", [[]]) is None
