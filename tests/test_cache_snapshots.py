"""Parquet snapshots: layout, readability by other engines, types, reuse, retention,
path safety, crash safety and bounded memory. No server and no Prefect: generated study
data is loaded straight into a temporary cache."""

from __future__ import annotations

import gc
import json
import math
import os
import sqlite3
import tracemalloc
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imednet_flows.cache import schema, snapshots, store
from imednet_flows.cache.snapshots import (
    LATEST,
    UnsafeSnapshotPath,
    latest_snapshot,
    read_manifest,
    safe_name,
    study_path,
    write_snapshot,
)
from imednet_flows.emulator.seed import StudyData, StudySpec, generate_study
from imednet_flows.values import coerce

KEY = "SNAP-1"
SPEC = StudySpec(study_key=KEY, study_id=3, seed=5, subjects=24, soft_deleted_rate=0.05)
TOP_FILES = ("records.parquet", "subjects.parquet", "visits.parquet", "queries.parquet")
EXPECTED_TYPES = {
    "TEXT": pa.string(),
    "MEMO": pa.string(),
    "RADIO": pa.string(),
    "INTEGER": pa.int64(),
    "NUMBER": pa.float64(),
    "DATE": pa.date32(),
    "CHECKBOX": pa.bool_(),
}


def load(conn: sqlite3.Connection, data: StudyData, study_key: str) -> None:
    """What a sync run commits, minus the network: every entity plus form versions."""
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


@pytest.fixture(scope="module")
def data() -> StudyData:
    return generate_study(SPEC)


@pytest.fixture
def conn(tmp_path: Path, data: StudyData) -> sqlite3.Connection:
    connection = schema.connect(tmp_path / "cache.db")
    load(connection, data, KEY)
    yield connection
    connection.close()


@pytest.fixture
def snap_dir(tmp_path: Path) -> Path:
    return tmp_path / "snapshots"


def forms_with_records(data: StudyData) -> list[str]:
    return sorted({r["formKey"] for r in data.records})


def edit_form(conn: sqlite3.Connection, data: StudyData, form_key: str) -> None:
    """Change one record of a form the way a sync does: upsert and bump its version."""
    record = dict(next(r for r in data.records if r["formKey"] == form_key))
    record["recordStatus"] = "Edited"
    record["dateModified"] = "2026-01-01 00:00:00"
    with store.write_transaction(conn):
        store.upsert(conn, schema.RECORDS, KEY, [record])
        store.bump_form_versions(conn, KEY, [form_key])


