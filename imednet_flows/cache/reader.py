"""Reading the cache: what notebooks and downstream flows call instead of the API.

No network and no FileLock: every call opens its own read-only connection and reads inside
one ``BEGIN ... COMMIT``. In WAL mode that transaction sees the last committed state as of
its first read and is never blocked by a sync writing meanwhile, and the rows it returns
are consistent with each other (e.g. records and the variables that type them).

Conventions shared by every function:

* A cache path that does not exist raises FileNotFoundError telling to run the sync.
* A study that is not in the cache is not an error: the result is empty (an empty
  DataFrame with the usual columns, or ``[]``), since "no data yet" is a normal state.
* ``as_dataframe=False`` returns the API dicts exactly as they were cached (from ``raw``).
* DataFrames use Arrow-backed dtypes (``pd.ArrowDtype``), so integer columns with blanks
  stay integers and dates stay dates. Their columns are those of the collection's snapshot
  file without ``raw`` (typed fields, then derived columns such as queries' ``isOpen``).
* Rows come in id order. Soft-deleted rows (``deleted`` true) are left out unless
  ``include_deleted=True``; record revisions are an audit trail and keep every revision.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa

from imednet_flows.cache import arrow
from imednet_flows.cache.collections import (
    COLLECTIONS,
    RECORD_REVISIONS,
    RECORDS,
    Collection,
    collection,
    snake,
)
from imednet_flows.cache.db import check_cache_path, connect
from imednet_flows.timestamps import format_timestamp
from imednet_flows.values import as_text


class UnknownName(ValueError):
    """A collection or filter field the cache does not have; the message lists those it has."""


@contextmanager
def _read(cache_path: str | Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection inside one read transaction, closed afterwards."""
    path = check_cache_path(cache_path)
    if not path.is_file():
        raise FileNotFoundError(f"no cache at {path}; run the sync first to create it")
    conn = connect(path, readonly=True)
    conn.row_factory = None  # plain tuples: positional access, cheapest rows
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


def _collection(name: str) -> Collection:
    try:
        return collection(name)
    except KeyError:
        names = ", ".join(c.name for c in COLLECTIONS)
        raise UnknownName(
            f"the cache has no collection {name!r}; use one of {names} (API or table names)"
        ) from None


def filter_fields(spec: Collection) -> list[str]:
    """The API field names a collection can be filtered on."""
    return [name for name, _ in spec.fields] + [name for name, _, _ in spec.derived]


def _field_sql(spec: Collection, name: str) -> str:
    """The SQL for an API field: the SQLite column that holds it where there is one
    (indexed; ``deleted`` as 0/1, ``isOpen`` derived), else its value inside ``raw``.
    Names are checked against the collection's fields, so no input reaches the SQL text."""
    if name not in filter_fields(spec):
        raise UnknownName(
            f"{spec.name} has no field {name!r} to filter on; use one of "
            f"{', '.join(filter_fields(spec))}"
        )
    if name == spec.id_field:
        return spec.id_column
    if any(column.name == snake(name) for column in spec.columns):
        return snake(name)
    return f"json_extract(raw, '$.{name}')"


def _sql_value(value: Any) -> Any:
    """A filter value as the cache stores it: bools as 1/0 (SQLite and JSON alike),
    timestamps in the API's canonical text, dates as ISO text."""
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def _where(
    spec: Collection, study_key: str, filters: dict[str, Any], include_deleted: bool
) -> tuple[str, list[Any]]:
    clauses, args = ["study_key=?"], [study_key]
    for name, value in filters.items():
        sql = _field_sql(spec, name)
        if value is None:
            clauses.append(f"{sql} IS NULL")
        else:
            clauses.append(f"{sql}=?")
            args.append(_sql_value(value))
    if not include_deleted and "deleted" not in filters and _soft_deletes(spec):
        clauses.append(f"coalesce({_field_sql(spec, 'deleted')}, 0)=0")
    return " AND ".join(clauses), args


def _soft_deletes(spec: Collection) -> bool:
    """Rows of this collection can be soft-deleted (an audit trail's rows cannot: a
    revision marked deleted records a deletion and is kept)."""
    return spec.mode != "append" and "deleted" in filter_fields(spec)


