"""The cache reader: filters, typed frames, API dicts back as loaded, and reads that are
consistent and never blocked while a sync holds a write transaction. No server, no Prefect."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from imednet_flows.cache import reader, schema, store
from imednet_flows.cache.reader import (
    EntityStatus,
    get_cached_queries,
    get_cached_records,
    get_cached_subjects,
    get_cached_visits,
    sync_status,
)
from imednet_flows.emulator.seed import StudyData, StudySpec, generate_study

KEY = "READ-1"
OTHER = "READ-2"
SPEC = StudySpec(study_key=KEY, study_id=5, seed=3, subjects=20, soft_deleted_rate=0.08)
OTHER_SPEC = StudySpec(study_key=OTHER, study_id=6, seed=4, subjects=5)


def load(conn: sqlite3.Connection, data: StudyData, study_key: str) -> None:
    with store.write_transaction(conn):
        for spec, items in (
            (schema.RECORDS, data.records),
            (schema.SUBJECTS, data.subjects),
            (schema.VISITS, data.visits),
            (schema.QUERIES, data.queries),
            (schema.FORMS, data.forms),
            (schema.VARIABLES, data.variables),
        ):
            store.upsert(conn, spec, study_key, items)
        store.bump_form_versions(conn, study_key, {r["formKey"] for r in data.records})
        for entity in ("records", "subjects"):
            store.set_state(conn, study_key, entity, "2025-12-15 02:00:00", "2026-01-01 00:00:00")


@pytest.fixture(scope="module")
def data() -> StudyData:
    return generate_study(SPEC)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, data: StudyData) -> Path:
    """Two studies in one file, as the sync keeps them: every read must stay in its study."""
    path = tmp_path_factory.mktemp("reader") / "cache.db"
    conn = schema.connect(path)
    load(conn, data, KEY)
    load(conn, generate_study(OTHER_SPEC), OTHER)
    conn.close()
    return path


@pytest.fixture
def writer(cache: Path) -> Iterator[sqlite3.Connection]:
    conn = schema.connect(cache)
    yield conn
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.close()


def by_id(items: list[dict], field: str) -> list[dict]:
    return sorted(items, key=lambda item: item[field])


def live(items: list[dict]) -> list[dict]:
    return [item for item in items if not item.get("deleted")]


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


def test_records_as_api_dicts_equal_what_was_loaded(cache: Path, data: StudyData):
    everything = get_cached_records(cache, KEY, include_deleted=True, as_dataframe=False)
    assert everything == by_id(data.records, "recordId")
    default = get_cached_records(cache, KEY, as_dataframe=False)
    assert default == by_id(live(data.records), "recordId")
    assert len(default) < len(everything)  # the study has soft-deleted records


def test_record_filters(cache: Path, data: StudyData):
    form_key = "REG"
    subject_key = data.subjects[3]["subjectKey"]
    got = get_cached_records(cache, KEY, form_key=form_key, as_dataframe=False)
    assert got == by_id([r for r in live(data.records) if r["formKey"] == form_key], "recordId")
    got = get_cached_records(cache, KEY, subject_key=subject_key, as_dataframe=False)
    expected = [r for r in live(data.records) if r["subjectKey"] == subject_key]
    assert got == by_id(expected, "recordId") and got
    frame = get_cached_records(cache, KEY, form_key="VS", subject_key=subject_key)
    assert set(frame["formKey"]) <= {"VS"} and set(frame["subjectKey"]) <= {subject_key}
    assert len(frame) == sum(r["formKey"] == "VS" for r in expected)


def test_include_deleted(cache: Path, data: StudyData):
    deleted = {r["recordId"] for r in data.records if r["deleted"]}
    assert deleted
    default = get_cached_records(cache, KEY)
    assert not default["deleted"].any() and not set(default["recordId"]) & deleted
    everything = get_cached_records(cache, KEY, include_deleted=True)
    assert deleted <= set(everything["recordId"])
    assert len(everything) == len(data.records)


def test_form_frame_has_typed_variable_columns(cache: Path, data: StudyData):
    frame = get_cached_records(cache, KEY, form_key="REG")
    assert len(frame) == sum(r["formKey"] == "REG" for r in live(data.records))
    dtypes = {c: frame[c].dtype for c in frame.columns}
    types = {v["variableName"]: v["variableType"] for v in data.variables if v["formKey"] == "REG"}
    expected = {"DATE": pa.date32(), "INTEGER": pa.int64(), "CHECKBOX": pa.bool_()}
    for name, vtype in types.items():
        if vtype in expected:
            assert dtypes[name] == pd.ArrowDtype(expected[vtype]), name
    assert dtypes["dateModified"] == pd.ArrowDtype(pa.timestamp("s", tz="UTC"))
    assert "recordData" not in frame.columns


def test_frame_without_form_has_record_data_dicts(cache: Path, data: StudyData):
    frame = get_cached_records(cache, KEY)
    expected = by_id(live(data.records), "recordId")
    assert list(frame["recordId"]) == [r["recordId"] for r in expected]
    assert list(frame["recordData"]) == [r["recordData"] for r in expected]
    assert list(frame["recordOid"]) == [r["recordOid"] for r in expected]
    assert frame["dateCreated"].iloc[0] == pd.Timestamp(expected[0]["dateCreated"], tz="UTC")


# --------------------------------------------------------------------------------------
# Subjects, visits, queries, status
# --------------------------------------------------------------------------------------


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
    assert visits["visitDate"].dtype == pd.ArrowDtype(pa.date32())
    subjects = get_cached_subjects(cache, KEY, include_deleted=True)
    assert len(subjects) == len(data.subjects)
    assert "raw" not in subjects.columns and "subjectStatus" in subjects.columns

    queries = get_cached_queries(cache, KEY, as_dataframe=False)
    assert queries == by_id(data.queries, "annotationId")
    open_ids = {q["annotationId"] for q in data.queries if schema.query_open(q) == 1}
    assert open_ids
    open_frame = get_cached_queries(cache, KEY, open_only=True)
    assert set(open_frame["annotationId"]) == open_ids
    assert open_frame["isOpen"].all()


def test_sync_status(cache: Path):
    rows = sync_status(cache)
    assert [(r.study_key, r.entity) for r in rows] == [
        (KEY, "records"),
        (KEY, "subjects"),
        (OTHER, "records"),
        (OTHER, "subjects"),
    ]
    mine = sync_status(cache, KEY)
    assert mine[0] == EntityStatus(
        study_key=KEY,
        entity="records",
        watermark="2025-12-15 02:00:00",
        last_success="2026-01-01 00:00:00",
        row_count=len(generate_study(SPEC).records),
    )


def test_unknown_study_is_empty(cache: Path):
    frame = get_cached_records(cache, "NOPE")
    assert frame.empty and {"recordId", "recordData"} <= set(frame.columns)
    typed = get_cached_records(cache, "NOPE", form_key="REG")
    assert typed.empty and "recordId" in typed.columns
    assert get_cached_records(cache, "NOPE", as_dataframe=False) == []
    assert get_cached_subjects(cache, "NOPE").empty
    assert "subjectKey" in get_cached_subjects(cache, "NOPE").columns
    assert get_cached_visits(cache, "NOPE", as_dataframe=False) == []
    assert get_cached_queries(cache, "NOPE", open_only=True).empty
    assert sync_status(cache, "NOPE") == []


def test_missing_cache_says_to_sync(tmp_path: Path):
    missing = tmp_path / "nowhere" / "cache.db"
    for call in (
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
    writer.execute("UPDATE subjects SET subject_status='Gone' WHERE study_key=?", (KEY,))
    writer.execute("DELETE FROM sync_state WHERE study_key=?", (KEY,))
    started = time.monotonic()
    records = get_cached_records(cache, KEY, include_deleted=True, as_dataframe=False)
    subjects = get_cached_subjects(cache, KEY)
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


def test_one_call_reads_one_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "cache.db"
    data = generate_study(OTHER_SPEC)
    writer = schema.connect(path)
    load(writer, data, OTHER)
    variable = next(
        v for v in data.variables if v["formKey"] == "REG" and v["variableType"] == "INTEGER"
    )

    def retype() -> None:
        changed = dict(variable, variableType="TEXT")
        with store.write_transaction(writer):
            store.upsert(writer, schema.VARIABLES, OTHER, [changed])

    def connect(cache_path: Path, readonly: bool = False) -> CommitAfterFirstRead:
        return CommitAfterFirstRead(schema.connect(cache_path, readonly=readonly), retype)

    monkeypatch.setattr(reader, "connect", connect)
    frame = get_cached_records(path, OTHER, form_key="REG")
    # Records were read before the commit, so the variables must be from before it too.
    assert frame[variable["variableName"]].dtype == pd.ArrowDtype(pa.int64())
    monkeypatch.undo()
    frame = get_cached_records(path, OTHER, form_key="REG")
    assert frame[variable["variableName"]].dtype == pd.ArrowDtype(pa.string())
    writer.close()
