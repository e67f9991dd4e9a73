"""Reading the cache: what notebooks and downstream flows call instead of the API.

No network and no FileLock: every call opens its own read-only connection
(``schema.connect(path, readonly=True)``) and reads inside one ``BEGIN ... COMMIT``. In WAL
mode that transaction sees the last committed state as of its first read and is never
blocked by a sync writing meanwhile, and the rows it returns are consistent with each
other (e.g. records and the variables that type them).

Conventions shared by every function:

* A cache path that does not exist raises FileNotFoundError telling to run the sync.
* A study that is not in the cache is not an error: the result is empty (an empty
  DataFrame with the usual columns, or ``[]``), since "no data yet" is a normal state for a
  study that has not been synced or has no rows of that kind.
* ``as_dataframe=False`` returns the API dicts exactly as they were cached (from ``raw``).
* DataFrames use Arrow-backed dtypes (``pd.ArrowDtype``, like the extract flow), so
  integer columns with blanks stay integers and dates stay dates. Their columns are those
  of the matching snapshot file (see ``snapshots``), without the ``raw`` column.
* Soft-deleted rows are left out unless ``include_deleted=True`` (queries have no
  deleted flag).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from imednet_flows.cache.schema import (
    QUERIES,
    SUBJECTS,
    VISITS,
    EntitySpec,
    check_cache_path,
    connect,
)
from imednet_flows.cache.snapshots import (
    entity_columns,
    entity_table,
    record_dict,
    record_meta_table,
    record_select,
)
from imednet_flows.frames import records_table
from imednet_flows.values import as_text

Filters = list[tuple[str, Any]]


@contextmanager
def _read(cache_path: str | Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection inside one read transaction, closed afterwards."""
    path = check_cache_path(cache_path)
    if not path.is_file():
        raise FileNotFoundError(f"no cache at {path}; run the sync first to create it")
    conn = connect(path, readonly=True)
    conn.row_factory = None  # plain tuples: positional access, zip(*rows), cheapest rows
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            raise FileNotFoundError(
                f"{path} is not an imednet-flows cache (no schema); run the sync first"
            )
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")
    finally:
        conn.close()


def _where(study_key: str, filters: Filters) -> tuple[str, list[Any]]:
    clauses = ["study_key=?"]
    args: list[Any] = [study_key]
    for clause, value in filters:
        clauses.append(clause)
        if value is not None:
            args.append(value)
    return " AND ".join(clauses), args


def _entity(
    cache_path: str | Path,
    spec: EntitySpec,
    study_key: str,
    filters: Filters,
    as_dataframe: bool,
) -> pd.DataFrame | list[dict[str, Any]]:
    where, args = _where(study_key, filters)
    order = f" ORDER BY {spec.id_column}"
    with _read(cache_path) as conn:
        if not as_dataframe:
            sql = f"SELECT raw FROM {spec.name} WHERE {where}{order}"
            return [orjson.loads(r[0]) for r in conn.execute(sql, args)]
        columns = ", ".join(entity_columns(spec, include_raw=False))
        rows = conn.execute(f"SELECT {columns} FROM {spec.name} WHERE {where}{order}", args)
        table = entity_table(spec, rows, include_raw=False)
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def get_cached_records(
    cache_path: str | Path,
    study_key: str,
    form_key: str | None = None,
    subject_key: str | None = None,
    include_deleted: bool = False,
    as_dataframe: bool = True,
) -> pd.DataFrame | list[dict[str, Any]]:
    """Cached records of a study, ordered by recordId.

    With ``form_key``: one row per record of that form, the metadata columns of
    frames.RECORD_COLUMNS plus one typed column per variable of the form (as in
    ``forms/{form}.parquet``). Without it, forms have different variables, so the frame has
    the metadata columns plus ``recordData``, a column of dicts of the API's string values
    (typed JSON a server echoed is turned into that text, so one variable never mixes
    types and the frame can be written to Parquet); pass a form key to get typed values.
    """
    filters: Filters = []
    if form_key is not None:
        filters.append(("form_key=?", form_key))
    if subject_key is not None:
        filters.append(("subject_key=?", subject_key))
    if not include_deleted:
        filters.append(("deleted=0", None))
    where, args = _where(study_key, filters)
    with _read(cache_path) as conn:
        if not as_dataframe:
            sql = f"SELECT raw FROM records WHERE {where} ORDER BY record_id"
            return [orjson.loads(r[0]) for r in conn.execute(sql, args)]
        names, select = record_select()
        sql = f"SELECT {select} FROM records WHERE {where} ORDER BY record_id"
        rows = conn.execute(sql, args).fetchall()
        if form_key is None:
            frame = record_meta_table(rows).to_pandas(types_mapper=pd.ArrowDtype)
            frame["recordData"] = pd.Series(
                [_text_values(orjson.loads(r[-1])) for r in rows], dtype=object
            )
            return frame
        variables = [
            orjson.loads(r[0])
            for r in conn.execute(
                "SELECT raw FROM variables WHERE study_key=? AND form_key=? ORDER BY variable_id",
                (study_key, form_key),
            )
        ]
    records = [record_dict(names, row, parse_data=True) for row in rows]
    return records_table(records, variables, [form_key]).to_pandas(types_mapper=pd.ArrowDtype)


