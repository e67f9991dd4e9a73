"""Caches filled the way a merge fills them, without a server: rows built by the sync's own
row builders, and every change logged with its form key under a new data version."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from imednet_flows.cache import store
from imednet_flows.cache.collections import BY_NAME, COLLECTIONS, Collection
from imednet_flows.cache.db import write_transaction
from imednet_flows.cache.rows import row_builder
from imednet_flows.emulator.seed import StudyData


def upsert_sql(spec: Collection) -> str:
    """Rows written straight into a cache, as a sync's merge would leave them (the sync
    itself stages and merges; only tests and benchmarks fill a cache by hand)."""
    names = spec.column_names
    updates = ", ".join(f"{n}=excluded.{n}" for n in names[2:])
    return (
        f"{store.insert_sql(spec)} "
        f"ON CONFLICT (study_key, {spec.id_column}) DO UPDATE SET {updates}"
    )


#: StudyData attribute per collection name.
ATTRIBUTE = {spec.name: spec.table for spec in COLLECTIONS}


def items_of(data: StudyData, collection: str) -> list[dict[str, Any]]:
    return getattr(data, ATTRIBUTE[collection])


def load_study(conn: sqlite3.Connection, data: StudyData, study_key: str) -> int:
    """A first sync: every collection stored, logged as "everything"; the new version."""
    with write_transaction(conn):
        for spec in COLLECTIONS:
            rows = row_builder(spec)(study_key, items_of(data, spec.name))
            conn.executemany(upsert_sql(spec), rows)
        version = store.bump_study_version(conn, study_key)
        for spec in COLLECTIONS:
            store.log_changes(conn, study_key, version, spec, None)
    return version


def _form_of(spec: Collection, item: dict[str, Any]) -> str | None:
    return item.get("formKey") if spec.name == "records" else None


def change(
    conn: sqlite3.Connection,
    study_key: str,
    collection: str,
    upserts: Iterable[dict[str, Any]] = (),
    deletes: Iterable[Any] = (),
) -> int:
    """One merge of one collection: rows inserted or replaced, ids hard-deleted, all logged
    (deleted records with the form key they had); the new data version."""
    spec = BY_NAME[collection]
    upserts, deletes = list(upserts), list(deletes)
    with write_transaction(conn):
        logged: list[tuple[Any, str | None]] = []
        for row_id in deletes:
            found = conn.execute(
                f"SELECT {'form_key' if collection == 'records' else 'NULL'} FROM {spec.table} "
                f"WHERE study_key=? AND {spec.id_column}=?",
                (study_key, row_id),
            ).fetchone()
            conn.execute(
                f"DELETE FROM {spec.table} WHERE study_key=? AND {spec.id_column}=?",
                (study_key, row_id),
            )
            logged.append((row_id, found[0] if found else None))
        conn.executemany(upsert_sql(spec), row_builder(spec)(study_key, upserts))
        logged += [(item[spec.id_field], _form_of(spec, item)) for item in upserts]
        version = store.bump_study_version(conn, study_key)
        store.log_changes(conn, study_key, version, spec, logged)
    return version
