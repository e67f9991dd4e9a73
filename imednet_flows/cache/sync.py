"""One study's incremental sync: stage what changed, reconcile deletes, merge atomically.

Fetching happens outside any transaction on the cache, into a staging file of
the study's own, so several studies can download at once and a slow API never
holds the cache's write lock. The merge is then one short transaction that
moves rows, deletions, the new watermarks and form versions in together.

Watermark rule: the next run asks for `dateModified >= W - overlap`, where W
is the server's own clock (`metadata.timestamp`) at the start of this run's
listing. Anything changed after that instant, even while we paged, has
dateModified >= W and is fetched next time; timestamps are compared as
canonical UTC strings, never as whatever format the API sent.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from imednet_flows.cache import staging, store
from imednet_flows.cache.crash import crash_point
from imednet_flows.cache.reconcile import find_differences
from imednet_flows.cache.schema import (
    INCREMENTAL,
    STRUCTURE,
    EntitySpec,
    connect,
)
from imednet_flows.edc.client import MAX_PAGE_SIZE, ImednetClient, study_path
from imednet_flows.edc.paging import scoped_filter
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
from imednet_flows.filter_syntax import format_timestamp, parse_timestamp

#: Refuse to delete more than this share of a study's cached rows without full_refresh.
SUSPICIOUS_DELETE_SHARE = 0.5
SUSPICIOUS_DELETE_MIN = 50
#: Clocks a second apart are the API's resolution, not a skew.
MIN_CLOCK_AHEAD = 2.0


class SuspiciousResponse(RuntimeError):
    """The server's answer would wipe much of the cache; it is not applied."""


@dataclass
class EntityResult:
    entity: str
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    soft_deleted: int = 0
    hard_deleted: int = 0
    recovered: int = 0
    requests: int = 0
    watermark_before: str | None = None
    watermark_after: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.inserted or self.updated or self.hard_deleted)


@dataclass
class StudyResult:
    study_key: str
    entities: dict[str, EntityResult] = field(default_factory=dict)
    requests: int = 0
    seconds: float = 0.0
    full_refresh: bool = False

    @property
    def changed(self) -> bool:
        return any(e.changed for e in self.entities.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "study_key": self.study_key,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "full_refresh": self.full_refresh,
            "changed": self.changed,
            "entities": {k: asdict(v) for k, v in self.entities.items()},
        }


def _minus(stamp: str, seconds: float) -> str:
    return format_timestamp(parse_timestamp(stamp) - timedelta(seconds=seconds))


