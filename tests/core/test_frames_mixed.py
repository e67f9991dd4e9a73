"""Typed tables from whatever a server sends: the API's strings, typed JSON echoed back,
or both mixed within one column (seeded strings beside values a client posted typed)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imednet_flows.frames import records_table, typed_column
from imednet_flows.values import as_text
from tests.core.test_frames import VARIABLES, _record

#: (variableType, values as a server may send them, the typed column expected)
MIXED = [
    (
        "INTEGER",
        [1980, "1983", 12.0, "12.0", " 7 ", None, "", True, "x", 12.5, "0x10", "1e30", 1e30],
        [1980, 1983, 12, 12, 7, None, None, None, None, None, None, None, None],
    ),
    (
        "NUMBER",
        [36.9, "36.9", 70, "70.0", "-0.25", None, "", False, "warm"],
        [36.9, 36.9, 70.0, 70.0, -0.25, None, None, None, None],
    ),
    (
        "CHECKBOX",
        [True, "true", False, "false", 1, 0, 1.0, "TRUE", None, "", 2, "maybe"],
        [True, True, False, False, True, False, True, True, None, None, None, None],
    ),
    (
        "DATE",
        [
            "2025-01-02",
            date(2025, 1, 3),
            "2025-01-04 10:00:00",
            None,
            "",
            20250105,
            "05/01/2025",
            "2025-02-30",
        ],
        [date(2025, 1, 2), date(2025, 1, 3), date(2025, 1, 4), None, None, None, None, None],
    ),
    (
        "TEXT",
        ["Headache", 12, 1.5, True, False, None, "", "  kept "],
        ["Headache", "12", "1.5", "true", "false", None, None, "  kept "],
    ),
    ("RADIO", [2, "2", "A"], ["2", "2", "A"]),
]


@pytest.mark.parametrize(("kind", "values", "expected"), MIXED, ids=[m[0] for m in MIXED])
def test_typed_column_takes_mixed_values(kind: str, values: list[Any], expected: list[Any]) -> None:
    column = typed_column(values, kind)
    assert column.to_pylist() == expected
    assert [type(v) for v in column.to_pylist()] == [type(v) for v in expected]


@pytest.mark.parametrize(("kind", "values", "expected"), MIXED, ids=[m[0] for m in MIXED])
def test_strings_alone_give_the_same_values(
    kind: str, values: list[Any], expected: list[Any]
) -> None:
    """A column of strings only takes Arrow's one-call cast where it can; the values
    must be the ones the value-by-value path gives them in a mixed column."""
    pairs = [(v, e) for v, e in zip(values, expected, strict=True) if isinstance(v, str)]
    assert typed_column([v for v, _ in pairs], kind).to_pylist() == [e for _, e in pairs]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, None),
        ("", ""),
        ("1983", "1983"),
        (1983, "1983"),
        (36.9, "36.9"),
        (True, "true"),
        (False, "false"),
        ([1, "a"], '[1,"a"]'),
        ({"a": 1}, '{"a":1}'),
    ],
)
def test_as_text(value: Any, text: str | None) -> None:
    assert as_text(value) == text


def test_records_table_with_a_mixed_column_per_type(tmp_path: Path) -> None:
    records = [
        _record(1, "AE", {"aeterm": "Headache", "aeser": "true", "siteId": "44"}),
        _record(2, "AE", {"aeterm": 12, "aeser": True, "siteId": 45}),
        _record(3, "VS", {"vsdt": "2024-03-05", "weight": "71.5", "pulse": "60"}),
        _record(4, "VS", {"vsdt": "2024-03-06", "weight": 72, "pulse": 61.0}),
        _record(5, "VS", {"vsdt": None, "weight": False, "pulse": ""}),
    ]
    table = records_table(records, VARIABLES)
    types = {f.name: f.type for f in table.schema}
    assert [types[n] for n in ("aeterm", "aeser", "var_siteId", "vsdt", "weight", "pulse")] == [
        pa.string(),
        pa.bool_(),
        pa.int64(),
        pa.date32(),
        pa.float64(),
        pa.int64(),
    ]
    rows = {r["recordId"]: r for r in table.to_pylist()}
    assert (rows[1]["aeterm"], rows[1]["aeser"], rows[1]["var_siteId"]) == ("Headache", True, 44)
    assert (rows[2]["aeterm"], rows[2]["aeser"], rows[2]["var_siteId"]) == ("12", True, 45)
    assert (rows[3]["weight"], rows[3]["pulse"]) == (71.5, 60)
    assert (rows[4]["vsdt"], rows[4]["weight"], rows[4]["pulse"]) == (date(2024, 3, 6), 72.0, 61)
    assert (rows[5]["vsdt"], rows[5]["weight"], rows[5]["pulse"]) == (None, None, None)
    pq.write_table(table, tmp_path / "mixed.parquet")
    assert pq.read_table(tmp_path / "mixed.parquet").to_pylist() == table.to_pylist()


def test_records_table_types_metadata_sent_in_other_forms() -> None:
    """Metadata fields follow the same rules as variables: an id sent as text, a flag as
    0/1, a timestamp with a zone or in garbage; a table is still made, typed."""
    odd = _record(
        7,
        "AE",
        {},
        recordId="7",
        siteId=3.0,
        subjectKey=301,
        deleted=1,
        dateCreated="2024-03-01T10:00:00+02:00",
        dateModified="yesterday",
    )
    rows = records_table([_record(6, "AE", {}), odd], VARIABLES, ["AE"]).to_pylist()
    assert (rows[1]["recordId"], rows[1]["siteId"], rows[1]["subjectKey"]) == (7, 3, "301")
    assert rows[1]["deleted"] is True
    assert rows[1]["dateCreated"] == datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    assert rows[1]["dateModified"] is None
    assert rows[0]["dateModified"] == datetime(2024, 3, 2, 11, 30, 15, tzinfo=UTC)