def _text_values(data: dict[str, Any]) -> dict[str, str | None]:
    return {name: as_text(value) for name, value in data.items()}


def get_cached_subjects(
    cache_path: str | Path,
    study_key: str,
    subject_key: str | None = None,
    include_deleted: bool = False,
    as_dataframe: bool = True,
) -> pd.DataFrame | list[dict[str, Any]]:
    """Cached subjects, ordered by subjectId (columns as ``subjects.parquet`` minus raw)."""
    filters: Filters = []
    if subject_key is not None:
        filters.append(("subject_key=?", subject_key))
    if not include_deleted:
        filters.append(("deleted=0", None))
    return _entity(cache_path, SUBJECTS, study_key, filters, as_dataframe)


def get_cached_visits(
    cache_path: str | Path,
    study_key: str,
    subject_key: str | None = None,
    include_deleted: bool = False,
    as_dataframe: bool = True,
) -> pd.DataFrame | list[dict[str, Any]]:
    """Cached visits, ordered by visitId (columns as ``visits.parquet`` minus raw)."""
    filters: Filters = []
    if subject_key is not None:
        filters.append(("subject_key=?", subject_key))
    if not include_deleted:
        filters.append(("deleted=0", None))
    return _entity(cache_path, VISITS, study_key, filters, as_dataframe)


def get_cached_queries(
    cache_path: str | Path,
    study_key: str,
    open_only: bool = False,
    subject_key: str | None = None,
    as_dataframe: bool = True,
) -> pd.DataFrame | list[dict[str, Any]]:
    """Cached queries, ordered by annotationId.

    ``open_only`` keeps queries whose latest comment is not closed (``isOpen``); queries
    without comments have ``isOpen`` null and are not counted as open, as in the SDK.
    """
    filters: Filters = []
    if open_only:
        filters.append(("is_open=1", None))
    if subject_key is not None:
        filters.append(("subject_key=?", subject_key))
    return _entity(cache_path, QUERIES, study_key, filters, as_dataframe)


@dataclass(frozen=True)
class EntityStatus:
    """Where one entity of one study stands in the cache."""

    study_key: str
    entity: str
    #: The server time the next run reads changes from (minus the overlap); None if unknown.
    watermark: str | None
    last_success: str | None
    row_count: int


def sync_status(cache_path: str | Path, study_key: str | None = None) -> list[EntityStatus]:
    """Per study and entity: watermark, last successful sync and cached row count.

    Ordered by study then entity; ``[]`` for a study never synced.
    """
    sql = "SELECT study_key, entity, watermark, last_success, row_count FROM sync_state"
    args: list[Any] = []
    if study_key is not None:
        sql += " WHERE study_key=?"
        args.append(study_key)
    with _read(cache_path) as conn:
        rows = conn.execute(sql + " ORDER BY study_key, entity", args).fetchall()
    return [EntityStatus(*r) for r in rows]


__all__ = [
    "EntityStatus",
    "get_cached_queries",
    "get_cached_records",
    "get_cached_subjects",
    "get_cached_visits",
    "sync_status",
]