def tmp_leftovers(study_dir: Path) -> list[str]:
    return [p.name for p in study_dir.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------


def test_layout_and_latest_symlink(conn: sqlite3.Connection, data: StudyData, snap_dir: Path):
    assert latest_snapshot(snap_dir, KEY) is None
    result = write_snapshot(conn, KEY, snap_dir)
    study_dir = snap_dir / KEY
    link = study_dir / LATEST
    assert link.is_symlink()
    assert os.readlink(link) == result.name  # relative: the tree can be moved or mounted
    assert latest_snapshot(snap_dir, KEY) == result.path.resolve()
    assert result.path.parent == study_dir.resolve()
    assert snapshots._set_key(result.name) is not None  # named by run time, e.g. 20261129T..Z

    for name in TOP_FILES:
        assert (link / name).is_file()
    all_forms = {f["formKey"] for f in data.forms}
    assert {p.stem for p in (link / "forms").iterdir()} == all_forms
    assert tmp_leftovers(study_dir) == []

    manifest = read_manifest(link)
    assert manifest["study_key"] == KEY
    assert manifest["created"].endswith("Z")
    assert manifest["rows"] == {
        "records": len(data.records),
        "subjects": len(data.subjects),
        "visits": len(data.visits),
        "queries": len(data.queries),
    }
    assert set(manifest["forms"]) == all_forms
    for form_key, entry in manifest["forms"].items():
        expected = sum(r["formKey"] == form_key for r in data.records)
        assert entry["rows"] == expected == result.form_rows[form_key]
        assert entry["version"] == (1 if expected else None)
        assert len(entry["variables_signature"]) == 16
    assert set(result.files_written) == {
        *TOP_FILES,
        *(f"forms/{k}.parquet" for k in all_forms),
    }
    assert result.files_reused == []
    assert result.seconds >= 0


def test_refuses_connection_inside_transaction(conn: sqlite3.Connection, snap_dir: Path):
    conn.execute("BEGIN")
    with pytest.raises(RuntimeError, match="outside any transaction"):
        write_snapshot(conn, KEY, snap_dir)
    conn.execute("ROLLBACK")


# --------------------------------------------------------------------------------------
# Readable everywhere, typed as promised
# --------------------------------------------------------------------------------------


def test_every_file_readable_by_pandas_duckdb_polars(
    conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    result = write_snapshot(conn, KEY, snap_dir)
    manifest = read_manifest(result.path)
    expected = {name: manifest["rows"][name.removesuffix(".parquet")] for name in TOP_FILES}
    for form_key, entry in manifest["forms"].items():
        expected[f"forms/{form_key}.parquet"] = entry["rows"]
    latest = snap_dir / KEY / LATEST
    duck = duckdb.connect()
    for name, rows in expected.items():
        path = latest / name
        assert len(pd.read_parquet(path)) == rows, name
        assert duck.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0] == rows
        assert pl.read_parquet(path).height == rows, name

    # recordData is JSON text that DuckDB and Polars can query directly.
    record = next(r for r in data.records if r["formKey"] == "REG")
    got = duck.execute(
        f"SELECT json_extract_string(recordData, '$.regdt') FROM "
        f"read_parquet('{latest / 'records.parquet'}') WHERE recordId = {record['recordId']}"
    ).fetchone()[0]
    assert got == record["recordData"]["regdt"]
    frame = pl.read_parquet(latest / "records.parquet")
    assert frame.schema["dateModified"] == pl.Datetime("ms", "UTC")
    assert frame.filter(pl.col("deleted")).height == sum(r["deleted"] for r in data.records)
    # Subjects keep the raw API JSON beside their typed columns.
    subjects = pl.read_parquet(latest / "subjects.parquet")
    assert json.loads(subjects["raw"][0]) == sorted(data.subjects, key=lambda s: s["subjectId"])[0]


def test_arrow_type_per_variable_type(conn: sqlite3.Connection, data: StudyData, snap_dir: Path):
    result = write_snapshot(conn, KEY, snap_dir)
    seen_types: set[str] = set()
    seen_values: set[str] = set()
    by_id = {r["recordId"]: r for r in data.records}
    for form_key in forms_with_records(data):
        table = pq.read_table(result.path / "forms" / f"{form_key}.parquet")
        rows = table.to_pylist()
        for variable in data.variables:
            if variable["formKey"] != form_key or variable["deleted"]:
                continue
            name, vtype = variable["variableName"], variable["variableType"]
            assert table.schema.field(name).type == EXPECTED_TYPES[vtype], (form_key, name)
            seen_types.add(vtype)
            for row in rows:
                raw = by_id[row["recordId"]]["recordData"].get(name)
                assert row[name] == coerce(raw, vtype)
                if row[name] is not None:
                    seen_values.add(vtype)
    assert seen_types == set(EXPECTED_TYPES)
    assert seen_values == set(EXPECTED_TYPES)  # each type carries real, coerced values
    meta = pq.read_schema(result.path / "records.parquet")
    assert meta.field("dateCreated").type == pa.timestamp("ms", tz="UTC")  # Parquet has no "s"
    assert meta.field("recordData").type == pa.string()


# --------------------------------------------------------------------------------------
# Reuse and retention
# --------------------------------------------------------------------------------------


def test_unchanged_forms_hard_linked_changed_rewritten(
    conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    first = write_snapshot(conn, KEY, snap_dir)
    changed_records, changed_vars = forms_with_records(data)[:2]
    edit_form(conn, data, changed_records)
    # A variable's type changes without any record change: only the signature moves.
    variable = dict(next(v for v in data.variables if v["formKey"] == changed_vars))
    variable["variableType"] = "TEXT" if variable["variableType"] != "TEXT" else "INTEGER"
    with store.write_transaction(conn):
        store.upsert(conn, schema.VARIABLES, KEY, [variable])

    second = write_snapshot(conn, KEY, snap_dir)
    assert second.name != first.name
    changed = {f"forms/{changed_records}.parquet", f"forms/{changed_vars}.parquet"}
    for entry in read_manifest(second.path)["forms"].values():
        name = entry["file"]
        same = os.stat(first.path / name).st_ino == os.stat(second.path / name).st_ino
        assert same == (name not in changed), name
        assert entry["reused"] == (name not in changed)
    assert (
        set(second.files_reused) == {f"forms/{f['formKey']}.parquet" for f in data.forms} - changed
    )
    assert changed <= set(second.files_written)
    edited = pd.read_parquet(second.path / f"forms/{changed_records}.parquet")
    assert (edited["recordStatus"] == "Edited").sum() == 1
    new_type = pq.read_schema(second.path / f"forms/{changed_vars}.parquet")
    assert new_type.field(variable["variableName"]).type == EXPECTED_TYPES[variable["variableType"]]
    # records.parquet is always rewritten: it is never shared between sets.
    assert (
        os.stat(first.path / "records.parquet").st_ino
        != os.stat(second.path / "records.parquet").st_ino
    )


def test_rebuilt_cache_is_not_mistaken_for_unchanged(
    tmp_path: Path, conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    """Form versions restart at 1 in a rebuilt cache: row fingerprints still catch edits."""
    write_snapshot(conn, KEY, snap_dir)
    form_key = forms_with_records(data)[0]
    rebuilt = schema.connect(tmp_path / "rebuilt.db")
    load(rebuilt, data, KEY)
    record = dict(next(r for r in data.records if r["formKey"] == form_key))
    record["dateModified"] = "2026-02-02 00:00:00"
    with store.write_transaction(rebuilt):
        store.upsert(rebuilt, schema.RECORDS, KEY, [record])
    result = write_snapshot(rebuilt, KEY, snap_dir)
    assert f"forms/{form_key}.parquet" in result.files_written
    rebuilt.close()


def test_retention_keeps_newest_sets(conn: sqlite3.Connection, snap_dir: Path):
    results = [write_snapshot(conn, KEY, snap_dir, retention=2) for _ in range(4)]
    names = [r.name for r in results]
    assert len(set(names)) == 4  # unique even within one second
    assert sorted(names, key=snapshots._set_key) == names  # and they sort by age
    study_dir = snap_dir / KEY
    remaining = [p.name for p in snapshots.complete_sets(study_dir)]
    assert remaining == names[-2:]
    assert os.readlink(study_dir / LATEST) == names[-1]
    assert results[2].removed == [names[0]] and results[3].removed == [names[1]]
    # Hard-linked files outlive the set they were first written to.
    assert all(pq.read_table(p).num_rows >= 0 for p in (study_dir / LATEST).rglob("*.parquet"))


def test_retention_never_deletes_the_latest_target(conn: sqlite3.Connection, snap_dir: Path):
    old, new = (write_snapshot(conn, KEY, snap_dir, retention=5) for _ in range(2))
    study_dir = snap_dir / KEY
    os.replace(_link(study_dir, old.name), study_dir / LATEST)  # as if `new` never went live
    assert snapshots._apply_retention(study_dir, 1) == []
    assert {p.name for p in snapshots.complete_sets(study_dir)} == {old.name, new.name}


def _link(study_dir: Path, target: str) -> Path:
    tmp = study_dir / ".latest-tmp-test"
    os.symlink(target, tmp)
    return tmp


# --------------------------------------------------------------------------------------
# Path safety
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["../evil", "a/b", "..", ".", "/abs/path", "x/../../y", ".hidden", "", "A\\B", "é~1"]
)
def test_hostile_study_keys_stay_inside(tmp_path: Path, key: str):
    root = tmp_path / "root"
    snap_dir = root / "snapshots"
    conn = schema.connect(root / "cache.db")
    result = write_snapshot(conn, key, snap_dir)
    conn.close()
    resolved = snap_dir.resolve()
    assert result.path.parent.parent == resolved
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(root.resolve())
    created = [p for p in root.rglob("*") if not p.is_relative_to(snap_dir)]
    assert {p.name for p in created} <= {"cache.db", "cache.db-wal", "cache.db-shm", "snapshots"}
    assert latest_snapshot(snap_dir, key) == result.path.resolve()


def test_distinct_keys_get_distinct_dirs():
    keys = ["a/b", "a_b", "a:b", "a_b~" + safe_name("a/b").split("~")[1], "A_B", "..", "_", ""]
    names = [safe_name(k) for k in keys]
    assert len(set(names)) == len(keys)
    assert safe_name("PHX-101") == "PHX-101"  # ordinary keys stay readable
    assert all("/" not in n and not n.startswith(".") for n in names)


def test_resolved_path_check_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Even if sanitising were wrong, nothing is written outside snapshot_dir."""
    monkeypatch.setattr(snapshots, "safe_name", lambda key: key)
    conn = schema.connect(tmp_path / "cache.db")
    for key in ("../escape", "a/b", ".."):
        with pytest.raises(UnsafeSnapshotPath):
            write_snapshot(conn, key, tmp_path / "snapshots")
        with pytest.raises(UnsafeSnapshotPath):
            study_path(tmp_path / "snapshots", key)
    assert not (tmp_path / "escape").exists()
    conn.close()


# --------------------------------------------------------------------------------------
# Crash safety
# --------------------------------------------------------------------------------------


class SimulatedCrash(Exception):
    pass


@pytest.mark.parametrize(
    "point", ["snapshot.mid-form", "snapshot.before-rename", "snapshot.before-latest"]
)
def test_crash_leaves_previous_latest(
    conn: sqlite3.Connection,
    data: StudyData,
    snap_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    point: str,
):
    first = write_snapshot(conn, KEY, snap_dir)
    study_dir = snap_dir / KEY
    edit_form(conn, data, forms_with_records(data)[0])
    reached: list[str] = []

    def crash(name: str) -> None:
        reached.append(name)
        if name == point:
            raise SimulatedCrash(name)

    monkeypatch.setattr(snapshots, "crash_point", crash)
    with pytest.raises(SimulatedCrash):
        write_snapshot(conn, KEY, snap_dir)
    assert reached[-1] == point
    assert not conn.in_transaction  # the read transaction was released
    assert os.readlink(study_dir / LATEST) == first.name
    assert read_manifest(study_dir / LATEST) == read_manifest(first.path)
    latest_records = pd.read_parquet(study_dir / LATEST / "records.parquet")
    assert "Edited" not in set(latest_records["recordStatus"])
    if point == "snapshot.before-latest":
        assert len(snapshots.complete_sets(study_dir)) == 2  # complete, just not live yet
    else:
        assert any(n.startswith(".tmp-") for n in tmp_leftovers(study_dir))

    monkeypatch.setattr(snapshots, "crash_point", lambda name: None)
    after = write_snapshot(conn, KEY, snap_dir)
    assert os.readlink(study_dir / LATEST) == after.name
    assert tmp_leftovers(study_dir) == []
    latest_records = pd.read_parquet(study_dir / LATEST / "records.parquet")
    assert (latest_records["recordStatus"] == "Edited").sum() == 1


def test_stale_temporaries_are_removed(conn: sqlite3.Connection, snap_dir: Path):
    study_dir = snap_dir / KEY
    (study_dir / ".tmp-20200101T000000Z" / "forms").mkdir(parents=True)
    os.symlink("nowhere", study_dir / ".latest-tmp-20200101T000000Z")
    write_snapshot(conn, KEY, snap_dir)
    assert tmp_leftovers(study_dir) == []


# --------------------------------------------------------------------------------------
# Consistency and memory
# --------------------------------------------------------------------------------------


def test_snapshot_is_consistent_while_a_writer_holds_uncommitted_changes(
    tmp_path: Path, conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    writer = schema.connect(tmp_path / "cache.db")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("DELETE FROM records WHERE study_key=?", (KEY,))
    writer.execute("UPDATE subjects SET subject_status='Gone' WHERE study_key=?", (KEY,))
    try:
        result = write_snapshot(conn, KEY, snap_dir)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert result.rows["records"] == len(data.records)
    assert sum(result.form_rows.values()) == len(data.records)
    subjects = pd.read_parquet(result.path / "subjects.parquet")
    assert "Gone" not in set(subjects["subjectStatus"])


def test_commit_during_a_snapshot_is_not_half_seen(
    tmp_path: Path,
    conn: sqlite3.Connection,
    data: StudyData,
    snap_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """Another connection commits while the set is being written (after the first form
    file): the whole set still shows the state from before that commit."""
    writer = schema.connect(tmp_path / "cache.db")

    def commit_now(name: str) -> None:
        if name == "snapshot.mid-form":
            with store.write_transaction(writer):
                writer.execute("DELETE FROM records WHERE study_key=?", (KEY,))
                writer.execute("DELETE FROM subjects WHERE study_key=?", (KEY,))

    monkeypatch.setattr(snapshots, "crash_point", commit_now)
    result = write_snapshot(conn, KEY, snap_dir)
    writer.close()
    assert result.rows["subjects"] == len(data.subjects)
    assert sum(result.form_rows.values()) == result.rows["records"] == len(data.records)
    assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0  # it did commit


def test_streams_in_batches(conn: sqlite3.Connection, data: StudyData, snap_dir: Path):
    result = write_snapshot(conn, KEY, snap_dir, batch_rows=20)
    meta = pq.ParquetFile(result.path / "records.parquet").metadata
    assert meta.num_row_groups == math.ceil(len(data.records) / 20)
    for path in result.path.rglob("*.parquet"):
        groups = pq.ParquetFile(path).metadata
        assert all(groups.row_group(i).num_rows <= 20 for i in range(groups.num_row_groups))


def test_memory_stays_bounded_for_a_large_study(tmp_path: Path, snap_dir: Path):
    """20k records: peak Python allocation is a fraction of the records' JSON size, i.e.
    the table is never materialised (fetchall / one big Arrow table) at once."""
    key = "BIG"
    big = generate_study(StudySpec.for_records(20_000, study_key=key, study_id=4, seed=9))
    conn = schema.connect(tmp_path / "big.db")
    load(conn, big, key)
    records = len(big.records)
    del big
    gc.collect()
    raw_bytes = conn.execute("SELECT SUM(LENGTH(raw)) FROM records").fetchone()[0]
    tracemalloc.start()
    try:
        result = write_snapshot(conn, key, snap_dir, batch_rows=500)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        conn.close()
    assert result.rows["records"] == records >= 20_000
    assert peak < raw_bytes / 4, (peak, raw_bytes)


def test_records_file_metadata_matches_form_files(conn: sqlite3.Connection, snap_dir: Path):
    """records.parquet builds metadata column-wise, form files via frames.records_table:
    both must agree value for value."""
    result = write_snapshot(conn, KEY, snap_dir)
    records = pq.read_table(result.path / "records.parquet")
    meta_names = [n for n in records.column_names if n != "recordData"]
    forms = pa.concat_tables(
        pq.read_table(p).select(meta_names) for p in (result.path / "forms").glob("*.parquet")
    )
    key = [("recordId", "ascending")]
    assert records.select(meta_names).sort_by(key).equals(forms.sort_by(key))


def test_any_row_factory_on_the_callers_connection(conn: sqlite3.Connection, snap_dir: Path):
    """Callers may set dict rows on their connection; the snapshot reads tuples anyway."""
    conn.row_factory = lambda cur, row: dict(zip([d[0] for d in cur.description], row, strict=True))
    result = write_snapshot(conn, KEY, snap_dir)
    assert pq.read_table(result.path / "subjects.parquet").num_rows == result.rows["subjects"] > 0
