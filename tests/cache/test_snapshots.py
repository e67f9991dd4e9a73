"""Parquet snapshots of cache v3: every collection and every form as a directory of parts,
equal to the cache's rows, readable by pandas, pyarrow, DuckDB and Polars; incremental
sets that rewrite only the parts holding changed rows and equal a from-scratch build;
retention, path safety, crash safety and bounded memory. No server and no Prefect: caches
are filled the way a merge fills them (`tests.cache_helpers`)."""

from __future__ import annotations

import gc
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imednet_flows.cache import arrow, store
from imednet_flows.cache.collections import BY_NAME, COLLECTIONS, VARIABLES
from imednet_flows.cache.db import connect, write_transaction
from imednet_flows.cache.snapshots import (
    LATEST,
    MANIFEST,
    UnsafeSnapshotPath,
    complete_sets,
    latest_snapshot,
    paths,
    read_manifest,
    safe_name,
    snapshot_is_current,
    study_path,
    write_snapshot,
    writer,
)
from imednet_flows.cache.snapshots.background import BackgroundWriter, PartFile
from imednet_flows.cache.snapshots.writer import SnapshotResult
from imednet_flows.emulator.seed import StudyData, StudySpec, generate_study
from imednet_flows.frames import RECORD_COLUMNS, records_table
from imednet_flows.values import coerce
from tests.cache_helpers import change, items_of, load_study

KEY = "SNAP-1"
SPEC = StudySpec(study_key=KEY, study_id=3, seed=5, subjects=24, soft_deleted_rate=0.05)
#: Small parts, so a study of 288 records has several and a few edits touch a few.
PART = 32
EXPECTED_TYPES = {
    "TEXT": pa.string(),
    "MEMO": pa.string(),
    "RADIO": pa.string(),
    "INTEGER": pa.int64(),
    "NUMBER": pa.float64(),
    "DATE": pa.date32(),
    "CHECKBOX": pa.bool_(),
}


@pytest.fixture(scope="module")
def data() -> StudyData:
    return generate_study(SPEC)


@pytest.fixture
def conn(tmp_path: Path, data: StudyData) -> Iterator[sqlite3.Connection]:
    connection = connect(tmp_path / "cache.db")
    load_study(connection, data, KEY)
    yield connection
    connection.close()


@pytest.fixture
def snap_dir(tmp_path: Path) -> Path:
    return tmp_path / "snapshots"


def snap(conn: sqlite3.Connection, snap_dir: Path, **kwargs: Any) -> SnapshotResult:
    return write_snapshot(conn, KEY, snap_dir, part_rows=PART, **kwargs)


def tables(set_dir: Path) -> dict[str, dict[str, Any]]:
    """Every table of a set by its path in the set, from the manifest."""
    manifest = read_manifest(set_dir)
    return {e["file"]: e for e in [*manifest["collections"].values(), *manifest["forms"].values()]}


def inodes(set_dir: Path, rel: str) -> dict[Any, int]:
    """Inode of each part of a table, keyed by the lower bound of its id range."""
    entry = tables(set_dir)[rel]
    return {p["lo"]: os.stat(set_dir / rel / p["file"]).st_ino for p in entry["parts"]}


def cache_rows(conn: sqlite3.Connection, collection: str) -> list[tuple[Any, str]]:
    spec = BY_NAME[collection]
    return conn.execute(
        f"SELECT {spec.id_column}, raw FROM {spec.table} WHERE study_key=? "
        f"ORDER BY {spec.id_column}",
        (KEY,),
    ).fetchall()


def by_table(records: list[dict[str, Any]]) -> dict[str, set[int]]:
    """Record ids per table that holds them: records.parquet and their forms' tables."""
    out: dict[str, set[int]] = {"records.parquet": {r["recordId"] for r in records}}
    for r in records:
        out.setdefault(f"forms/{r['formKey']}.parquet", set()).add(r["recordId"])
    return out


def parts_holding(set_dir: Path, rel: str, ids: set[int]) -> set[int]:
    """Indexes of the parts of a table whose id ranges hold `ids`."""
    bounds = [p["lo"] for p in tables(set_dir)[rel]["parts"][1:]]
    return {sum(i >= b for b in bounds) for i in ids}


def assert_same_tables(left: Path, right: Path) -> None:
    """Two sets hold the same tables with the same rows and values, whatever their parts."""
    assert set(tables(left)) == set(tables(right))
    for rel in tables(left):
        a, b = pq.read_table(left / rel), pq.read_table(right / rel)
        assert a.schema == b.schema, rel
        assert a.equals(b), rel


def scratch(conn: sqlite3.Connection, tmp_path: Path, name: str = "scratch") -> Path:
    """The same cache snapshotted with no earlier set: the reference an incremental set
    must equal."""
    return snap(conn, tmp_path / name).path


def edited(items: list[dict[str, Any]], **values: Any) -> list[dict[str, Any]]:
    return [{**item, **values} for item in items]


# --------------------------------------------------------------------------------------
# Layout and content
# --------------------------------------------------------------------------------------