class StudySync:
    """Stages one study's changes; `merge` then applies them in one transaction."""

    def __init__(
        self,
        client: ImednetClient,
        cache_path: Path,
        study_key: str,
        full_refresh: bool = False,
        overlap_seconds: float = 30.0,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.client = client
        self.cache_path = cache_path
        self.study_key = study_key
        self.full_refresh = full_refresh
        self.overlap = overlap_seconds
        self.progress = progress
        self.result = StudyResult(study_key, full_refresh=full_refresh)
        # A file of this run's own: another cache in the same folder, or another run of this
        # one, can neither replace it nor have it merged in its place.
        self.token = staging.new_token()
        self.stage_path = staging.staging_file(cache_path, study_key, self.token)
        self.stage = staging.create(self.stage_path, cache_path, study_key, self.token)
        # One transaction for the whole fetch: a commit per page costs more than the page.
        self.stage.execute("BEGIN")
        # A first run has no cache yet: nothing is created until the merge.
        self.main = connect(cache_path, readonly=True) if cache_path.exists() else None

    # -- fetching ---------------------------------------------------------------------
    def _get(self, spec: EntitySpec, params: dict[str, Any], what: str) -> Listing:
        """One page, checked against what the sync assumes of every response (page size,
        totals, the server's clock) before any of it reaches the staging file."""
        path = study_path(self.study_key, spec.route)
        payload = self.client.get(path, params, what=what)
        # A server clock ahead of ours by more than the overlap would push the watermark past
        # changes the next run's re-read no longer covers.
        ahead = max(MIN_CLOCK_AHEAD, min(MAX_CLOCK_AHEAD, self.overlap))
        return check_listing(payload, Asked.of(path, params), spec.id_field, max_ahead=ahead)

    def fetch_structure(self) -> None:
        for spec in STRUCTURE:
            result = self.result.entities.setdefault(spec.name, EntityResult(spec.name))
            self._page_into_stage(spec, None, result)

    def fetch_entity(self, spec: EntitySpec) -> None:
        result = self.result.entities.setdefault(spec.name, EntityResult(spec.name))
        before = None
        if not self.full_refresh and self.main is not None:
            before = store.get_watermark(self.main, self.study_key, spec.name)
        result.watermark_before = before
        since = _minus(before, self.overlap) if before else None
        server_now = self._page_into_stage(spec, since, result)
        crash_point(f"sync.after-fetch-{spec.name}")
        self.reconcile(spec, result)
        result.watermark_after = server_now or before

    def _page_into_stage(
        self, spec: EntitySpec, since: str | None, result: EntityResult
    ) -> str | None:
        """Page at the API's largest size straight into the staging file; return the
        server's clock at the first page. Pages shrinking under us (a hard delete while
        we page would shift a row past us) trigger a keyset pass that cannot skip."""
        groups = [[f'dateModified>="{since}"']] if since else [[]]
        filter_text = scoped_filter(spec.route, self.study_key, groups)
        params: dict[str, Any] = {"filter": filter_text} if filter_text else {}
        page, server_now, totals = 0, None, []
        sql = store.upsert_sql(spec)

        def fetch(number: int) -> Listing:
            return self._get(
                spec,
                {**params, "page": number, "size": MAX_PAGE_SIZE},
                f"syncing {spec.name} of study {self.study_key} (page {number})",
            )

        # The next page downloads while this one is written: two pages in memory at most.
        with ThreadPoolExecutor(1, thread_name_prefix=f"fetch-{spec.name}") as pool:
            pending = pool.submit(fetch, 0)
            while True:
                listing = pending.result()
                result.requests += 1
                total_pages = listing.total_pages
                if page < total_pages - 1:
                    pending = pool.submit(fetch, page + 1)
                if page == 0:
                    server_now = listing.server_now
                items = listing.items
                if since:
                    check_since(items, since, listing.asked, spec.id_field)
                self.stage.executemany(sql, [spec.to_row(self.study_key, i) for i in items])
                result.fetched += len(items)
                totals.append(listing.total_elements)
                if self.progress:
                    self.progress(spec.name, page + 1, total_pages)
                if page == 1:
                    crash_point("sync.mid-page")
                if page >= total_pages - 1:
                    break
                page += 1
        if spec.incremental and min(totals[1:], default=totals[0]) < max(totals):
            self._keyset_pass(spec, groups, since, result)
        return server_now

    def _keyset_pass(
        self, spec: EntitySpec, groups: list[list[str]], since: str | None, result: EntityResult
    ) -> None:
        last = -1
        sql = store.upsert_sql(spec)
        while True:
            keyed = [[*g, f"{spec.id_field}>{last}"] for g in groups]
            text = scoped_filter(spec.route, self.study_key, keyed)
            listing = self._get(
                spec,
                {"filter": text, "page": 0, "size": MAX_PAGE_SIZE},
                f"re-reading {spec.name} of study {self.study_key}",
            )
            result.requests += 1
            items = listing.items
            check_keyset(items, spec.id_field, last, listing.asked)
            if since:
                check_since(items, since, listing.asked, spec.id_field)
            self.stage.executemany(sql, [spec.to_row(self.study_key, i) for i in items])
            if len(items) < MAX_PAGE_SIZE:
                return
            last = items[-1][spec.id_field]

    # -- hard deletes -----------------------------------------------------------------------
    def _server_count(self, spec: EntitySpec, lo: int | None = None, hi: int | None = None) -> int:
        groups = [[]] if lo is None else [[f"{spec.id_field}>={lo}", f"{spec.id_field}<={hi}"]]
        text = scoped_filter(spec.route, self.study_key, groups)
        params = {"page": 0, "size": 1, **({"filter": text} if text else {})}
        listing = self._get(spec, params, f"counting {spec.name} of {self.study_key}")
        if lo is not None:
            check_id_range(listing.items, spec.id_field, lo, hi, listing.asked)
        return listing.total_elements

    def _server_rows(self, spec: EntitySpec, lo: int, hi: int) -> list[dict[str, Any]]:
        text = scoped_filter(
            spec.route, self.study_key, [[f"{spec.id_field}>={lo}", f"{spec.id_field}<={hi}"]]
        )
        listing = self._get(
            spec,
            {"filter": text, "page": 0, "size": MAX_PAGE_SIZE},
            f"checking {spec.name} of {self.study_key} for deletions",
        )
        check_id_range(listing.items, spec.id_field, lo, hi, listing.asked)
        check_complete(listing)
        return listing.items

    def _expected_count(self, spec: EntitySpec) -> int:
        """Rows the cache will hold after the merge, without loading every id: cached rows
        plus staged ids the cache does not have yet (few, in a delta)."""
        cached = 0 if self.main is None else store.count(self.main, spec, self.study_key)
        staged = store.cached_ids(self.stage, spec, self.study_key)
        if self.main is None or not staged:
            return cached + len(staged)
        return (
            cached + len(staged) - len(store.existing_ids(self.main, spec, self.study_key, staged))
        )

    def _expected_ids(self, spec: EntitySpec) -> list[int]:
        """Ids the cache will hold after the merge: cached ids plus newly staged ones."""
        cached = self._cached_ids(spec)
        staged = store.cached_ids(self.stage, spec, self.study_key)
        return sorted(set(cached) | set(staged))

    def _cached_ids(self, spec: EntitySpec) -> list[int]:
        return [] if self.main is None else store.cached_ids(self.main, spec, self.study_key)

    def reconcile(self, spec: EntitySpec, result: EntityResult) -> None:
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
            self.stage.executemany(
                store.upsert_sql(spec), [spec.to_row(self.study_key, r) for r in diff.missing]
            )
            result.recovered = len(diff.missing)
        self._stage_deletions(spec, diff.vanished)

    def _stage_deletions(self, spec: EntitySpec, ids: list[int]) -> None:
        self.stage.executemany("INSERT INTO deletions VALUES (?, ?)", [(spec.name, i) for i in ids])

    def run_fetch(self) -> None:
        started = time.perf_counter()
        self.fetch_structure()
        crash_point("sync.after-structure")
        for spec in INCREMENTAL:
            self.fetch_entity(spec)
        self.stage.execute("COMMIT")  # the merge reads this file from another connection
        self.result.requests = sum(e.requests for e in self.result.entities.values())
        self.result.seconds = time.perf_counter() - started

    def close(self) -> None:
        self.stage.close()
        if self.main is not None:
            self.main.close()
        staging.remove(self.stage_path)


_MERGE_LOCK = threading.Lock()
#: A merge may wait this long for another process's merge (SQLite's own write lock).
MERGE_BUSY_TIMEOUT_MS = 600_000


def merge_into(cache_path: Path, sync: StudySync) -> StudyResult:
    """Merge under a process-wide lock (threads take turns without busy-waiting); merges
    from other processes, e.g. Dask workers, queue on SQLite's write lock instead."""
    with _MERGE_LOCK:
        conn = connect(cache_path)
        try:
            conn.execute(f"PRAGMA busy_timeout={MERGE_BUSY_TIMEOUT_MS}")
            return merge(conn, sync)
        finally:
            conn.close()


def merge(conn: sqlite3.Connection, sync: StudySync) -> StudyResult:
    """Apply one study's staged run in a single transaction (rows, deletes, watermarks)."""
    key = sync.study_key
    now = format_timestamp(datetime.now(UTC))
    conn.execute("ATTACH DATABASE ? AS stage", (str(sync.stage_path),))
    try:
        staging.verify(conn, "stage", sync.cache_path, key, sync.token)
        with store.write_transaction(conn):
            changed_forms: set[str] = set()
            for spec in (*STRUCTURE, *INCREMENTAL):
                result = sync.result.entities[spec.name]
                _merge_entity(conn, spec, key, result, changed_forms)
                if spec.incremental:
                    store.set_state(conn, key, spec.name, result.watermark_after, now)
                crash_point(f"sync.merge-{spec.name}")
            for spec in STRUCTURE:  # listed whole each run: what is not listed is gone
                if sync.result.entities[spec.name].fetched:
                    conn.execute(
                        f"DELETE FROM {spec.name} WHERE study_key=? AND "
                        f"{spec.id_column} NOT IN (SELECT {spec.id_column} FROM "
                        f"stage.{spec.name} WHERE study_key=?)",
                        (key, key),
                    )
            store.bump_form_versions(conn, key, changed_forms)
            if sync.result.changed:
                store.bump_study_version(conn, key)
            conn.execute(
                "INSERT INTO sync_runs (study_key, started, finished, changed, summary)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    key,
                    now,
                    format_timestamp(datetime.now(UTC)),
                    int(sync.result.changed),
                    json.dumps(sync.result.as_dict()),
                ),
            )
            crash_point("sync.before-commit")
    finally:
        conn.execute("DETACH DATABASE stage")
    crash_point("sync.after-commit")
    return sync.result


