"""The records table: column order, types and values, as users read them.

Pure functions, tested directly; expected values are written out by hand, never computed
by the code under test.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa

from imednet_flows.frames import RECORD_COLUMNS, records_table

# -------------------------------------------------------------------------- frames.records_table


def _variable(form_id: int, form_key: str, seq: int, vid: int, name: str, vtype: str) -> dict:
    return {
        "formId": form_id,
        "formKey": form_key,
        "sequence": seq,
        "variableId": vid,
        "variableName": name,
        "variableType": vtype,
        "deleted": False,
    }


VARIABLES = [
    # listed out of order on purpose: columns follow (formId, sequence, variableId)
    _variable(2, "VS", 2, 21, "weight", "NUMBER"),
    _variable(1, "AE", 1, 11, "aeterm", "TEXT"),
    _variable(2, "VS", 1, 20, "vsdt", "DATE"),
    _variable(1, "AE", 2, 12, "aeser", "CHECKBOX"),
    _variable(1, "AE", 3, 13, "siteId", "INTEGER"),  # collides with a metadata column
    _variable(2, "VS", 3, 22, "aeterm", "MEMO"),  # same name again: first one wins
    _variable(2, "VS", 4, 23, "pulse", "INTEGER"),
    {**_variable(1, "AE", 4, 14, "retired", "TEXT"), "deleted": True},
]


def _record(rid: int, form_key: str, data: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "recordId": rid,
        "recordOid": f"REC-{rid}",
        "formId": 1 if form_key == "AE" else 2,
        "formKey": form_key,
        "siteId": 3,
        "subjectId": 100,
        "subjectKey": "03-001",
        "intervalId": 5,
        "visitId": 50 + rid,
        "recordStatus": "Record Complete",
        "recordType": "SUBJECT",
        "deleted": False,
        "dateCreated": "2024-03-01 10:00:00",
        "dateModified": "2024-03-02 11:30:15",
        "recordData": data,
        **meta,
    }


RECORDS = [
    _record(1, "AE", {"aeterm": "Headache", "aeser": "true", "siteId": "44", "retired": "x"}),
    _record(2, "VS", {"vsdt": "2024-03-05", "weight": "71.5", "pulse": "sixty"}),
    _record(3, "AE", {"aeterm": "", "aeser": "no"}, dateModified="", deleted=True),
]

META_NAMES = [name for name, _ in RECORD_COLUMNS]


def test_records_table_column_order_and_types() -> None:
    table = records_table(RECORDS, VARIABLES)
    assert table.column_names == [
        *META_NAMES,
        "aeterm",
        "aeser",
        "var_siteId",
        "vsdt",
        "weight",
        "pulse",
    ]
    types = {f.name: f.type for f in table.schema}
    assert types["recordId"] == pa.int64()
    assert types["deleted"] == pa.bool_()
    assert types["dateModified"] == pa.timestamp("s", tz="UTC")
    assert types["aeterm"] == pa.string()  # TEXT from form AE, not MEMO from VS
    assert types["aeser"] == pa.bool_()
    assert types["var_siteId"] == pa.int64()
    assert types["vsdt"] == pa.date32()
    assert types["weight"] == pa.float64()
    assert types["pulse"] == pa.int64()


def test_records_table_values() -> None:
    rows = records_table(RECORDS, VARIABLES).to_pylist()
    assert [r["recordId"] for r in rows] == [1, 2, 3]
    first, second, third = rows
    assert first["siteId"] == 3  # metadata column: from the record
    assert first["var_siteId"] == 44  # the variable: from recordData
    assert first["aeterm"] == "Headache"
    assert first["aeser"] is True
    assert first["weight"] is None  # another form's variable: null, not absent
    assert first["dateCreated"] == datetime(2024, 3, 1, 10, 0, 0, tzinfo=UTC)
    assert "retired" not in first  # a deleted variable has no column
    assert second["vsdt"] == date(2024, 3, 5)
    assert second["weight"] == 71.5
    assert second["pulse"] is None  # garbage in an INTEGER field
    assert second["var_siteId"] is None
    assert third["aeterm"] is None  # blank
    assert third["aeser"] is False
    assert third["dateModified"] is None
    assert third["deleted"] is True


def test_records_table_restricted_to_form_keys() -> None:
    table = records_table([RECORDS[1]], VARIABLES, ["VS"])
    assert table.column_names == [*META_NAMES, "vsdt", "weight", "aeterm", "pulse"]
    assert table.schema.field("aeterm").type == pa.string()  # MEMO: text as well
    assert table.to_pylist()[0]["aeterm"] is None


def test_records_table_empty_keeps_the_schema() -> None:
    table = records_table([], VARIABLES, ["AE"])
    assert table.num_rows == 0
    assert table.column_names == [*META_NAMES, "aeterm", "aeser", "var_siteId"]
