"""Streamed listing: one page in memory at a time, at the API's largest page size.

SDK 0.5.0's `list()` pages at 100 and buffers the whole study; a sync of
200,000 records must not. Requests keep the SDK's shape (filter carries
`studyKey==K`, user terms first) so the server sees what it sees from the SDK.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from imednet_flows.edc.client import API_ROOT, MAX_PAGE_SIZE, ImednetClient, study_path
from imednet_flows.filter_syntax import Dnf, and_dnf, dnf, quote_value, render_dnf
from imednet_flows.read_ahead import read_ahead

#: Endpoints whose filter the SDK always scopes with studyKey (api-behaviour.md §7).
STUDY_KEY_SCOPED = {"subjects", "visits", "queries", "recordRevisions", "records"}


class Paged(Protocol):
    """What the stop rule needs of a page, checked (`server_checks.Listing`) or not."""

    @property
    def total_pages(self) -> int: ...


P = TypeVar("P", bound=Paged)


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    number: int
    total_pages: int
    total_elements: int


def page_params(params: dict[str, Any], number: int, size: int = MAX_PAGE_SIZE) -> dict[str, Any]:
    """One page's request: the listing's own parameters plus page and size."""
    return {**params, "page": number, "size": size}


def paged(fetch: Callable[[int], P], start: int = 0, prefetch: bool = False) -> Iterator[P]:
    """Every page from `start` until the server's totalPages says stop (the SDK's own rule).

    `fetch(n)` gets and checks page n. With `prefetch`, page n+1 downloads (and is checked)
    in a worker thread while the caller handles page n: two pages in memory at most, and
    a caller that stops early waits only for the one page already under way.
    """
    if not prefetch:
        number = start
        while True:
            page = fetch(number)
            yield page
            if number >= page.total_pages - 1:
                return
            number += 1
    with read_ahead(paged(fetch, start), "page-prefetch") as pages:
        yield from pages


def study_scope(route: str, study_key: str) -> Dnf:
    """The terms the SDK adds to this endpoint's filter (none for sites, forms, ...)."""
    return [[f"studyKey=={quote_value(study_key)}"]] if route in STUDY_KEY_SCOPED else [[]]


def scoped_filter(route: str, study_key: str, groups: Dnf) -> str | None:
    """Render a filter with `studyKey==K` in every OR-group, as the SDK would intend."""
    return render_dnf(and_dnf(groups, study_scope(route, study_key))) or None


def iter_pages(
    client: ImednetClient,
    study_key: str,
    route: str,
    filter_text: str | None = None,
    record_data_filter: str | None = None,
    page_size: int = MAX_PAGE_SIZE,
    *,
    groups: Dnf | None = None,
    start_page: int = 0,
) -> Iterator[Page]:
    """Yield pages until the server's totalPages says stop (the SDK's own stop rule).

    `groups` is an already-parsed filter; `filter_text` is parsed (and rejected early
    with a clear FilterError if malformed).
    """
    if groups is None:
        groups = dnf(filter_text)
    params: dict[str, Any] = {}
    text = scoped_filter(route, study_key, groups)
    if text:
        params["filter"] = text
    if record_data_filter:
        dnf(record_data_filter, "recordDataFilter")  # fail fast on a malformed filter
        params["recordDataFilter"] = record_data_filter
    yield from _pages(
        client,
        study_path(study_key, route),
        params,
        page_size,
        start_page,
        f"listing {route} of study {study_key}",
    )


def _pages(
    client: ImednetClient, path: str, params: dict[str, Any], page_size: int, page: int, what: str
) -> Iterator[Page]:
    """Unchecked pages: listings and extracts read what the server sends as it sends it."""

    def fetch(number: int) -> Page:
        payload = client.get(
            path, page_params(params, number, page_size), what=f"{what} (page {number})"
        )
        pagination = payload.get("pagination") or {}
        return Page(
            payload.get("data") or [],
            number,
            int(pagination.get("totalPages") or 0),
            int(pagination.get("totalElements") or 0),
        )

    return paged(fetch, page)


def iter_items(
    client: ImednetClient, study_key: str, route: str, **kwargs: Any
) -> Iterator[dict[str, Any]]:
    for page in iter_pages(client, study_key, route, **kwargs):
        yield from page.items


def list_studies(client: ImednetClient) -> list[dict[str, Any]]:
    """Every study the keys can see (GET /studies, all pages)."""
    return [
        item
        for page in _pages(client, API_ROOT, {}, MAX_PAGE_SIZE, 0, "listing studies")
        for item in page.items
    ]
