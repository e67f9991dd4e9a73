"""Typed Arrow tables from cached rows' raw JSON: the bulk path (Arrow's JSON reader) and
the per-row path give the same tables, and nothing a server sends makes either fail."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pyarrow as pa
import pytest

from imednet_flows.cache import arrow
from imednet_flows.cache.collections import BY_NAME, COLLECTIONS, SUBJECTS, VISITS
from imednet_flows.emulator.seed import StudyData, StudySpec, generate_study
from imednet_flows.frames import records_table
from tests.cache_helpers import items_of


@pytest.fixture(scope="module")
def data() -> StudyData:
    return generate_study(StudySpec(study_key="ARROW", study_id=7, seed=8, subjects=15))


def dumps(items: list[dict[str, Any]]) -> list[str]:
    return [orjson.dumps(item).decode() for item in items]


@pytest.fixture
def slow_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Arrow's reader refuses everything: every table takes the per-row path."""
    monkeypatch.setattr(arrow, "_read_json", lambda raws, schema: None)


def tables_both_ways(monkeypatch: pytest.MonkeyPatch, build: Any) -> tuple[pa.Table, pa.Table]:
    calls: list[bool] = []
    read = arrow._read_json

    def spy(raws: Any, schema: Any) -> Any:
        out = read(raws, schema)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(arrow, "_read_json", spy)
    fast = build()
    assert calls and all(calls), "the bulk path was not taken"
    monkeypatch.setattr(arrow, "_read_json", lambda raws, schema: None)
    slow = build()
    monkeypatch.setattr(arrow, "_read_json", read)
    return fast, slow


