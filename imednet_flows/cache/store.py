"""Writing the cache: upserts, deletes, watermarks and form versions in one transaction.

A study's run is staged first (see `staging`), then merged here in a single
`BEGIN IMMEDIATE ... COMMIT`: readers see the study before or after the run,
never half of it, and a crash leaves the previous state and watermark intact.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from imednet_flows.cache.schema import ENTITIES, RECORDS, EntitySpec


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def upsert_sql(spec: EntitySpec, table: str | None = None) -> str:
    names = spec.column_names
    updates = ", ".join(f"{n}=excluded.{n}" for n in names[2:])
    return (
        f"INSERT INTO {table or spec.name} ({', '.join(names)}) "
        f"VALUES ({', '.join('?' * len(names))}) "
        f"ON CONFLICT (study_key, {spec.id_column}) DO UPDATE SET {updates}"
    )


def upsert(
    conn: sqlite3.Connection, spec: EntitySpec, study_key: str, items: Iterable[dict[str, Any]]
) -> int:
    rows = [spec.to_row(study_key, item) for item in items]
    conn.executemany(upsert_sql(spec), rows)
    return len(rows)


def delete_ids(
    conn: sqlite3.Connection, spec: EntitySpec, study_key: str, ids: Iterable[int]
) -> int:
    ids = list(ids)
    conn.executemany(
        f"DELETE FROM {spec.name} WHERE study_key=? AND {spec.id_column}=?",
        [(study_key, i) for i in ids],
    )
    return len(ids)


def cached_ids(
    conn: sqlite3.Connection,
    spec: EntitySpec,
    study_key: str,
    lo: int | None = None,
    hi: int | None = None,
) -> list[int]:
    sql = f"SELECT {spec.id_column} FROM {spec.name} WHERE study_key=?"
    args: list[Any] = [study_key]
    if lo is not None:
        sql += f" AND {spec.id_column}>=?"
        args.append(lo)
    if hi is not None:
        sql += f" AND {spec.id_column}<=?"
        args.append(hi)
    return [r[0] for r in conn.execute(sql + f" ORDER BY {spec.id_column}", args)]


def count(conn: sqlite3.Connection, spec: EntitySpec, study_key: str) -> int:
    return conn.execute(
        f"SELECT COUNT(*) FROM {spec.name} WHERE study_key=?", (study_key,)
    ).fetchone()[0]


def get_watermark(conn: sqlite3.Connection, study_key: str, entity: str) -> str | None:
    row = conn.execute(
        "SELECT watermark FROM sync_state WHERE study_key=? AND entity=?", (study_key, entity)
    ).fetchone()
    return row[0] if row else None


def set_state(
    conn: sqlite3.Connection, study_key: str, entity: str, watermark: str | None, now: str
) -> None:
    spec = ENTITIES[entity]
    conn.execute(
        "INSERT INTO sync_state (study_key, entity, watermark, last_success, row_count) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (study_key, entity) DO UPDATE SET "
        "watermark=excluded.watermark, last_success=excluded.last_success, "
        "row_count=excluded.row_count",
        (study_key, entity, watermark, now, count(conn, spec, study_key)),
    )


def bump_form_versions(conn: sqlite3.Connection, study_key: str, form_keys: Iterable[str]) -> None:
    conn.executemany(
        "INSERT INTO form_versions (study_key, form_key, version) VALUES (?, ?, 1) "
        "ON CONFLICT (study_key, form_key) DO UPDATE SET version=version+1",
        [(study_key, k) for k in set(form_keys) if k is not None],
    )


def forms_of_records(conn: sqlite3.Connection, study_key: str, ids: Iterable[int]) -> set[str]:
    """Form keys of cached records, looked up before they are deleted or replaced."""
    out: set[str] = set()
    batch: list[int] = []
    for record_id in ids:
        batch.append(record_id)
        if len(batch) == 500:
            out |= _forms(conn, study_key, batch)
            batch = []
    if batch:
        out |= _forms(conn, study_key, batch)
    return out


def _forms(conn: sqlite3.Connection, study_key: str, ids: list[int]) -> set[str]:
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        f"SELECT DISTINCT form_key FROM {RECORDS.name} WHERE study_key=? "
        f"AND record_id IN ({marks})",
        (study_key, *ids),
    )
    return {r[0] for r in rows if r[0] is not None}


def existing_ids(
    conn: sqlite3.Connection, spec: EntitySpec, study_key: str, ids: Iterable[int]
) -> list[int]:
    """Which of `ids` the cache already holds, asked 500 at a time."""
    ids = list(ids)
    found: list[int] = []
    for start in range(0, len(ids), 500):
        batch = ids[start : start + 500]
        marks = ",".join("?" * len(batch))
        found += [
            r[0]
            for r in conn.execute(
                f"SELECT {spec.id_column} FROM {spec.name} WHERE study_key=? AND "
                f"{spec.id_column} IN ({marks})",
                (study_key, *batch),
            )
        ]
    return found


def bump_study_version(conn: sqlite3.Connection, study_key: str) -> None:
    conn.execute(
        "INSERT INTO study_versions (study_key, version) VALUES (?, 1) "
        "ON CONFLICT (study_key) DO UPDATE SET version=version+1",
        (study_key,),
    )


def study_version(conn: sqlite3.Connection, study_key: str) -> int:
    row = conn.execute(
        "SELECT version FROM study_versions WHERE study_key=?", (study_key,)
    ).fetchone()
    return int(row[0]) if row else 0
