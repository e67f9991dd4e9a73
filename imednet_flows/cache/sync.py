"""One study's sync: download what changed into a staging file, find hard deletes.

Fetching happens outside any transaction on the cache, into a staging file of the run's
own (`staging`), so several studies download at once and a slow API never holds the cache's
write lock; `merge` then applies the staged run in one short transaction.

Watermark rule: the next run asks for `<since_field> >= W - overlap`, where W is the
server's own clock (`metadata.timestamp`) at the start of this run's listing. Anything
changed after that instant, even while we paged, has a stamp >= W and is fetched next time;
timestamps are compared as canonical UTC strings, never as whatever form the API sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from imednet.errors import ForbiddenError

from imednet_flows.cache import staging, store
from imednet_flows.cache.collections import COLLECTIONS, Collection
from imednet_flows.cache.crash import crash_point
from imednet_flows.cache.db import connect
from imednet_flows.cache.reconcile import find_differences
from imednet_flows.cache.results import CollectionResult, StudyResult
from imednet_flows.cache.rows import row_builder
from imednet_flows.edc.client import MAX_PAGE_SIZE, ImednetClient, study_path
from imednet_flows.edc.errors import ImednetFlowsError
from imednet_flows.edc.paging import page_params, paged, scoped_filter
from imednet_flows.edc.server_checks import (
    MAX_CLOCK_AHEAD,
    Asked,
    Listing,
    check_complete,
    check_id_range,
    check_keyset,
    check_listing,
    check_since,
)
from imednet_flows.filter_syntax import parse_timestamp, quote_value
from imednet_flows.timestamps import format_timestamp

#: Refuse to delete more than this share of a study's cached rows without full_refresh.
SUSPICIOUS_DELETE_SHARE = 0.5
SUSPICIOUS_DELETE_MIN = 50
#: Clocks a second apart are the API's resolution, not a skew.
MIN_CLOCK_AHEAD = 2.0

Progress = Callable[[str, int, int], None]


class SuspiciousResponse(ImednetFlowsError):
    """The server's answer would wipe much of the cache; it is not applied."""


def _minus(stamp: str, seconds: float) -> str:
    return format_timestamp(parse_timestamp(stamp) - timedelta(seconds=seconds))


def _id_range(spec: Collection, lo: int | None, hi: int | None) -> list[str]:
    """An id range's filter terms (both ends inclusive)."""
    return [f"{spec.id_field}>={quote_value(lo)}", f"{spec.id_field}<={quote_value(hi)}"]


def refused(exc: BaseException) -> bool:
    """The API refused this request for this key (HTTP 403)."""
    return isinstance(exc, ForbiddenError) or isinstance(exc.__cause__, ForbiddenError)


