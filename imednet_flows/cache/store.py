"""SQL over the cache's tables: ids, counts, watermarks, data versions and the change log.

Plain functions on a connection; the caller owns the transaction. Every query names its
table from a `Collection`, never from user input.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from imednet_flows.cache.collections import Collection

#: A data version logs row ids up to this many per collection; beyond it, "everything".
LOG_ROWS_MAX = 50_000
#: Data versions the change log keeps describing, per study.
LOG_VERSIONS_KEPT = 200


def insert_sql(spec: Collection, schema: str = "main") -> str:
    names = spec.column_names
    return (
        f"INSERT INTO {schema}.{spec.table} ({', '.join(names)}) "
        f"VALUES ({', '.join('?' * len(names))})"
    )


def cached_ids(
    conn: sqlite3.Connection, spec: Collection, study_key: str, schema: str = "main"
) -> list[Any]:
    """Distinct ids in order (a staging table may hold a row twice)."""
    return [
        r[0]
        for r in conn.execute(
            f"SELECT DISTINCT {spec.id_column} FROM {schema}.{spec.table} WHERE study_key=? "
            f"ORDER BY {spec.id_column}",
            (study_key,),
        )
    ]


def count(conn: sqlite3.Connection, spec: Collection, study_key: str) -> int:
    return conn.execute(
        f"SELECT COUNT(*) FROM {spec.table} WHERE study_key=?", (study_key,)
    ).fetchone()[0]


def distinct_count(
    conn: sqlite3.Connection, spec: Collection, study_key: str, schema: str = "main"
) -> int:
    """Distinct ids, counted where they are (a staging table may hold a row twice)."""
    return conn.execute(
        f"SELECT COUNT(DISTINCT {spec.id_column}) FROM {schema}.{spec.table} WHERE study_key=?",
        (study_key,),
    ).fetchone()[0]


def existing_ids(
    conn: sqlite3.Connection, spec: Collection, study_key: str, ids: Iterable[Any]
) -> list[Any]:
    """Which of `ids` the cache already holds, asked 500 at a time."""
    ids = list(ids)
    found: list[Any] = []
    for start in range(0, len(ids), 500):
        batch = ids[start : start + 500]
        marks = ",".join("?" * len(batch))
        found += [
            r[0]
            for r in conn.execute(
                f"SELECT {spec.id_column} FROM {spec.table} WHERE study_key=? AND "
                f"{spec.id_column} IN ({marks})",
                (study_key, *batch),
            )
        ]
    return found


def has_rows(
    conn: sqlite3.Connection, spec: Collection, study_key: str, schema: str = "main"
) -> bool:
    row = conn.execute(
        f"SELECT 1 FROM {schema}.{spec.table} WHERE study_key=? LIMIT 1", (study_key,)
    ).fetchone()
    return row is not None


# --------------------------------------------------------------------------- watermarks


def get_watermark(conn: sqlite3.Connection, study_key: str, collection: str) -> str | None:
    row = conn.execute(
        "SELECT watermark FROM sync_state WHERE study_key=? AND entity=?", (study_key, collection)
    ).fetchone()
    return row[0] if row else None


def set_state(
    conn: sqlite3.Connection,
    spec: Collection,
    study_key: str,
    watermark: str | None,
    now: str,
) -> None:
    conn.execute(
        "INSERT INTO sync_state (study_key, entity, watermark, last_success, row_count) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (study_key, entity) DO UPDATE SET "
        "watermark=excluded.watermark, last_success=excluded.last_success, "
        "row_count=excluded.row_count",
        (study_key, spec.name, watermark, now, count(conn, spec, study_key)),
    )


# --------------------------------------------------------------------------- data versions


def bump_study_version(conn: sqlite3.Connection, study_key: str) -> int:
    conn.execute(
        "INSERT INTO study_versions (study_key, version) VALUES (?, 1) "
        "ON CONFLICT (study_key) DO UPDATE SET version=version+1",
        (study_key,),
    )
    return study_version(conn, study_key)


def study_version(conn: sqlite3.Connection, study_key: str) -> int:
    row = conn.execute(
        "SELECT version FROM study_versions WHERE study_key=?", (study_key,)
    ).fetchone()
    return int(row[0]) if row else 0


# --------------------------------------------------------------------------- change log
#
# Each merge that changes a study bumps its data version and logs, per collection, the ids
# of the rows it inserted, replaced or deleted in that version (records also with their
# form key, so typed per-form tables know which of their parts changed, even for a record
# that is gone). A NULL id means "every row of that collection may have changed" (its first
# load, or more changes than LOG_ROWS_MAX). A snapshot at data version v0 brought to v1
# rewrites what the log lists for (v0, v1]; where the log no longer reaches back to v0 it
# rebuilds everything.


def log_changes(
    conn: sqlite3.Connection,
    study_key: str,
    version: int,
    spec: Collection,
    rows: list[tuple[Any, str | None]] | None,
) -> None:
    """Log (id, form key) pairs changed in `version`; None (or too many) logs "everything"."""
    if rows is None or len(rows) > LOG_ROWS_MAX:
        conn.execute(
            "INSERT INTO change_log (study_key, version, collection, row_id, form_key) "
            "VALUES (?, ?, ?, NULL, NULL)",
            (study_key, version, spec.name),
        )
        return
    conn.executemany(
        "INSERT INTO change_log (study_key, version, collection, row_id, form_key) "
        "VALUES (?, ?, ?, ?, ?)",
        [(study_key, version, spec.name, row_id, form) for row_id, form in rows],
    )


@dataclass(frozen=True)
class Changes:
    """What changed in a study between two data versions, per collection name: a set of
    (id, form key) pairs, or None for "everything may have changed"."""

    collections: dict[str, set[tuple[Any, str | None]] | None]

    def of(self, collection: str) -> set[tuple[Any, str | None]] | None:
        """The changed rows of one collection: empty if none, None if all may have."""
        return self.collections.get(collection, set())


def changes_since(conn: sqlite3.Connection, study_key: str, since_version: int) -> Changes | None:
    """Changes after `since_version` up to now; None when the log no longer reaches back
    that far (the caller then treats everything as changed)."""
    floor = conn.execute(
        "SELECT version FROM change_log_floor WHERE study_key=?", (study_key,)
    ).fetchone()
    if since_version < 1 or (floor is not None and since_version < floor[0]):
        return None
    out: dict[str, set[tuple[Any, str | None]] | None] = {}
    for collection, row_id, form_key in conn.execute(
        "SELECT collection, row_id, form_key FROM change_log WHERE study_key=? AND version>?",
        (study_key, since_version),
    ):
        if row_id is None:
            out[collection] = None
        elif out.get(collection, set()) is not None:
            out.setdefault(collection, set()).add((row_id, form_key))  # type: ignore[union-attr]
    return Changes(out)


def prune_change_log(conn: sqlite3.Connection, study_key: str, version: int) -> None:
    """Keep the log for the last LOG_VERSIONS_KEPT versions (a snapshot older than that is
    rebuilt whole, which is correct, only slower)."""
    floor = version - LOG_VERSIONS_KEPT
    if floor < 1:
        return
    conn.execute("DELETE FROM change_log WHERE study_key=? AND version<=?", (study_key, floor))
    conn.execute(
        "INSERT INTO change_log_floor (study_key, version) VALUES (?, ?) "
        "ON CONFLICT (study_key) DO UPDATE SET version=excluded.version",
        (study_key, floor),
    )


def forget_study(conn: sqlite3.Connection, study_key: str, tables: Iterable[str]) -> int:
    """Delete every row of a study (pruning a study the API no longer lists)."""
    removed = 0
    for table in tables:
        removed += conn.execute(f"DELETE FROM {table} WHERE study_key=?", (study_key,)).rowcount
    return removed