def test_layout_manifest_and_latest_symlink(
    conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    assert latest_snapshot(snap_dir, KEY) is None
    result = snap(conn, snap_dir)
    study_dir = snap_dir / KEY
    link = study_dir / LATEST
    assert link.is_symlink() and os.readlink(link) == result.name  # relative
    assert latest_snapshot(snap_dir, KEY) == result.path.resolve()
    assert paths.set_key(result.name) is not None  # named by run time
    assert [p.name for p in study_dir.iterdir() if p.name.startswith(".")] == []

    manifest = read_manifest(link)
    assert manifest["study_key"] == KEY and manifest["created"].endswith("Z")
    assert manifest["data_version"] == result.data_version == 1
    assert list(manifest["collections"]) == [c.name for c in COLLECTIONS]
    for spec in COLLECTIONS:
        entry = manifest["collections"][spec.name]
        assert entry["file"] == f"{spec.name}.parquet" and (link / entry["file"]).is_dir()
        expected = len(items_of(data, spec.name))
        assert entry["rows"] == sum(p["rows"] for p in entry["parts"]) == expected, spec.name
        assert manifest["rows"][spec.name] == result.rows[spec.name] == expected
        parts = sorted(p.name for p in (link / entry["file"]).iterdir())
        assert parts == [p["file"] for p in entry["parts"]]  # names sort in id order
    assert set(manifest["forms"]) == {f["formKey"] for f in data.forms}
    for form_key, entry in manifest["forms"].items():
        rows = sum(r["formKey"] == form_key for r in data.records)
        assert entry["rows"] == result.form_rows[form_key] == rows
        assert entry["file"] == f"forms/{form_key}.parquet"
    written = {f.rsplit("/", 1)[0] for f in result.files_written}
    assert written == set(tables(link))
    assert result.files_reused == [] and result.rebuilt == "there is no earlier complete set"
    assert result.bytes_written == sum(p.stat().st_size for p in link.rglob("part-*.parquet"))
    # Parts are shared between sets by hard links: nobody should edit one in place.
    assert all(p.stat().st_mode & 0o222 == 0 for p in link.rglob("part-*.parquet"))


def test_every_collection_file_equals_the_cache_rows(
    conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    """Ids in order, raw as cached, and each typed field the value of the API's JSON."""
    result = snap(conn, snap_dir)
    for spec in COLLECTIONS:
        table = pq.read_table(result.path / f"{spec.name}.parquet")
        names = [n for n, _ in spec.fields] + [n for n, _, _ in spec.derived] + ["raw"]
        assert table.column_names == names, spec.name
        rows = cache_rows(conn, spec.name)
        assert table[spec.id_field].to_pylist() == [r[0] for r in rows], spec.name
        assert table["raw"].to_pylist() == [r[1] for r in rows], spec.name
        got = table.to_pylist()
        for row, (_, raw) in zip(got, rows, strict=True):
            item = orjson.loads(raw)
            for name, kind in spec.fields:
                assert row[name] == expected_field(item.get(name), kind), (spec.name, name)
            for name, _, function in spec.derived:
                assert row[name] == (None if function(item) is None else bool(function(item)))
    queries = pq.read_table(result.path / "queries.parquet")
    assert queries.schema.field("isOpen").type == pa.bool_()
    assert set(queries["isOpen"].to_pylist()) == {True, False, None}  # all three kinds
    stamps = pq.read_table(result.path / "records.parquet").schema.field("dateModified").type
    assert stamps == pa.timestamp("ms", tz="UTC")  # Parquet has no seconds unit


def expected_field(value: Any, kind: str) -> Any:
    """The typed value of a clean API field, worked out independently of the code."""
    if value is None:
        return None
    if kind == "ts":
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    if kind == "date":
        return date.fromisoformat(value) if value else None
    return value


def test_form_tables_are_typed_per_variable(
    conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    """Metadata columns plus one typed column per variable, value for value what the
    extraction's `records_table` makes of the same records."""
    result = snap(conn, snap_dir)
    seen: set[str] = set()
    for form in data.forms:
        form_key = form["formKey"]
        table = pq.read_table(result.path / "forms" / f"{form_key}.parquet")
        records = sorted(
            (r for r in data.records if r["formKey"] == form_key), key=lambda r: r["recordId"]
        )
        variables = [v for v in data.variables if v["formKey"] == form_key and not v["deleted"]]
        names = [n for n, _ in RECORD_COLUMNS] + [v["variableName"] for v in variables]
        assert table.column_names == names, form_key
        for variable in variables:
            field = table.schema.field(variable["variableName"])
            assert field.type == EXPECTED_TYPES[variable["variableType"]], form_key
            values = [
                coerce(r["recordData"].get(field.name), variable["variableType"]) for r in records
            ]
            assert table[field.name].to_pylist() == values, (form_key, field.name)
            if any(v is not None for v in values):
                seen.add(variable["variableType"])
        reference = records_table(records, data.variables, [form_key])
        assert table.cast(reference.schema).equals(reference), form_key
    assert seen == set(EXPECTED_TYPES)  # every type carries real values


def assert_every_reader_reads_every_table(set_dir: Path, latest: Path) -> None:
    """pandas, pyarrow, DuckDB and Polars each read every part directory of the set (through
    `latest`) as one table of the manifest's rows."""
    duck = duckdb.connect()
    for rel, entry in tables(set_dir).items():
        path = latest / rel
        rows = entry["rows"]
        assert len(pd.read_parquet(path)) == rows, rel
        assert pq.read_table(path).num_rows == rows, rel
        assert duck.execute(f"SELECT count(*) FROM '{path}'").fetchone()[0] == rows, rel
        assert pl.read_parquet(path).height == rows, rel


def test_every_file_readable_by_pandas_pyarrow_duckdb_polars(
    conn: sqlite3.Connection, snap_dir: Path
):
    result = snap(conn, snap_dir)
    latest = snap_dir / KEY / LATEST
    duck = duckdb.connect()
    assert_every_reader_reads_every_table(result.path, latest)
    assert len(tables(result.path)["records.parquet"]["parts"]) > 1  # really several parts
    # raw is JSON text the engines can query; typed columns keep their types everywhere.
    records = latest / "records.parquet"
    status = duck.execute(
        f"SELECT json_extract_string(raw, '$.recordStatus') = recordStatus FROM '{records}'"
    ).fetchall()
    assert all(ok for (ok,) in status)
    frame = pl.read_parquet(records)
    assert frame.schema["dateModified"] == pl.Datetime("ms", "UTC")
    assert frame.schema["deleted"] == pl.Boolean
    assert duck.execute(f"SELECT typeof(visitDate) FROM '{latest / 'visits.parquet'}'").fetchone()[
        0
    ] == ("DATE")


# --------------------------------------------------------------------------------------
# Incremental sets
# --------------------------------------------------------------------------------------


def test_edits_rewrite_only_the_parts_holding_them(
    tmp_path: Path, conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    first = snap(conn, snap_dir)
    records = sorted(data.records, key=lambda r: r["recordId"])
    picked = [records[5], records[6], records[200]]  # two parts of records.parquet
    change(conn, KEY, "records", edited(picked, recordStatus="Edited"))
    second = snap(conn, snap_dir)
    assert second.rebuilt is None and second.data_version == 2

    hit = {rel: parts_holding(first.path, rel, ids) for rel, ids in by_table(picked).items()}
    assert len(hit["records.parquet"]) == 2
    for rel in tables(second.path):
        before, after = inodes(first.path, rel), inodes(second.path, rel)
        assert list(before) == list(after), rel  # same ranges
        for k, lo in enumerate(before):
            assert (before[lo] == after[lo]) == (k not in hit.get(rel, set())), (rel, k)
    assert len(second.files_written) == sum(map(len, hit.values())) == 5
    assert len(second.files_reused) == sum(len(e["parts"]) for e in tables(first.path).values()) - 5
    assert_same_tables(second.path, scratch(conn, tmp_path))
    edited_rows = pd.read_parquet(second.path / "records.parquet")
    assert (edited_rows["recordStatus"] == "Edited").sum() == 3


def test_a_few_edits_patch_their_parts_without_rereading_the_ranges(
    tmp_path: Path,
    conn: sqlite3.Connection,
    data: StudyData,
    snap_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """A part with a few changed rows is the previous part less those rows plus the
    cache's copies of them: no range is typed again from the cache, and the set equals a
    from-scratch build (an edit, a hard delete and a new row in one part)."""
    snap(conn, snap_dir)
    records = sorted(data.records, key=lambda r: r["recordId"])
    change(conn, KEY, "records", edited([records[5]], recordStatus="Edited"))
    change(conn, KEY, "records", deletes=[records[6]["recordId"]])
    change(conn, KEY, "records", [{**records[7], "recordId": records[7]["recordId"] * 1000}])
    reread: list[Any] = []
    whole = writer._SetWriter._write_range

    def spy(self: Any, table: Any, *args: Any) -> Any:
        reread.append((table.rel, args[0]))
        return whole(self, table, *args)

    monkeypatch.setattr(writer._SetWriter, "_write_range", spy)
    second = snap(conn, snap_dir)
    monkeypatch.undo()
    assert second.rebuilt is None and second.files_written
    assert reread == []
    assert_same_tables(second.path, scratch(conn, tmp_path))


def test_a_patched_part_is_written_as_one_row_group(
    tmp_path: Path, conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    """A part built from the cache gets a row group per batch (memory stays bounded); a
    patched part is in memory whole, and one row group is quicker to write."""
    first = snap(conn, snap_dir, batch_rows=8)
    built = (
        first.path / "records.parquet" / tables(first.path)["records.parquet"]["parts"][0]["file"]
    )
    assert pq.ParquetFile(built).metadata.num_row_groups == PART // 8
    records = sorted(data.records, key=lambda r: r["recordId"])
    change(conn, KEY, "records", edited([records[5]], recordStatus="Edited"))
    second = snap(conn, snap_dir, batch_rows=8)
    assert second.rebuilt is None and len(second.files_written) == 2  # records and its form
    for rel in second.files_written:
        part = pq.ParquetFile(second.path / rel).metadata
        assert part.num_row_groups == 1 and part.num_rows > 8, rel
    assert_same_tables(second.path, scratch(conn, tmp_path))


def test_a_delta_set_is_read_whole_by_every_reader(
    tmp_path: Path, conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    """What a 15-minute cycle leaves: linked parts, patched parts (one row group) and parts
    built again (a row group per batch) side by side in one directory, read as one table
    by pandas, pyarrow, DuckDB and Polars, with the edits, the delete and the new row."""
    snap(conn, snap_dir, batch_rows=8)
    records = sorted(data.records, key=lambda r: r["recordId"])
    change(conn, KEY, "records", edited([records[5], records[200]], recordStatus="Edited"))
    change(conn, KEY, "records", deletes=[records[6]["recordId"]])
    new_id = records[-1]["recordId"] + 1
    change(conn, KEY, "records", [{**records[7], "recordId": new_id}])
    second = snap(conn, snap_dir, batch_rows=8)
    assert second.rebuilt is None and second.files_written and second.files_reused
    groups = {
        rel: pq.ParquetFile(second.path / rel).metadata.num_row_groups
        for rel in second.files_written + second.files_reused
    }
    assert {groups[rel] for rel in second.files_written} == {1}
    assert max(groups[rel] for rel in second.files_reused) > 1  # really two layouts mixed
    latest = snap_dir / KEY / LATEST
    assert_every_reader_reads_every_table(second.path, latest)
    path = latest / "records.parquet"
    query = f"SELECT count(*) FROM '{path}' WHERE recordStatus = 'Edited'"
    assert duckdb.connect().execute(query).fetchone()[0] == 2
    frame = pl.read_parquet(path)
    assert frame.filter(pl.col("recordStatus") == "Edited").height == 2
    ids = frame["recordId"].to_list()
    assert ids == sorted(ids) and new_id in ids and records[6]["recordId"] not in ids
    assert_same_tables(second.path, scratch(conn, tmp_path))


def test_changed_rows_are_looked_up_by_primary_key(
    conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    """A patched part reads its changed rows by id, not by walking its id range: a form's
    range spans every form's records, each read from disk to be thrown away."""
    snap(conn, snap_dir)
    vs = sorted((r for r in data.records if r["formKey"] == "VS"), key=lambda r: r["recordId"])
    change(conn, KEY, "records", edited(vs[3:5], recordStatus="Edited"))
    lookups: list[str] = []
    conn.set_trace_callback(lambda sql: lookups.append(sql) if " IN (" in sql else None)
    try:
        snap(conn, snap_dir)
    finally:
        conn.set_trace_callback(None)
    assert any("form_key" in sql for sql in lookups)  # the VS table's part was patched
    for sql in lookups:
        plan = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "PRIMARY KEY" in plan and "record_id=?" in plan.replace(" ", ""), (sql, plan)


def test_reference_collections_cost_nothing(conn: sqlite3.Connection, snap_dir: Path):
    first = snap(conn, snap_dir)
    change(conn, KEY, "subjects", edited([orjson.loads(cache_rows(conn, "subjects")[0][1])]))
    second = snap(conn, snap_dir)
    for name in ("sites", "forms", "intervals", "variables", "users", "records"):
        assert inodes(first.path, f"{name}.parquet") == inodes(second.path, f"{name}.parquet")
    assert second.files_written == ["subjects.parquet/part-00000.parquet"]


def test_parts_are_copied_where_hard_links_fail(
    tmp_path: Path,
    conn: sqlite3.Connection,
    data: StudyData,
    snap_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    first = snap(conn, snap_dir)
    change(conn, KEY, "records", edited([data.records[0]], recordStatus="Edited"))

    def no_links(*args: Any, **kwargs: Any) -> None:
        raise OSError("hard links are not supported on this file system")

    monkeypatch.setattr(writer.os, "link", no_links)
    second = snap(conn, snap_dir)
    assert second.rebuilt is None and second.files_reused
    assert inodes(first.path, "sites.parquet") != inodes(second.path, "sites.parquet")
    assert second.bytes_written == sum(p.stat().st_size for p in second.path.rglob("part-*"))
    assert_same_tables(second.path, scratch(conn, tmp_path))


def test_a_tampered_manifest_links_nothing_from_elsewhere(
    tmp_path: Path, conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    """Part names in an older set's manifest are never followed outside that set."""
    first = snap(conn, snap_dir)
    planted = tmp_path / "planted.parquet"
    planted.write_bytes((first.path / "sites.parquet" / "part-00000.parquet").read_bytes())
    manifest = read_manifest(first.path)
    part = manifest["collections"]["sites"]["parts"][0]
    part["file"] = os.path.relpath(planted, first.path / "sites.parquet")
    (first.path / MANIFEST).write_text(json.dumps(manifest))
    change(conn, KEY, "records", edited([data.records[0]], recordStatus="Edited"))
    second = snap(conn, snap_dir)
    linked = second.path / "sites.parquet" / "part-00000.parquet"
    assert linked.stat().st_ino != planted.stat().st_ino
    assert "sites.parquet/part-00000.parquet" in second.files_written
    assert_same_tables(second.path, scratch(conn, tmp_path))


def test_deletes_and_new_rows(
    tmp_path: Path, conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    """Hard deletes, soft deletes, and new records inside an existing range, past the last
    one and far beyond it: the set equals a from-scratch build."""
    first = snap(conn, snap_dir)
    records = sorted(data.records, key=lambda r: r["recordId"])
    gone = [records[40]["recordId"], records[41]["recordId"]]
    change(conn, KEY, "records", deletes=gone)
    change(conn, KEY, "records", edited([records[100]], deleted=True))
    template = records[-1]
    new = [
        {**template, "recordId": records[40]["recordId"], "recordStatus": "Re-entered"},
        {**template, "recordId": template["recordId"] + 1, "formKey": "AE", "formId": 5},
        {**template, "recordId": template["recordId"] + 10_000_000},
    ]
    change(conn, KEY, "records", new)
    second = snap(conn, snap_dir)
    assert second.rebuilt is None
    assert second.rows["records"] == len(records) - 2 + 3
    assert_same_tables(second.path, scratch(conn, tmp_path))
    table = pq.read_table(second.path / "records.parquet")
    assert gone[1] not in table["recordId"].to_pylist()
    assert table["recordId"].to_pylist()[-1] == template["recordId"] + 10_000_000
    # untouched middle parts are shared
    shared = set(inodes(first.path, "records.parquet").items()) & set(
        inodes(second.path, "records.parquet").items()
    )
    assert shared


def test_soft_deleted_rows_stay_flagged(conn: sqlite3.Connection, data: StudyData, snap_dir: Path):
    result = snap(conn, snap_dir)
    frame = pd.read_parquet(result.path / "records.parquet")
    assert frame["deleted"].sum() == sum(r["deleted"] for r in data.records) > 0
    form = pd.read_parquet(result.path / "forms" / "VS.parquet")
    assert form["deleted"].sum() == sum(r["deleted"] for r in data.records if r["formKey"] == "VS")


def test_new_variable_rewrites_its_form_and_the_column_appears(
    tmp_path: Path, conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    first = snap(conn, snap_dir)
    template = next(v for v in data.variables if v["formKey"] == "VS")
    added = {
        **template,
        "variableId": max(v["variableId"] for v in data.variables) + 1,
        "variableName": "vsnew",
        "variableType": "INTEGER",
        "sequence": 99,
    }
    relabelled = {**next(v for v in data.variables if v["formKey"] == "AE"), "label": "New"}
    change(conn, KEY, "variables", [added, relabelled])
    second = snap(conn, snap_dir)
    vs = pq.read_table(second.path / "forms" / "VS.parquet")
    assert vs.column_names[-1] == "vsnew" and vs.schema.field("vsnew").type == pa.int64()
    assert vs["vsnew"].null_count == vs.num_rows
    assert set(inodes(first.path, "forms/VS.parquet").values()).isdisjoint(
        inodes(second.path, "forms/VS.parquet").values()
    )
    # A label is not a column: AE's table is shared, as is every other form's.
    for rel in tables(second.path):
        if rel.startswith("forms/") and rel != "forms/VS.parquet":
            assert inodes(first.path, rel) == inodes(second.path, rel), rel
    assert_same_tables(second.path, scratch(conn, tmp_path))


def test_a_set_written_with_other_parquet_settings_is_rebuilt_not_linked(
    conn: sqlite3.Connection, data: StudyData, snap_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """The upgrade path: sets written before dictionary pages were turned off must not be
    linked into new ones, or a set would mix two encodings under one signature."""
    old_settings = {**writer.PARQUET_OPTIONS, "use_dictionary": True}
    monkeypatch.setattr(writer, "PARQUET_OPTIONS", old_settings)
    snap(conn, snap_dir)
    monkeypatch.undo()
    change(conn, KEY, "records", edited(data.records[:1], recordStatus="Edited"))
    second = snap(conn, snap_dir)
    assert second.files_reused == []
    for rel in second.files_written:
        meta = pq.ParquetFile(second.path / rel).metadata
        for group in range(meta.num_row_groups):
            for column in range(meta.num_columns):
                encodings = meta.row_group(group).column(column).encodings
                assert not {"PLAIN_DICTIONARY", "RLE_DICTIONARY"} & set(encodings), (rel, encodings)


def test_a_log_that_no_longer_reaches_back_rebuilds_everything(
    tmp_path: Path, conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    snap(conn, snap_dir)
    for n in range(3):
        change(conn, KEY, "records", edited([data.records[n]], recordStatus=f"E{n}"))
    with write_transaction(conn):  # as prune_change_log does after LOG_VERSIONS_KEPT runs
        conn.execute("INSERT INTO change_log_floor VALUES (?, 3)", (KEY,))
    second = snap(conn, snap_dir)
    assert second.files_reused == []
    assert second.rebuilt == "the cache's change log no longer reaches back to version 1"
    assert_same_tables(second.path, scratch(conn, tmp_path))


def test_everything_logged_rebuilds_that_collection_only(
    conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    first = snap(conn, snap_dir)
    with write_transaction(conn):
        version = store.bump_study_version(conn, KEY)
        store.log_changes(conn, KEY, version, VARIABLES, None)
    second = snap(conn, snap_dir)
    assert {f.split("/")[0] for f in second.files_written} == {"variables.parquet"}
    assert inodes(first.path, "records.parquet") == inodes(second.path, "records.parquet")


def test_rebuilt_cache_is_not_taken_for_the_previous_one(
    tmp_path: Path, conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    """A cache deleted and synced again restarts its versions: the set built from it must
    not reuse parts of sets that showed the old cache."""
    for n in range(3):
        change(conn, KEY, "records", edited([data.records[n]], recordStatus=f"E{n}"))
    snap(conn, snap_dir)  # data version 4
    fresh = connect(tmp_path / "fresh.db")
    load_study(fresh, data, KEY)  # version 1, other content
    result = write_snapshot(fresh, KEY, snap_dir, part_rows=PART)
    assert result.files_reused == [] and "rebuilt cache" in (result.rebuilt or "")
    assert_same_tables(result.path, snap(fresh, tmp_path / "ref").path)
    fresh.close()


def test_parts_that_disagree_with_the_cache_are_rebuilt(
    tmp_path: Path, conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    """Rows that changed without a log entry (they cannot under a merge) are still
    caught when the parts no longer add up to the cache's row count."""
    snap(conn, snap_dir)
    with write_transaction(conn):
        conn.execute("DELETE FROM records WHERE record_id=?", (data.records[0]["recordId"],))
        store.bump_study_version(conn, KEY)
    result = snap(conn, snap_dir)
    assert result.rows["records"] == len(data.records) - 1
    assert_same_tables(result.path, scratch(conn, tmp_path))


def test_sparse_ids_do_not_make_small_parts(tmp_path: Path, data: StudyData):
    """Ids a million apart, then rows appended in small deltas: parts are cut by rows."""
    key, part_rows = "SPARSE", 20
    records = [
        {**r, "recordId": 1_000_000 * (n + 1)}
        for n, r in enumerate(sorted(data.records, key=lambda r: r["recordId"])[:100])
    ]
    sparse = StudyData(study=data.study, forms=data.forms, variables=data.variables)
    sparse.records = records
    conn = connect(tmp_path / "sparse.db")
    load_study(conn, sparse, key)
    snap_dir = tmp_path / "s"
    result = write_snapshot(conn, key, snap_dir, part_rows=part_rows)
    sizes = [p["rows"] for p in tables(result.path)["records.parquet"]["parts"]]
    assert sizes == [20] * 5
    next_id = records[-1]["recordId"]
    for _ in range(8):  # 8 deltas of 7 new rows, ids still a million apart
        batch = []
        for _ in range(7):
            next_id += 1_000_000
            batch.append({**records[0], "recordId": next_id})
        change(conn, key, "records", batch)
        result = write_snapshot(conn, key, snap_dir, part_rows=part_rows)
        sizes = [p["rows"] for p in tables(result.path)["records.parquet"]["parts"]]
        assert min(sizes) >= part_rows // 2 and max(sizes) <= 2 * part_rows, sizes
    assert sum(sizes) == 156 and len(sizes) >= 7
    conn.close()


def test_typed_json_and_text_in_one_column(tmp_path: Path, data: StudyData):
    """A server echoing typed JSON beside the API's text (and fields in odd forms): the
    snapshot takes the slow path where it must and types every value by the same rules."""
    key = "MIXED"
    mixed = StudyData(study=data.study, forms=data.forms, variables=data.variables)
    vs = sorted((r for r in data.records if r["formKey"] == "VS"), key=lambda r: r["recordId"])
    typed = {"vssysbp": 131, "vstemp": 36.9, "vsnd": False}
    mixed.records = [
        *({**r, "recordData": {**r["recordData"], **typed}} for r in vs[:3]),
        *vs[3:],
    ]
    odd = dict(data.subjects[0])
    odd.update(
        subjectKey=101,  # a number where text is expected
        siteId=str(odd["siteId"]),  # text where a number is expected
        dateModified="2024-07-02T12:30:26+02:00",  # ISO with a zone
        enrollmentStartDate="not a date",  # garbage
        deleted=0,
    )
    mixed.subjects = [odd, *data.subjects[1:]]
    conn = connect(tmp_path / "mixed.db")
    load_study(conn, mixed, key)
    result = write_snapshot(conn, key, tmp_path / "s")
    form = pq.read_table(result.path / "forms" / "VS.parquet").to_pylist()
    assert {k: form[0][k] for k in typed} == typed
    for row, record in zip(form[3:], vs[3:], strict=True):
        assert row["vssysbp"] == coerce(record["recordData"].get("vssysbp"), "INTEGER")
        assert row["vsnd"] == coerce(record["recordData"].get("vsnd"), "CHECKBOX")
    assert sum(r["vssysbp"] is not None for r in form) > 3
    subjects = pq.read_table(result.path / "subjects.parquet").to_pylist()
    first = subjects[0]
    assert first["subjectKey"] == "101" and first["siteId"] == data.subjects[0]["siteId"]
    assert first["dateModified"] == datetime(2024, 7, 2, 10, 30, 26, tzinfo=UTC)
    assert first["enrollmentStartDate"] is None and first["deleted"] is False
    assert json.loads(first["raw"])["subjectKey"] == 101  # raw keeps what the API sent
    others = pd.read_parquet(result.path / "subjects.parquet").iloc[1:]
    assert list(others["subjectKey"]) == [s["subjectKey"] for s in data.subjects[1:]]
    conn.close()


# --------------------------------------------------------------------------------------
# Retention and paths
# --------------------------------------------------------------------------------------


def test_retention_keeps_newest_sets(conn: sqlite3.Connection, data: StudyData, snap_dir: Path):
    results = []
    for n in range(4):
        change(conn, KEY, "records", edited([data.records[n]], recordStatus=f"R{n}"))
        results.append(snap(conn, snap_dir, retention=2))
    names = [r.name for r in results]
    assert len(set(names)) == 4 and sorted(names, key=paths.set_key) == names
    study_dir = snap_dir / KEY
    assert [p.name for p in complete_sets(study_dir)] == names[-2:]
    assert os.readlink(study_dir / LATEST) == names[-1]
    assert results[2].removed == [names[0]] and results[3].removed == [names[1]]
    # Parts first written to deleted sets live on through their hard links.
    assert_same_tables(study_dir / LATEST, results[-1].path)
    for rel, entry in tables(study_dir / LATEST).items():
        assert pq.read_table(study_dir / LATEST / rel).num_rows == entry["rows"]


def test_retention_never_deletes_the_latest_target(conn: sqlite3.Connection, snap_dir: Path):
    old, new = (snap(conn, snap_dir) for _ in range(2))
    study_dir = snap_dir / KEY
    tmp = study_dir / ".latest-tmp-test"
    os.symlink(old.name, tmp)
    os.replace(tmp, study_dir / LATEST)  # as if `new` never went live
    assert paths.apply_retention(study_dir, 1) == []
    assert {p.name for p in complete_sets(study_dir)} == {old.name, new.name}


@pytest.mark.parametrize(
    "key", ["../evil", "a/b", "..", ".", "/abs/path", "x/../../y", ".hidden", "", "A\\B", "é~1"]
)
def test_hostile_study_keys_stay_inside(tmp_path: Path, key: str):
    root = tmp_path / "root"
    snap_dir = root / "snapshots"
    conn = connect(root / "cache.db")
    result = write_snapshot(conn, key, snap_dir)
    conn.close()
    assert result.path.parent.parent == snap_dir.resolve()
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(root.resolve())
    created = [p for p in root.rglob("*") if not p.is_relative_to(snap_dir)]
    assert {p.name for p in created} <= {"cache.db", "cache.db-wal", "cache.db-shm", "snapshots"}
    assert latest_snapshot(snap_dir, key) == result.path.resolve()


def test_hostile_form_keys_stay_inside(tmp_path: Path, data: StudyData):
    key = "FORMS"
    hostile = StudyData(study=data.study, variables=[])
    hostile.forms = [
        {**data.forms[0], "formId": n, "formKey": k}
        for n, k in enumerate(["../../escape", "a/b", "..", "VS"])
    ]
    conn = connect(tmp_path / "c.db")
    load_study(conn, hostile, key)
    result = write_snapshot(conn, key, tmp_path / "s")
    conn.close()
    assert set(result.form_rows) == {"../../escape", "a/b", "..", "VS"}
    assert all(p.resolve().is_relative_to(result.path) for p in result.path.rglob("*"))
    assert not (tmp_path / "escape").exists()
    assert (result.path / "forms" / f"{safe_name('a/b')}.parquet").is_dir()


def test_distinct_keys_get_distinct_dirs():
    keys = ["a/b", "a_b", "a:b", "a_b~" + safe_name("a/b").split("~")[1], "A_B", "..", "_", ""]
    names = [safe_name(k) for k in keys]
    assert len(set(names)) == len(keys)
    assert safe_name("PHX-101") == "PHX-101"  # ordinary keys stay readable
    assert all("/" not in n and not n.startswith(".") for n in names)


def test_resolved_path_check_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Even if sanitising were wrong, nothing is written outside snapshot_dir."""
    monkeypatch.setattr(paths, "safe_name", lambda key: key)
    conn = connect(tmp_path / "cache.db")
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

CRASH_POINTS = ["snapshot.mid-form", "snapshot.before-rename", "snapshot.before-latest"]


class SimulatedCrash(Exception):
    pass


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_leaves_previous_latest(
    conn: sqlite3.Connection,
    data: StudyData,
    snap_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    point: str,
):
    first = snap(conn, snap_dir)
    study_dir = snap_dir / KEY
    vs = next(r for r in data.records if r["formKey"] == "VS")
    change(conn, KEY, "records", edited([vs], recordStatus="Edited"))
    reached: list[str] = []

    def crash(name: str) -> None:
        reached.append(name)
        if name == point:
            raise SimulatedCrash(name)

    monkeypatch.setattr(writer, "crash_point", crash)
    with pytest.raises(SimulatedCrash):
        snap(conn, snap_dir)
    assert reached[-1] == point
    assert not conn.in_transaction  # the read transaction was released
    assert os.readlink(study_dir / LATEST) == first.name
    latest = pd.read_parquet(study_dir / LATEST / "records.parquet")
    assert "Edited" not in set(latest["recordStatus"])
    if point == "snapshot.before-latest":
        assert len(complete_sets(study_dir)) == 2  # complete, just not live yet
    else:
        assert any(p.name.startswith(".tmp-") for p in study_dir.iterdir())

    monkeypatch.setattr(writer, "crash_point", lambda name: None)
    assert not snapshot_is_current(conn, snap_dir, KEY)
    after = snap(conn, snap_dir)
    assert os.readlink(study_dir / LATEST) == after.name
    assert not [p for p in study_dir.iterdir() if p.name.startswith(".")]
    latest = pd.read_parquet(study_dir / LATEST / "records.parquet")
    assert (latest["recordStatus"] == "Edited").sum() == 1
    assert snapshot_is_current(conn, snap_dir, KEY)


_CRASH_SCRIPT = textwrap.dedent(
    """
    import sys
    from imednet_flows.cache.db import connect
    from imednet_flows.cache.snapshots import write_snapshot
    conn = connect(sys.argv[1])
    write_snapshot(conn, sys.argv[2], sys.argv[3], part_rows=int(sys.argv[4]))
    """
)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_killed_writer_leaves_previous_latest(
    tmp_path: Path, conn: sqlite3.Connection, data: StudyData, snap_dir: Path, point: str
):
    """The real thing: a process SIGKILLed at each crash point (`IMEDNET_FLOWS_CRASH_AT`)."""
    first = snap(conn, snap_dir)
    vs = next(r for r in data.records if r["formKey"] == "VS")
    change(conn, KEY, "records", edited([vs], recordStatus="Edited"))
    marker = tmp_path / "marker"
    env = {**os.environ, "IMEDNET_FLOWS_CRASH_AT": point, "IMEDNET_FLOWS_CRASH_MARKER": str(marker)}
    args = [tmp_path / "cache.db", KEY, snap_dir, PART]
    killed = subprocess.run(
        [sys.executable, "-c", _CRASH_SCRIPT, *map(str, args)],
        env=env,
        timeout=120,
        capture_output=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert marker.read_text() == point
    study_dir = snap_dir / KEY
    assert os.readlink(study_dir / LATEST) == first.name
    assert latest_snapshot(snap_dir, KEY) == first.path.resolve()
    assert (first.path / MANIFEST).is_file()
    after = snap(conn, snap_dir)  # the next run cleans up and publishes
    assert os.readlink(study_dir / LATEST) == after.name
    assert not [p for p in study_dir.iterdir() if p.name.startswith(".")]
    assert after.rebuilt is None and after.files_reused


# --------------------------------------------------------------------------------------
# Consistency and memory
# --------------------------------------------------------------------------------------


def test_refuses_connection_inside_transaction(conn: sqlite3.Connection, snap_dir: Path):
    conn.execute("BEGIN")
    with pytest.raises(RuntimeError, match="outside any transaction"):
        snap(conn, snap_dir)
    conn.execute("ROLLBACK")


def test_set_is_consistent_while_a_writer_holds_uncommitted_changes(
    tmp_path: Path, conn: sqlite3.Connection, data: StudyData, snap_dir: Path
):
    other = connect(tmp_path / "cache.db")
    other.execute("BEGIN IMMEDIATE")
    other.execute("DELETE FROM records WHERE study_key=?", (KEY,))
    other.execute("UPDATE subjects SET raw=json_set(raw, '$.subjectStatus', 'Gone')")
    try:
        result = snap(conn, snap_dir)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert result.rows["records"] == sum(result.form_rows.values()) == len(data.records)
    assert "Gone" not in set(pd.read_parquet(result.path / "subjects.parquet")["subjectStatus"])


def test_commit_during_a_snapshot_is_not_half_seen(
    tmp_path: Path,
    conn: sqlite3.Connection,
    data: StudyData,
    snap_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """Another connection commits after the first form part is written: the whole set
    still shows the state from before that commit."""
    other = connect(tmp_path / "cache.db")

    def commit_now(name: str) -> None:
        if name == "snapshot.mid-form":
            with write_transaction(other):
                other.execute("DELETE FROM records WHERE study_key=?", (KEY,))
                other.execute("DELETE FROM subjects WHERE study_key=?", (KEY,))

    monkeypatch.setattr(writer, "crash_point", commit_now)
    result = snap(conn, snap_dir)
    other.close()
    assert result.rows["subjects"] == len(data.subjects)
    assert sum(result.form_rows.values()) == result.rows["records"] == len(data.records)
    assert conn.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0  # it did commit


def test_streams_in_batches(conn: sqlite3.Connection, snap_dir: Path):
    result = snap(conn, snap_dir, batch_rows=10)
    for path in result.path.rglob("part-*.parquet"):
        meta = pq.ParquetFile(path).metadata
        assert all(meta.row_group(i).num_rows <= 10 for i in range(meta.num_row_groups)), path
    records = tables(result.path)["records.parquet"]["parts"][0]
    groups = pq.ParquetFile(result.path / "records.parquet" / records["file"]).metadata
    assert groups.num_row_groups == -(-records["rows"] // 10)


def test_any_row_factory_on_the_callers_connection(conn: sqlite3.Connection, snap_dir: Path):
    conn.row_factory = lambda cur, row: dict(zip([d[0] for d in cur.description], row, strict=True))
    result = snap(conn, snap_dir)
    assert pq.read_table(result.path / "subjects.parquet").num_rows == result.rows["subjects"] > 0


def test_memory_stays_bounded_for_a_large_study(
    tmp_path: Path, snap_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """20k records: neither Python objects nor Arrow buffers ever hold a large share of
    the study at once (batches stream through one ParquetWriter per part)."""
    key = "BIG"
    big = generate_study(StudySpec.for_records(20_000, study_key=key, study_id=4, seed=9))
    conn = connect(tmp_path / "big.db")
    load_study(conn, big, key)
    records = len(big.records)
    del big
    gc.collect()
    raw_bytes = conn.execute("SELECT SUM(LENGTH(raw)) FROM records").fetchone()[0]
    arrow_peak = [0]

    def sampled(function: Any) -> Any:
        def measured(*args: Any) -> pa.Table:
            out = function(*args)
            arrow_peak[0] = max(arrow_peak[0], pa.total_allocated_bytes())
            return out

        return measured

    monkeypatch.setattr(arrow, "rows_table", sampled(arrow.rows_table))
    monkeypatch.setattr(arrow, "form_table", sampled(arrow.form_table))
    baseline = pa.total_allocated_bytes()
    tracemalloc.start()
    try:
        result = write_snapshot(conn, key, snap_dir, batch_rows=500)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        conn.close()
    assert result.rows["records"] == records >= 20_000
    assert peak < raw_bytes / 4, (peak, raw_bytes)
    assert arrow_peak[0] - baseline < raw_bytes / 4, (arrow_peak[0], raw_bytes)


def test_a_failed_part_write_fails_the_set_and_keeps_latest(
    conn: sqlite3.Connection, data: StudyData, snap_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """Parts are encoded in a thread of their own: a write that fails there (a full disk)
    still fails the set, publishes nothing and leaves no writing thread behind."""
    first = snap(conn, snap_dir)
    change(conn, KEY, "records", edited(data.records[:40], recordStatus="Edited"))
    real = PartFile.write
    calls = [0]

    def failing(self: PartFile, table: pa.Table, row_group_size: int) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise OSError(28, "No space left on device")
        real(self, table, row_group_size)

    monkeypatch.setattr(PartFile, "write", failing)
    with pytest.raises(OSError, match="No space left"):
        snap(conn, snap_dir)
    assert calls[0] >= 3
    assert not conn.in_transaction
    assert not [t for t in threading.enumerate() if t.name.startswith("snapshot-write")]
    assert os.readlink(snap_dir / KEY / LATEST) == first.name

    monkeypatch.setattr(PartFile, "write", real)
    after = snap(conn, snap_dir)
    latest = pd.read_parquet(snap_dir / KEY / LATEST / "records.parquet")
    assert (latest["recordStatus"] == "Edited").sum() == 40
    assert after.bytes_written == sum(
        (after.path / rel).stat().st_size for rel in after.files_written
    )


def test_background_writes_keep_order_and_bound_the_queue():
    started: list[int] = []
    gate = threading.Event()
    sink = BackgroundWriter(max_pending=2)
    try:
        sink.submit(lambda: (started.append(0), gate.wait(5)))
        sink.submit(started.append, 1)
        blocked = threading.Thread(target=sink.submit, args=(started.append, 2))
        blocked.start()
        blocked.join(0.2)
        assert blocked.is_alive()  # a third write waits for the first to finish
        gate.set()
        blocked.join(5)
        sink.wait()
        assert started == [0, 1, 2]

        def boom() -> None:
            raise OSError("disk gone")

        sink.submit(boom)
        with pytest.raises(OSError, match="disk gone"):
            sink.wait()
    finally:
        sink.close()


def test_form_keys_are_every_listed_form_and_every_form_a_record_names(tmp_path: Path):
    """The forms a snapshot has tables for, found one index lookup per form: the same as
    SELECT DISTINCT, NULL form keys and other studies' forms left out."""
    conn = connect(tmp_path / "forms.db")
    rows = [
        ("S", 1, "VS"),
        ("S", 2, None),
        ("S", 3, "AE"),
        ("S", 4, "VS"),
        ("S", 5, ""),
        ("T", 6, "ZZ"),
        ("S", 7, "10"),
        ("S", 8, "9"),
    ]
    with write_transaction(conn):
        conn.executemany(
            "INSERT INTO records (study_key, record_id, form_key, deleted, raw)"
            " VALUES (?, ?, ?, 0, '{}')",
            rows,
        )
        conn.execute(
            "INSERT INTO forms (study_key, form_id, form_key, raw) VALUES ('S', 1, 'DM', '{}')"
        )
    distinct = {
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT form_key FROM records WHERE study_key='S' AND form_key IS NOT NULL"
        )
    }
    assert writer._form_keys(conn, "S") == sorted(distinct | {"DM"})
    assert writer._form_keys(conn, "S") == ["", "10", "9", "AE", "DM", "VS"]
    assert writer._form_keys(conn, "NONE") == []
