"""The cache reader over cache v3: every collection as API dicts or typed frames (the
snapshot's columns), filters on any API field, record histories, clear errors for unknown
names, and reads that are consistent and never blocked while a sync holds a write
transaction. No server, no Prefect: caches are filled as a merge fills them."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imednet_flows.cache import reader
from imednet_flows.cache.collections import BY_NAME, COLLECTIONS, query_open
from imednet_flows.cache.db import connect, write_transaction
from imednet_flows.cache.reader import (
    EntityStatus,
    UnknownName,
    get_cached,
    get_cached_queries,
    get_cached_records,
    get_cached_subjects,
    get_cached_visits,
    record_history,
    sync_status,
)
from imednet_flows.cache.snapshots import write_snapshot
from imednet_flows.cache.store import set_state
from imednet_flows.emulator.seed import StudyData, StudySpec, generate_study
from tests.cache_helpers import change, items_of, load_study

KEY = "READ-1"
OTHER = "READ-2"
SPEC = StudySpec(study_key=KEY, study_id=5, seed=3, subjects=20, soft_deleted_rate=0.08)
OTHER_SPEC = StudySpec(study_key=OTHER, study_id=6, seed=4, subjects=5)
WATERMARK, SYNCED = "2025-12-15 02:00:00", "2026-01-01 00:00:00"


@pytest.fixture(scope="module")
def data() -> StudyData:
    """The seeded study, with one subject and one visit soft-deleted."""
    study = generate_study(SPEC)
    study.subjects[2] = {**study.subjects[2], "deleted": True}
    study.visits[5] = {**study.visits[5], "deleted": True}
    return study


def fill(conn: sqlite3.Connection, data: StudyData, study_key: str) -> None:
    load_study(conn, data, study_key)
    with write_transaction(conn):
        for name in ("records", "subjects"):
            set_state(conn, BY_NAME[name], study_key, WATERMARK, SYNCED)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, data: StudyData) -> Path:
    """Two studies in one file, as the sync keeps them: every read must stay in its study."""
    path = tmp_path_factory.mktemp("reader") / "cache.db"
    conn = connect(path)
    fill(conn, data, KEY)
    fill(conn, generate_study(OTHER_SPEC), OTHER)
    conn.close()
    return path


@pytest.fixture
def writer(cache: Path) -> Iterator[sqlite3.Connection]:
    conn = connect(cache)
    yield conn
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()


def by_id(items: list[dict], field: str) -> list[dict]:
    return sorted(items, key=lambda item: item[field])


def live(items: list[dict]) -> list[dict]:
    return [item for item in items if not item.get("deleted")]


# --------------------------------------------------------------------------------------
# Every collection
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", COLLECTIONS, ids=[c.name for c in COLLECTIONS])
def test_every_collection_as_api_dicts(cache: Path, data: StudyData, spec: Any):
    items = by_id(items_of(data, spec.name), spec.id_field)
    everything = get_cached(cache, KEY, spec.name, as_dataframe=False, include_deleted=True)
    assert everything == items
    assert get_cached(cache, KEY, spec.table, as_dataframe=False, include_deleted=True) == items
    default = get_cached(cache, KEY, spec.name, as_dataframe=False)
    kept = items if spec.name == "recordRevisions" else live(items)
    assert default == kept  # revisions are an audit trail: deleted ones stay


def test_every_collection_frame_is_its_snapshot_file_without_raw(
    tmp_path: Path, cache: Path, data: StudyData
):
    conn = connect(cache, readonly=True)
    result = write_snapshot(conn, KEY, tmp_path / "snapshots")
    conn.close()
    for spec in COLLECTIONS:
        frame = get_cached(cache, KEY, spec.name, include_deleted=True)
        snapshot = pq.read_table(result.path / f"{spec.name}.parquet").drop_columns(["raw"])
        assert list(frame.columns) == snapshot.column_names, spec.name
        assert all(isinstance(t, pd.ArrowDtype) for t in frame.dtypes), spec.name
        table = pa.Table.from_pandas(frame, preserve_index=False)
        assert table.to_pylist() == snapshot.to_pylist(), spec.name
    visits = get_cached(cache, KEY, "visits")
    assert visits["visitDate"].dtype == pd.ArrowDtype(pa.date32())
    assert visits["dateModified"].dtype == pd.ArrowDtype(pa.timestamp("s", tz="UTC"))
    assert get_cached(cache, KEY, "queries")["isOpen"].dtype == pd.ArrowDtype(pa.bool_())


# --------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------


FILTERS: list[tuple[str, str, Callable[[StudyData], Any]]] = [
    # (collection, API field, a value taken from the data) -- SQLite columns and raw alike
    ("sites", "siteId", lambda d: d.sites[1]["siteId"]),
    ("sites", "siteName", lambda d: d.sites[0]["siteName"]),
    ("forms", "formKey", lambda d: "VS"),
    ("intervals", "intervalName", lambda d: d.intervals[1]["intervalName"]),
    ("variables", "variableType", lambda d: "DATE"),
    ("users", "userActiveInStudy", lambda d: False),
    ("subjects", "subjectKey", lambda d: d.subjects[3]["subjectKey"]),
    ("subjects", "siteId", lambda d: d.subjects[0]["siteId"]),
    ("visits", "subjectKey", lambda d: d.subjects[3]["subjectKey"]),
    ("visits", "intervalName", lambda d: d.visits[0]["intervalName"]),
    ("records", "formKey", lambda d: "AE"),
    ("records", "recordStatus", lambda d: d.records[0]["recordStatus"]),
    ("recordRevisions", "recordId", lambda d: d.records[4]["recordId"]),
    ("recordRevisions", "user", lambda d: d.record_revisions[0]["user"]),
    ("queries", "isOpen", lambda d: True),
    ("queries", "type", lambda d: None),
    ("codings", "dictionaryName", lambda d: "MedDRA"),
    ("codings", "recordId", lambda d: d.codings[0]["recordId"]),
]


@pytest.mark.parametrize(
    ("collection", "field", "value_of"), FILTERS, ids=[f"{c}.{f}" for c, f, _ in FILTERS]
)
def test_filter_by_any_api_field(
    cache: Path, data: StudyData, collection: str, field: str, value_of: Callable
):
    spec = BY_NAME[collection]
    value = value_of(data)

    def matches(item: dict) -> bool:
        got = query_open(item) == 1 if field == "isOpen" else item.get(field)
        return got == value

    expected = by_id([i for i in items_of(data, collection) if matches(i)], spec.id_field)
    got = get_cached(
        cache, KEY, collection, as_dataframe=False, include_deleted=True, **{field: value}
    )
    assert got == expected and got, (collection, field)
    frame = get_cached(cache, KEY, collection, include_deleted=True, **{field: value})
    assert list(frame[spec.id_field]) == [i[spec.id_field] for i in expected]


def test_filters_combine_and_deleted_filter_overrides(cache: Path, data: StudyData):
    subject = data.subjects[3]["subjectKey"]
    frame = get_cached(cache, KEY, "records", formKey="VS", subjectKey=subject)
    expected = [
        r for r in live(data.records) if r["formKey"] == "VS" and r["subjectKey"] == subject
    ]
    assert sorted(frame["recordId"]) == sorted(r["recordId"] for r in expected) and len(frame)
    deleted = get_cached(cache, KEY, "records", deleted=True, as_dataframe=False)
    assert deleted == by_id([r for r in data.records if r["deleted"]], "recordId") and deleted


def test_unknown_collection_or_field_says_which_exist(cache: Path):
    with pytest.raises(UnknownName, match=r"no collection 'patients'") as raised:
        get_cached(cache, KEY, "patients")
    assert all(spec.name in str(raised.value) for spec in COLLECTIONS)
    with pytest.raises(UnknownName, match=r"subjects has no field 'subject_key'.*subjectKey"):
        get_cached(cache, KEY, "subjects", subject_key="01-001")
    with pytest.raises(UnknownName, match=r"no field 'raw'"):
        get_cached(cache, KEY, "records", raw="x")  # only API fields, never SQL


def test_include_deleted(cache: Path, data: StudyData):
    for collection, field in (("records", "recordId"), ("subjects", "subjectId")):
        items = items_of(data, collection)
        deleted = {i[field] for i in items if i["deleted"]}
        assert deleted, collection
        default = get_cached(cache, KEY, collection)
        assert not default["deleted"].any() and not set(default[field]) & deleted
        everything = get_cached(cache, KEY, collection, include_deleted=True)
        assert len(everything) == len(items) and deleted <= set(everything[field])


# --------------------------------------------------------------------------------------
# Record history
# --------------------------------------------------------------------------------------


def test_record_history_in_revision_order(tmp_path: Path, data: StudyData):
    path = tmp_path / "history.db"
    conn = connect(path)
    load_study(conn, data, KEY)
    record_id = data.records[7]["recordId"]
    own = sorted(
        (r for r in data.record_revisions if r["recordId"] == record_id),
        key=lambda r: (r["recordRevision"], r["recordRevisionId"]),
    )
    top, base = own[-1]["recordRevision"], max(r["recordRevisionId"] for r in data.record_revisions)
    later = [  # ids out of revision order, as a backfill can leave them
        {**own[-1], "recordRevisionId": base + 2, "recordRevision": top + 1, "user": "amiller",
         "role": "Monitor", "reasonForChange": "Source verified", "recordStatus": "Complete",
         "deleted": False, "dateCreated": "2030-01-02 10:00:00"},
        {**own[-1], "recordRevisionId": base + 1, "recordRevision": top + 2, "user": "jrossi",
         "role": "Data Manager", "reasonForChange": "Deleted in error", "deleted": True,
         "dateCreated": "2030-01-03 10:00:00"},
    ]  # fmt: skip
    change(conn, KEY, "recordRevisions", later)
    conn.close()
    expected = [*own, *later]
    history = record_history(path, KEY, record_id)
    assert list(history["recordRevision"]) == [r["recordRevision"] for r in expected]
    assert list(history["recordRevisionId"])[-2:] == [base + 2, base + 1]
    assert list(history["user"]) == [r["user"] for r in expected]
    assert list(history["reasonForChange"])[-2:] == ["Source verified", "Deleted in error"]
    assert list(history["deleted"])[-2:] == [False, True]
    assert list(history["role"]) == [r["role"] for r in expected]
    assert list(history["recordStatus"]) == [r["recordStatus"] for r in expected]
    assert history["dateCreated"].iloc[-1] == pd.Timestamp("2030-01-03 10:00:00", tz="UTC")
    assert record_history(path, KEY, record_id, as_dataframe=False) == expected
    assert record_history(path, KEY, -1).empty and "user" in record_history(path, KEY, -1)


# --------------------------------------------------------------------------------------
# Records, subjects, visits, queries, status: the wrappers
# --------------------------------------------------------------------------------------


def test_records_as_api_dicts_equal_what_was_loaded(cache: Path, data: StudyData):
    everything = get_cached_records(cache, KEY, include_deleted=True, as_dataframe=False)
    assert everything == by_id(data.records, "recordId")
    default = get_cached_records(cache, KEY, as_dataframe=False)
    assert default == by_id(live(data.records), "recordId")
    assert len(default) < len(everything)


def test_record_filters(cache: Path, data: StudyData):
    subject_key = data.subjects[3]["subjectKey"]
    got = get_cached_records(cache, KEY, form_key="REG", as_dataframe=False)
    assert got == by_id([r for r in live(data.records) if r["formKey"] == "REG"], "recordId")
    got = get_cached_records(cache, KEY, subject_key=subject_key, as_dataframe=False)
    expected = [r for r in live(data.records) if r["subjectKey"] == subject_key]
    assert got == by_id(expected, "recordId") and got
    frame = get_cached_records(cache, KEY, form_key="VS", subject_key=subject_key)
    assert set(frame["formKey"]) <= {"VS"} and set(frame["subjectKey"]) <= {subject_key}
    assert len(frame) == sum(r["formKey"] == "VS" for r in expected)


def test_form_frame_has_typed_variable_columns(cache: Path, data: StudyData):
    frame = get_cached_records(cache, KEY, form_key="REG")
    assert len(frame) == sum(r["formKey"] == "REG" for r in live(data.records))
    types = {v["variableName"]: v["variableType"] for v in data.variables if v["formKey"] == "REG"}
    expected = {"DATE": pa.date32(), "INTEGER": pa.int64(), "CHECKBOX": pa.bool_()}
    for name, vtype in types.items():
        if vtype in expected:
            assert frame[name].dtype == pd.ArrowDtype(expected[vtype]), name
    assert frame["dateModified"].dtype == pd.ArrowDtype(pa.timestamp("s", tz="UTC"))
    assert "recordData" not in frame.columns and "raw" not in frame.columns


def test_frame_without_form_has_record_data_dicts(cache: Path, data: StudyData):
    frame = get_cached_records(cache, KEY)
    expected = by_id(live(data.records), "recordId")
    assert list(frame["recordId"]) == [r["recordId"] for r in expected]
    assert list(frame["recordData"]) == [r["recordData"] for r in expected]
    assert list(frame["recordOid"]) == [r["recordOid"] for r in expected]
    assert frame["dateCreated"].iloc[0] == pd.Timestamp(expected[0]["dateCreated"], tz="UTC")


def test_subjects_visits_queries(cache: Path, data: StudyData):
    assert get_cached_subjects(cache, KEY, as_dataframe=False) == by_id(
        live(data.subjects), "subjectId"
    )
    assert get_cached_visits(cache, KEY, include_deleted=True, as_dataframe=False) == by_id(
        data.visits, "visitId"
    )
    subject_key = data.subjects[0]["subjectKey"]
    visits = get_cached_visits(cache, KEY, subject_key=subject_key)
    assert len(visits) == len([v for v in live(data.visits) if v["subjectKey"] == subject_key])
    subjects = get_cached_subjects(cache, KEY, include_deleted=True)
    assert len(subjects) == len(data.subjects)
    assert "raw" not in subjects.columns and "subjectStatus" in subjects.columns

    assert get_cached_queries(cache, KEY, as_dataframe=False) == by_id(data.queries, "annotationId")
    open_ids = {q["annotationId"] for q in data.queries if query_open(q) == 1}
    open_frame = get_cached_queries(cache, KEY, open_only=True)
    assert set(open_frame["annotationId"]) == open_ids and open_ids
    assert open_frame["isOpen"].all()


def test_sync_status(cache: Path, data: StudyData):
    rows = sync_status(cache)
    assert [(r.study_key, r.entity) for r in rows] == [
        (KEY, "records"),
        (KEY, "subjects"),
        (OTHER, "records"),
        (OTHER, "subjects"),
    ]
    assert sync_status(cache, KEY)[0] == EntityStatus(
        study_key=KEY,
        entity="records",
        watermark=WATERMARK,
        last_success=SYNCED,
        row_count=len(data.records),
    )


def test_unknown_study_is_empty(cache: Path):
    for spec in COLLECTIONS:
        frame = get_cached(cache, "NOPE", spec.name)
        assert frame.empty and spec.id_field in frame.columns
        assert get_cached(cache, "NOPE", spec.name, as_dataframe=False) == []
    frame = get_cached_records(cache, "NOPE")
    assert frame.empty and {"recordId", "recordData"} <= set(frame.columns)
    typed = get_cached_records(cache, "NOPE", form_key="REG")
    assert typed.empty and "recordId" in typed.columns
    assert get_cached_queries(cache, "NOPE", open_only=True).empty
    assert sync_status(cache, "NOPE") == []


def test_missing_cache_says_to_sync(tmp_path: Path):
    missing = tmp_path / "nowhere" / "cache.db"
    for call in (
        lambda: get_cached(missing, KEY, "sites"),
        lambda: record_history(missing, KEY, 1),
        lambda: get_cached_records(missing, KEY),
        lambda: get_cached_subjects(missing, KEY),
        lambda: get_cached_visits(missing, KEY),
        lambda: get_cached_queries(missing, KEY),
        lambda: sync_status(missing),
    ):
        with pytest.raises(FileNotFoundError, match="run the sync first"):
            call()
    assert not missing.parent.exists()  # reading never creates a cache


# --------------------------------------------------------------------------------------
# Concurrency
# --------------------------------------------------------------------------------------


def test_reads_last_commit_while_writer_holds_uncommitted_changes(
    cache: Path, data: StudyData, writer: sqlite3.Connection
):
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("DELETE FROM records WHERE study_key=?", (KEY,))
    writer.execute("UPDATE subjects SET raw=json_set(raw, '$.subjectStatus', 'Gone')")
    writer.execute("DELETE FROM sync_state WHERE study_key=?", (KEY,))
    started = time.monotonic()
    records = get_cached_records(cache, KEY, include_deleted=True, as_dataframe=False)
    subjects = get_cached(cache, KEY, "subjects")
    status = sync_status(cache, KEY)
    elapsed = time.monotonic() - started
    writer.execute("ROLLBACK")
    assert records == by_id(data.records, "recordId")
    assert "Gone" not in set(subjects["subjectStatus"])
    assert len(status) == 2
    assert elapsed < 2, "a reader waited on the writer (busy_timeout is 10 s)"


class CommitAfterFirstRead:
    """A reader connection that lets another connection commit right after its first
    query: if the call did not read in one transaction, its later queries would see it."""

    def __init__(self, conn: sqlite3.Connection, on_first_read: Callable[[], None]) -> None:
        self.conn = conn
        self.on_first_read: Callable[[], None] | None = on_first_read

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        cursor = self.conn.execute(sql, *args)
        if self.on_first_read is not None and sql.lstrip().upper().startswith("SELECT"):
            hook, self.on_first_read = self.on_first_read, None
            hook()
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("conn", "on_first_read"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.conn, name, value)


def test_one_call_reads_one_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "cache.db"
    data = generate_study(OTHER_SPEC)
    writer = connect(path)
    load_study(writer, data, OTHER)
    variable = next(
        v for v in data.variables if v["formKey"] == "REG" and v["variableType"] == "INTEGER"
    )

    def retype() -> None:
        change(writer, OTHER, "variables", [dict(variable, variableType="TEXT")])

    def connect_hooked(cache_path: Path, readonly: bool = False) -> CommitAfterFirstRead:
        return CommitAfterFirstRead(connect(cache_path, readonly=readonly), retype)

    monkeypatch.setattr(reader, "connect", connect_hooked)
    frame = get_cached_records(path, OTHER, form_key="REG")
    # Records were read before the commit, so the variables must be from before it too.
    assert frame[variable["variableName"]].dtype == pd.ArrowDtype(pa.int64())
    monkeypatch.undo()
    frame = get_cached_records(path, OTHER, form_key="REG")
    assert frame[variable["variableName"]].dtype == pd.ArrowDtype(pa.string())
    writer.close()