@pytest.mark.parametrize("spec", COLLECTIONS, ids=[c.name for c in COLLECTIONS])
def test_bulk_and_per_row_paths_agree(
    data: StudyData, spec: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    raws = dumps(items_of(data, spec.name))
    fast, slow = tables_both_ways(monkeypatch, lambda: arrow.collection_table(spec, raws))
    assert fast.schema == slow.schema == arrow.collection_schema(spec)
    assert fast.equals(slow)
    assert fast.num_rows == len(raws) and fast["raw"].to_pylist() == raws


def test_form_tables_agree_with_records_table(
    data: StudyData, monkeypatch: pytest.MonkeyPatch
) -> None:
    for form in data.forms:
        records = [r for r in data.records if r["formKey"] == form["formKey"]]
        if not records:
            continue
        raws = dumps(records)
        fast, slow = tables_both_ways(
            monkeypatch,
            lambda raws=raws, k=form["formKey"]: arrow.form_table(raws, data.variables, k),
        )
        reference = records_table(records, data.variables, [form["formKey"]])
        assert fast.equals(reference) and slow.equals(reference), form["formKey"]


def test_rows_no_reader_can_parse_type_as_null(slow_only: None) -> None:
    raws = [
        '{"siteId": 1, "siteName": "A", "dateCreated": "2024-01-01 00:00:00"}',
        "not json at all",
        "[1, 2]",
        '{"siteId": "2", "siteName": 3, "dateCreated": "2024-01-02T01:00:00Z"}',
    ]
    table = arrow.collection_table(BY_NAME["sites"], raws).to_pylist()
    assert [r["siteId"] for r in table] == [1, None, None, 2]
    assert [r["siteName"] for r in table] == ["A", None, None, "3"]
    assert table[3]["dateCreated"] == datetime(2024, 1, 2, 1, tzinfo=UTC)
    assert [r["raw"] for r in table] == raws


def test_what_the_bulk_path_refuses_falls_back_per_row() -> None:
    """A pretty-printed row (newlines), a number where text belongs, typed JSON beside
    text, timestamps in several forms, blank dates: one table, typed by the same rules."""
    pretty = orjson.dumps({"subjectId": 1, "subjectKey": "01-001"}, option=orjson.OPT_INDENT_2)
    subjects = arrow.collection_table(
        SUBJECTS,
        [
            pretty.decode(),
            '{"subjectId": 2, "subjectKey": 2, "deleted": 1}',
            '{"subjectId": "3", "deleted": "true", "dateModified": "2024-05-01T10:00:00+02:00"}',
        ],
    ).to_pylist()
    assert [s["subjectId"] for s in subjects] == [1, 2, 3]
    assert [s["subjectKey"] for s in subjects] == ["01-001", "2", None]
    assert [s["deleted"] for s in subjects] == [None, True, True]
    assert subjects[2]["dateModified"] == datetime(2024, 5, 1, 8, tzinfo=UTC)
    visits = arrow.collection_table(
        VISITS,
        [
            '{"visitId": 1, "visitDate": "2024-03-01", "dueDate": "", '
            '"dateCreated": "2024-03-01 10:00:00"}',
            '{"visitId": 2, "visitDate": "2024-3-1", "dueDate": null, '
            '"dateCreated": "2024-3-1 1:2:3"}',
        ],
    ).to_pylist()
    assert [v["visitDate"] for v in visits] == [date(2024, 3, 1), None]
    assert [v["dueDate"] for v in visits] == [None, None]
    assert visits[0]["dateCreated"] == datetime(2024, 3, 1, 10, tzinfo=UTC)
    assert visits[1]["dateCreated"] is None  # not a form the API sends; never guessed


def test_typed_json_beside_text_in_a_form(data: StudyData) -> None:
    records = [r for r in data.records if r["formKey"] == "VS"][:4]
    typed = [
        {**records[0], "recordData": {**records[0]["recordData"], "vssysbp": 131, "vsnd": True}},
        {**records[1], "recordData": "not an object"},
        *records[2:],
    ]
    table = arrow.form_table(dumps(typed), data.variables, "VS")
    rows = table.to_pylist()
    assert (rows[0]["vssysbp"], rows[0]["vsnd"]) == (131, True)
    assert all(rows[1][name] is None for name in ("vssysbp", "vstemp", "vsnd"))
    assert table.schema == arrow.form_schema(data.variables, "VS")
    expected = records_table(
        [typed[0], {**typed[1], "recordData": {}}, *typed[2:]], data.variables, ["VS"]
    )
    assert table.equals(expected)


def test_a_row_longer_than_a_reader_block(data: StudyData) -> None:
    long = {**data.sites[0], "siteName": "x" * (3 << 20)}
    table = arrow.collection_table(BY_NAME["sites"], dumps([data.sites[1], long]))
    assert table["siteName"].to_pylist()[1] == long["siteName"]


def test_empty_inputs_keep_the_schema(data: StudyData) -> None:
    for spec in COLLECTIONS:
        assert arrow.collection_table(spec, []).schema == arrow.collection_schema(spec)
    assert arrow.form_table([], data.variables, "VS").schema == arrow.form_schema(
        data.variables, "VS"
    )


def test_the_system_allocator_is_arrows_default_only_while_a_block_runs() -> None:
    """Two snapshots overlapping in threads: the pool that was the default before comes back
    when the last one ends, not when the first does; buffers made inside stay usable."""
    before = pa.default_memory_pool()
    assert before.backend_name != "system", "the test needs another default pool"
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, str] = {}

    def first() -> None:
        with arrow.system_allocator():
            first_in.set()
            second_in.wait(5)
            seen["first"] = pa.default_memory_pool().backend_name
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with arrow.system_allocator():
            second_in.set()
            first_out.wait(5)
            seen["second, after the first ended"] = pa.default_memory_pool().backend_name
            kept = pa.array(["kept"] * 1000)
        seen["after both"] = pa.default_memory_pool().backend_name
        seen["kept"] = kept[999].as_py()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {
        "first": "system",
        "second, after the first ended": "system",
        "after both": before.backend_name,
        "kept": "kept",
    }
    assert pa.default_memory_pool().backend_name == before.backend_name