class StudySync:
    """Stages one study's changes; `merge` then applies them in one transaction."""

    def __init__(
        self,
        client: ImednetClient,
        cache_path: Path,
        study_key: str,
        full_refresh: bool = False,
        overlap_seconds: float = 30.0,
        progress: Progress | None = None,
        collections: Iterable[Collection] = COLLECTIONS,
    ) -> None:
        self.client = client
        self.cache_path = cache_path
        self.study_key = study_key
        self.full_refresh = full_refresh
        self.overlap = overlap_seconds
        self.progress = progress
        self.collections = tuple(collections)
        self.result = StudyResult(study_key=study_key, full_refresh=full_refresh)
        # A file of this run's own: another cache in the same folder, or another run of this
        # one, can neither replace it nor have it merged in its place.
        self.token = staging.new_token()
        self.stage_path = staging.staging_file(cache_path, study_key, self.token)
        self.stage = staging.create(self.stage_path, cache_path, study_key, self.token)
        # One transaction for the whole fetch: a commit per page costs more than the page.
        self.stage.execute("BEGIN")
        # A first run has no cache yet: nothing is created until the merge.
        self.main = connect(cache_path, readonly=True) if cache_path.exists() else None

    def staged(self) -> staging.StagedRun:
        """What the merge needs of this run (after `run_fetch`)."""
        return staging.StagedRun(
            self.stage_path,
            self.cache_path,
            self.study_key,
            self.token,
            self.collections,
            self.result,
            self.full_refresh,
        )

    # -- the run ------------------------------------------------------------------------
    def run_fetch(self) -> None:
        """Every collection in turn. The first one is the study's own access check: a
        refusal there fails the study; a refusal of a later one skips that collection."""
        started = time.perf_counter()
        for number, spec in enumerate(self.collections):
            result = self.result.collection(spec.name)
            try:
                self.fetch(spec, result)
            except ImednetFlowsError as exc:
                if number == 0 or not refused(exc):
                    raise
                self._forget(spec)
                result.skipped = (
                    "the API refused this collection for this key (HTTP 403); the other "
                    "collections were synced and its cached rows kept as they were"
                )
            crash_point(f"sync.after-fetch-{spec.name}")
        for spec in self.collections:
            if self.main is not None and store.has_rows(self.main, spec, self.study_key):
                staging.deduplicate(self.stage, spec)
        self.stage.execute("COMMIT")  # the merge reads this file from another connection
        self.result.requests = sum(c.requests for c in self.result.collections.values())
        self.result.seconds = time.perf_counter() - started

    def fetch(self, spec: Collection, result: CollectionResult) -> None:
        before = None
        if spec.incremental and not self.full_refresh and self.main is not None:
            before = store.get_watermark(self.main, self.study_key, spec.name)
        result.watermark_before = before
        since = _minus(before, self.overlap) if before else None
        server_now = self._page_into_stage(spec, since, result)
        if spec.reconciled:
            self.reconcile(spec, result)
        if spec.incremental:
            result.watermark_after = server_now or before

    def _forget(self, spec: Collection) -> None:
        """Drop what a skipped collection staged, so the merge leaves it as cached."""
        self.stage.execute(f"DELETE FROM {spec.table}")
        self.stage.execute("DELETE FROM deletions WHERE entity=?", (spec.name,))

    # -- fetching -----------------------------------------------------------------------
    def _get(self, spec: Collection, params: dict[str, Any], what: str) -> Listing:
        """One page, checked against what the sync assumes of every response (page size,
        totals, the server's clock) before any of it reaches the staging file."""
        path = study_path(self.study_key, spec.route)
        payload = self.client.get(path, params, what=what)
        # A server clock ahead of ours by more than the overlap would push the watermark past
        # changes the next run's re-read no longer covers.
        ahead = max(MIN_CLOCK_AHEAD, min(MAX_CLOCK_AHEAD, self.overlap))
        return check_listing(
            payload,
            Asked.of(path, params),
            spec.id_field,
            max_ahead=ahead,
            stamp_field=spec.since_field or "dateModified",
        )

    def _filter(self, spec: Collection, groups: list[list[str]]) -> dict[str, Any]:
        if not spec.filterable:
            return {}
        text = scoped_filter(spec.route, self.study_key, groups)
        return {"filter": text} if text else {}

    def _stage(self, spec: Collection, items: list[dict[str, Any]]) -> None:
        self.stage.executemany(store.insert_sql(spec), row_builder(spec)(self.study_key, items))

    def _page_into_stage(
        self, spec: Collection, since: str | None, result: CollectionResult
    ) -> str | None:
        """Page at the API's largest size straight into the staging file; return the
        server's clock at the first page. Pages shrinking under us (a hard delete while
        we page would shift a row past us) trigger a keyset pass that cannot skip."""
        groups = [[f"{spec.since_field}>={quote_value(since)}"]] if since else [[]]
        params = {**spec.params, **self._filter(spec, groups)}
        server_now, totals = None, []

        def fetch(number: int) -> Listing:
            what = f"syncing {spec.name} of study {self.study_key} (page {number})"
            return self._get(spec, page_params(params, number), what)

        # The next page downloads while this one is written: two pages in memory at most.
        for number, listing in enumerate(paged(fetch, prefetch=True)):
            result.requests += 1
            if number == 0:
                server_now = listing.server_now
            self._take(spec, listing, since)
            result.fetched += len(listing.items)
            totals.append(listing.total_elements)
            if self.progress:
                self.progress(spec.name, number + 1, listing.total_pages)
            if number == 1:
                crash_point("sync.mid-page")
        if spec.incremental and min(totals[1:], default=totals[0]) < max(totals):
            self._keyset_pass(spec, groups, since, result)
        return server_now

    def _take(self, spec: Collection, listing: Listing, since: str | None) -> None:
        """Stage a checked page (a delta's rows must all be at or after `since`)."""
        if since and spec.since_field:
            check_since(listing.items, since, listing.asked, spec.id_field, spec.since_field)
        self._stage(spec, listing.items)

    def _keyset_pass(
        self,
        spec: Collection,
        groups: list[list[str]],
        since: str | None,
        result: CollectionResult,
    ) -> None:
        last: Any = -1
        while True:
            keyed = [[*g, f"{spec.id_field}>{quote_value(last)}"] for g in groups]
            params = {**spec.params, **self._filter(spec, keyed), **spec.id_sort()}
            what = f"re-reading {spec.name} of study {self.study_key}"
            listing = self._get(spec, page_params(params, 0), what)
            result.requests += 1
            check_keyset(listing.items, spec.id_field, last, listing.asked)
            self._take(spec, listing, since)
            if len(listing.items) < MAX_PAGE_SIZE:
                return
            last = listing.items[-1][spec.id_field]

    # -- hard deletes -------------------------------------------------------------------
    def _server_count(self, spec: Collection, lo: int | None = None, hi: int | None = None) -> int:
        groups = [[]] if lo is None else [_id_range(spec, lo, hi)]
        params = page_params(self._filter(spec, groups), 0, 1)
        listing = self._get(spec, params, f"counting {spec.name} of {self.study_key}")
        if lo is not None:
            check_id_range(listing.items, spec.id_field, lo, hi, listing.asked)
        return listing.total_elements

    def _server_rows(self, spec: Collection, lo: int, hi: int) -> list[dict[str, Any]]:
        listing = self._get(
            spec,
            page_params(self._filter(spec, [_id_range(spec, lo, hi)]), 0),
            f"checking {spec.name} of {self.study_key} for deletions",
        )
        check_id_range(listing.items, spec.id_field, lo, hi, listing.asked)
        check_complete(listing)
        return listing.items

    def _expected_count(self, spec: Collection) -> int:
        """Rows the cache will hold after the merge, without loading every id: cached rows
        plus staged ids the cache does not have yet (few, in a delta)."""
        cached = 0 if self.main is None else store.count(self.main, spec, self.study_key)
        if cached == 0:  # a first sync: counted in SQLite, no list of every id in memory
            return store.distinct_count(self.stage, spec, self.study_key)
        staged = store.cached_ids(self.stage, spec, self.study_key)
        if not staged:
            return cached
        assert self.main is not None
        return (
            cached + len(staged) - len(store.existing_ids(self.main, spec, self.study_key, staged))
        )

    def _expected_ids(self, spec: Collection) -> list[Any]:
        """Ids the cache will hold after the merge: cached ids plus newly staged ones."""
        cached = self._cached_ids(spec)
        staged = store.cached_ids(self.stage, spec, self.study_key)
        return sorted(set(cached) | set(staged))

    def _cached_ids(self, spec: Collection) -> list[Any]:
        return [] if self.main is None else store.cached_ids(self.main, spec, self.study_key)

    def reconcile(self, spec: Collection, result: CollectionResult) -> None:
        if self.full_refresh:
            staged = set(store.cached_ids(self.stage, spec, self.study_key))
            gone = [i for i in self._cached_ids(spec) if i not in staged]
            self._stage_deletions(spec, gone)
            return
        total = self._server_count(spec)
        result.requests += 1
        if total == self._expected_count(spec):
            return
        expected = self._expected_ids(spec)
        diff = find_differences(
            expected,
            total,
            lambda lo, hi: self._server_count(spec, lo, hi),
            lambda lo, hi: self._server_rows(spec, lo, hi),
            spec.id_field,
        )
        result.requests += diff.requests
        crash_point("sync.mid-reconcile")
        cached = len(expected)
        if diff.vanished and (
            total == 0
            or (len(diff.vanished) > max(SUSPICIOUS_DELETE_MIN, SUSPICIOUS_DELETE_SHARE * cached))
        ):
            raise SuspiciousResponse(
                f"the API reports {total} {spec.name} for study {self.study_key} where "
                f"{cached} are cached ({len(diff.vanished)} would be deleted). Nothing was "
                "deleted. If the study really shrank, run the sync with full_refresh=True."
            )
        if diff.missing:
            self._stage(spec, diff.missing)
            result.recovered = len(diff.missing)
        self._stage_deletions(spec, diff.vanished)

    def _stage_deletions(self, spec: Collection, ids: list[Any]) -> None:
        self.stage.executemany("INSERT INTO deletions VALUES (?, ?)", [(spec.name, i) for i in ids])

    def close(self) -> None:
        self.stage.close()
        if self.main is not None:
            self.main.close()
        staging.remove(self.stage_path)