def _merge_entity(
    conn: sqlite3.Connection,
    spec: EntitySpec,
    key: str,
    result: EntityResult,
    changed_forms: set[str],
) -> None:
    """New and changed rows in, vanished rows out. Each set is scanned once to count it
    (grouped by form, which records need for snapshot reuse) and once to write it."""
    t, idc = spec.name, spec.id_column
    new = (
        f"FROM stage.{t} s WHERE s.study_key=? AND NOT EXISTS (SELECT 1 FROM main.{t} m "
        f"WHERE m.study_key=s.study_key AND m.{idc}=s.{idc})"
    )
    diff = (
        f"FROM stage.{t} s JOIN main.{t} m ON m.study_key=s.study_key AND "
        f"m.{idc}=s.{idc} WHERE s.study_key=? AND m.raw<>s.raw"
    )
    group = "s.form_key" if t == "records" else "NULL"
    first = conn.execute(f"SELECT 1 FROM main.{t} WHERE study_key=? LIMIT 1", (key,)).fetchone()
    if first is None:  # nothing cached yet: every staged row is new, no lookups needed
        new, diff = f"FROM stage.{t} s WHERE s.study_key=?", None
    for sql, counter in ((new, "inserted"), (diff, "updated")):
        if sql is None:
            continue
        rows = conn.execute(f"SELECT {group}, COUNT(*) {sql} GROUP BY 1", (key,)).fetchall()
        setattr(result, counter, sum(r[1] for r in rows))
        changed_forms |= {r[0] for r in rows if r[0]}
    result.unchanged = result.fetched + result.recovered - result.inserted - result.updated
    if diff is not None and "deleted" in [c.name for c in spec.columns]:
        # transitions only: a row that arrives already deleted counts as new
        result.soft_deleted = conn.execute(
            f"SELECT COUNT(*) {diff} AND s.deleted=1 AND m.deleted=0", (key,)
        ).fetchone()[0]
    columns = ", ".join(spec.column_names)
    selected = ", ".join(f"s.{c}" for c in spec.column_names)
    if result.updated:
        conn.execute(
            f"INSERT OR REPLACE INTO main.{t} ({columns}) SELECT {selected} {diff}", (key,)
        )
    if result.inserted:
        conn.execute(f"INSERT INTO main.{t} ({columns}) SELECT {selected} {new}", (key,))
    gone = [r[0] for r in conn.execute("SELECT id FROM stage.deletions WHERE entity=?", (t,))]
    if t == "records":
        changed_forms |= store.forms_of_records(conn, key, gone)
    result.hard_deleted = store.delete_ids(conn, spec, key, gone)