def _frame(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def get_cached(
    cache_path: str | Path,
    study_key: str,
    collection: str,
    *,
    as_dataframe: bool = True,
    include_deleted: bool = False,
    **filters: Any,
) -> pd.DataFrame | list[dict[str, Any]]:
    """Cached rows of any collection of a study, in id order.

    `collection` is the API name (``recordRevisions``) or the table name
    (``record_revisions``). Filters are API field names with the value to equal, e.g.
    ``get_cached(path, "PHX-101", "visits", subjectKey="01-001")``; None matches null.
    A ``deleted=`` filter overrides `include_deleted`.
    """
    spec = _collection(collection)
    where, args = _where(spec, study_key, filters, include_deleted)
    order = f" ORDER BY {spec.id_column}"
    with _read(cache_path) as conn:
        if not as_dataframe:
            sql = f"SELECT raw FROM {spec.table} WHERE {where}{order}"
            return [orjson.loads(r[0]) for r in conn.execute(sql, args)]
        select = ", ".join(arrow.select_columns(spec))
        rows = conn.execute(f"SELECT {select} FROM {spec.table} WHERE {where}{order}", args)
        table = arrow.rows_table(spec, rows.fetchall(), raw=False)
    return _frame(table)


def record_history(
    cache_path: str | Path, study_key: str, record_id: int, as_dataframe: bool = True
) -> pd.DataFrame | list[dict[str, Any]]:
    """A record's revisions in order (recordRevision, then recordRevisionId): who changed
    it (user, role), why (reasonForChange), when (dateCreated), and the recordStatus and
    deleted flag each revision left. Empty for a record without cached revisions."""
    spec = RECORD_REVISIONS
    order = "ORDER BY json_extract(raw, '$.recordRevision'), record_revision_id"
    where = "study_key=? AND record_id=?"
    with _read(cache_path) as conn:
        if not as_dataframe:
            sql = f"SELECT raw FROM {spec.table} WHERE {where} {order}"
            return [orjson.loads(r[0]) for r in conn.execute(sql, (study_key, record_id))]
        select = ", ".join(arrow.select_columns(spec))
        sql = f"SELECT {select} FROM {spec.table} WHERE {where} {order}"
        rows = conn.execute(sql, (study_key, record_id)).fetchall()
    return _frame(arrow.rows_table(spec, rows, raw=False))


def get_cached_records(
    cache_path: str | Path,
    study_key: str,
    form_key: str | None = None,
    subject_key: str | None = None,
    include_deleted: bool = False,
    as_dataframe: bool = True,
) -> pd.DataFrame | list[dict[str, Any]]:
    """Cached records of a study, ordered by recordId.

    With `form_key`: one row per record of that form, the metadata columns of
    `frames.RECORD_COLUMNS` plus one typed column per variable of the form (as in
    ``forms/{form}.parquet``). Without it, forms have different variables, so the frame has
    the metadata columns plus ``recordData``, a column of dicts of the API's string values
    (typed JSON a server echoed is turned into that text, so one variable never mixes types
    and the frame can be written to Parquet); pass a form key to get typed values.
    """
    filters = {} if form_key is None else {"formKey": form_key}
    if subject_key is not None:
        filters["subjectKey"] = subject_key
    if not as_dataframe:
        return get_cached(
            cache_path,
            study_key,
            RECORDS.name,
            as_dataframe=False,
            include_deleted=include_deleted,
            **filters,
        )
    where, args = _where(RECORDS, study_key, filters, include_deleted)
    with _read(cache_path) as conn:
        sql = f"SELECT raw FROM records WHERE {where} ORDER BY record_id"
        raws = [r[0] for r in conn.execute(sql, args)]
        if form_key is None:
            frame = _frame(arrow.record_meta_table(raws))
            frame["recordData"] = pd.Series([_text_values(raw) for raw in raws], dtype=object)
            return frame
        variables = [
            orjson.loads(r[0])
            for r in conn.execute(
                "SELECT raw FROM variables WHERE study_key=? AND form_key=? ORDER BY variable_id",
                (study_key, form_key),
            )
        ]
    return _frame(arrow.form_table(raws, variables, form_key))


def _text_values(raw: str) -> dict[str, str | None]:
    data = orjson.loads(raw).get("recordData")
    return {k: as_text(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _of_subject(
    cache_path: str | Path,
    study_key: str,
    collection: str,
    subject_key: str | None,
    include_deleted: bool,
    as_dataframe: bool,
) -> pd.DataFrame | list[dict[str, Any]]:
    filters = {} if subject_key is None else {"subjectKey": subject_key}
    return get_cached(
        cache_path,
        study_key,
        collection,
        as_dataframe=as_dataframe,
        include_deleted=include_deleted,
        **filters,
    )


def get_cached_subjects(
    cache_path: str | Path,
    study_key: str,
    subject_key: str | None = None,
    include_deleted: bool = False,
    as_dataframe: bool = True,
) -> pd.DataFrame | list[dict[str, Any]]:
    """Cached subjects, ordered by subjectId (columns as ``subjects.parquet`` minus raw)."""
    return _of_subject(
        cache_path, study_key, "subjects", subject_key, include_deleted, as_dataframe
    )


def get_cached_visits(
    cache_path: str | Path,
    study_key: str,
    subject_key: str | None = None,
    include_deleted: bool = False,
    as_dataframe: bool = True,
) -> pd.DataFrame | list[dict[str, Any]]:
    """Cached visits, ordered by visitId (columns as ``visits.parquet`` minus raw)."""
    return _of_subject(cache_path, study_key, "visits", subject_key, include_deleted, as_dataframe)


def get_cached_queries(
    cache_path: str | Path,
    study_key: str,
    open_only: bool = False,
    subject_key: str | None = None,
    as_dataframe: bool = True,
) -> pd.DataFrame | list[dict[str, Any]]:
    """Cached queries, ordered by annotationId.

    `open_only` keeps queries whose latest comment is not closed (``isOpen``); queries
    without comments have ``isOpen`` null and are not counted as open, as in the SDK.
    """
    filters: dict[str, Any] = {} if subject_key is None else {"subjectKey": subject_key}
    if open_only:
        filters["isOpen"] = True
    return get_cached(cache_path, study_key, "queries", as_dataframe=as_dataframe, **filters)


@dataclass(frozen=True)
class EntityStatus:
    """Where one collection of one study stands in the cache."""

    study_key: str
    entity: str
    #: The server time the next run reads changes from (minus the overlap); None if unknown.
    watermark: str | None
    last_success: str | None
    row_count: int


def sync_status(cache_path: str | Path, study_key: str | None = None) -> list[EntityStatus]:
    """Per study and collection: watermark, last successful sync and cached row count.

    Ordered by study then collection; ``[]`` for a study never synced.
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
    "UnknownName",
    "filter_fields",
    "get_cached",
    "get_cached_queries",
    "get_cached_records",
    "get_cached_subjects",
    "get_cached_visits",
    "record_history",
    "sync_status",
]
