"""Applying one study's staged run to the cache in a single transaction.

Rows, soft and hard deletes, the new watermarks, the study's data version and the change
log commit together or not at all: readers see the study before or after the run, never
half of it, and a crash leaves the previous state and watermarks intact.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imednet_flows.cache import staging, store
from imednet_flows.cache.collections import Collection
from imednet_flows.cache.crash import crash_point
from imednet_flows.cache.db import connect, write_transaction
from imednet_flows.cache.results import CollectionResult, StudyResult
from imednet_flows.cache.staging import StagedRun
from imednet_flows.timestamps import format_timestamp

_MERGE_LOCK = threading.Lock()
#: A merge may wait this long for another process's merge (SQLite's own write lock).
MERGE_BUSY_TIMEOUT_MS = 600_000

#: (id, form key) of a changed row; None instead of the list: every row may have changed.
Changed = list[tuple[Any, str | None]] | None


def merge_into(cache_path: Path, run: StagedRun) -> StudyResult:
    """Merge under a process-wide lock (threads take turns without busy-waiting); merges
    from other processes, e.g. Dask workers, queue on SQLite's write lock instead."""
    with _MERGE_LOCK:
        conn = connect(cache_path)
        try:
            conn.execute(f"PRAGMA busy_timeout={MERGE_BUSY_TIMEOUT_MS}")
            return merge(conn, run)
        finally:
            conn.close()


def merge(conn: sqlite3.Connection, run: StagedRun) -> StudyResult:
    """Apply one study's staged run in a single transaction."""
    key = run.study_key
    now = format_timestamp(datetime.now(UTC))
    conn.execute("ATTACH DATABASE ? AS stage", (str(run.path),))
    try:
        staging.verify(conn, "stage", run.cache_path, key, run.token)
        with write_transaction(conn):
            logged: list[tuple[Collection, Changed]] = []
            for spec in run.collections:
                result = run.result.collection(spec.name)
                if result.skipped:
                    continue
                changed = _merge_collection(conn, spec, key, result, run.full_refresh)
                if changed is None or changed:
                    logged.append((spec, changed))
                store.set_state(conn, spec, key, result.watermark_after, now)
                crash_point(f"sync.merge-{spec.name}")
            _log_run(conn, run, logged, now)
            crash_point("sync.before-commit")
    finally:
        conn.execute("DETACH DATABASE stage")
    crash_point("sync.after-commit")
    return run.result


def _log_run(
    conn: sqlite3.Connection,
    run: StagedRun,
    logged: list[tuple[Collection, Changed]],
    started: str,
) -> None:
    """A new data version and change-log entries when anything changed; the run's row in
    `sync_runs` always."""
    key = run.study_key
    if logged:
        version = store.bump_study_version(conn, key)
        for spec, changed in logged:
            store.log_changes(conn, key, version, spec, changed)
        store.prune_change_log(conn, key, version)
    run.result.data_version = store.study_version(conn, key)
    conn.execute(
        "INSERT INTO sync_runs (study_key, started, finished, changed, summary)"
        " VALUES (?, ?, ?, ?, ?)",
        (
            key,
            started,
            format_timestamp(datetime.now(UTC)),
            int(run.result.changed),
            run.result.model_dump_json(),
        ),
    )


def _form(spec: Collection, alias: str) -> str:
    """The form key of a row, where the collection has one (records): typed per-form
    snapshot tables need it for rows that changed, and for rows that are gone."""
    return f"{alias}.form_key" if spec.name == "records" else "NULL"


def _merge_collection(
    conn: sqlite3.Connection,
    spec: Collection,
    key: str,
    result: CollectionResult,
    full_refresh: bool,
) -> Changed:
    """New and changed rows in, vanished rows out; returns what changed."""
    t, idc = spec.table, spec.id_column
    columns = ", ".join(spec.column_names)
    selected = ", ".join(f"s.{c}" for c in spec.column_names)
    if not store.has_rows(conn, spec, key):
        # Nothing cached yet: every staged row is new, no lookups needed. Arrival order is id
        # order (pages come sorted), so the cache's B-tree is appended to; a row staged twice
        # is replaced by its later copy.
        conn.execute(
            f"INSERT OR REPLACE INTO main.{t} ({columns}) SELECT {selected} FROM stage.{t} s "
            "WHERE s.study_key=? ORDER BY s.rowid",
            (key,),
        )
        result.inserted = store.count(conn, spec, key)
        result.unchanged = result.fetched + result.recovered - result.inserted
        return None if result.inserted else []
    new = (
        f"FROM stage.{t} s WHERE s.study_key=? AND NOT EXISTS (SELECT 1 FROM main.{t} m "
        f"WHERE m.study_key=s.study_key AND m.{idc}=s.{idc})"
    )
    diff = (
        f"FROM stage.{t} s JOIN main.{t} m ON m.study_key=s.study_key AND "
        f"m.{idc}=s.{idc} WHERE s.study_key=? AND m.raw<>s.raw"
    )
    inserted = conn.execute(f"SELECT s.{idc}, {_form(spec, 's')} {new}", (key,)).fetchall()
    updated = conn.execute(f"SELECT s.{idc}, {_form(spec, 's')} {diff}", (key,)).fetchall()
    result.inserted, result.updated = len(inserted), len(updated)
    result.unchanged = result.fetched + result.recovered - result.inserted - result.updated
    if "deleted" in spec.column_names:
        # transitions only: a row that arrives already deleted counts as new
        result.soft_deleted = conn.execute(
            f"SELECT COUNT(*) {diff} AND s.deleted=1 AND m.deleted=0", (key,)
        ).fetchone()[0]
    if updated:
        conn.execute(
            f"INSERT OR REPLACE INTO main.{t} ({columns}) SELECT {selected} {diff}", (key,)
        )
    if inserted:
        conn.execute(f"INSERT INTO main.{t} ({columns}) SELECT {selected} {new}", (key,))
    gone = _vanished(conn, spec, key, result, full_refresh)
    if gone:
        conn.executemany(
            f"DELETE FROM main.{t} WHERE study_key=? AND {idc}=?", [(key, i) for i, _ in gone]
        )
    result.hard_deleted = len(gone)
    return [*((i, f) for i, f in inserted), *((i, f) for i, f in updated), *gone]


def _vanished(
    conn: sqlite3.Connection,
    spec: Collection,
    key: str,
    result: CollectionResult,
    full_refresh: bool,
) -> list[tuple[Any, str | None]]:
    """(id, form key) of cached rows that are gone: those the reconcile found, or, for a
    collection listed whole, those the listing no longer has. An empty listing of a
    collection the cache holds is not taken as "all gone" (the API answering nothing is
    likelier than a study losing its forms) unless full_refresh says so."""
    t, idc = spec.table, spec.id_column
    if spec.mode == "reference":
        if not result.fetched and not full_refresh:
            return []
        return conn.execute(
            f"SELECT m.{idc}, {_form(spec, 'm')} FROM main.{t} m WHERE m.study_key=? AND "
            f"NOT EXISTS (SELECT 1 FROM stage.{t} s WHERE s.study_key=m.study_key AND "
            f"s.{idc}=m.{idc})",
            (key,),
        ).fetchall()
    if spec.mode == "changes":
        return conn.execute(
            f"SELECT m.{idc}, {_form(spec, 'm')} FROM main.{t} m JOIN stage.deletions d "
            f"ON d.entity=? AND d.id=m.{idc} WHERE m.study_key=?",
            (spec.name, key),
        ).fetchall()
    return []
