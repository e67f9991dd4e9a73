"""Records as tables: metadata columns plus one typed column per variable."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from imednet_flows.values import (
    TIMESTAMP,
    arrow_type,
    as_text_array,
    blank_to_null,
    cast_text,
    coerce,
    field_column,
)

Row = dict[str, Any]

RECORD_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("recordId", pa.int64()),
    ("recordOid", pa.string()),
    ("formId", pa.int64()),
    ("formKey", pa.string()),
    ("siteId", pa.int64()),
    ("subjectId", pa.int64()),
    ("subjectKey", pa.string()),
    ("intervalId", pa.int64()),
    ("visitId", pa.int64()),
    ("recordStatus", pa.string()),
    ("recordType", pa.string()),
    ("deleted", pa.bool_()),
    ("dateCreated", TIMESTAMP),
    ("dateModified", TIMESTAMP),
]
_META = {name for name, _ in RECORD_COLUMNS}


def variable_columns(
    variables: Iterable[Row], form_keys: Iterable[str] | None = None
) -> list[tuple[str, str]]:
    """(column name, variableType) in form then sequence order, one per variable name.

    A variable whose name collides with a metadata column gets a `var_` prefix.
    """
    wanted = None if form_keys is None else set(form_keys)
    ordered = sorted(
        (
            v
            for v in variables
            if not v.get("deleted") and (wanted is None or v.get("formKey") in wanted)
        ),
        key=lambda v: (v.get("formId") or 0, v.get("sequence") or 0, v.get("variableId") or 0),
    )
    seen: dict[str, str] = {}
    for v in ordered:
        name = v["variableName"]
        if name not in seen:
            seen[name] = v.get("variableType") or "TEXT"
    return [(f"var_{n}" if n in _META else n, t) for n, t in seen.items()]


def records_table(
    records: list[Row], variables: Iterable[Row], form_keys: Iterable[str] | None = None
) -> pa.Table:
    """One row per record; variables of forms in `form_keys` (all when None) as typed columns.

    Only the values a record actually has are touched (a study's forms share few variables,
    so most cells of the union are empty): columns start as None, are filled per key, and
    are then cast column by column.
    """
    columns = variable_columns(variables, form_keys)
    arrays: dict[str, Any] = {}
    for name, kind in RECORD_COLUMNS:
        arrays[name] = field_column([record.get(name) for record in records], kind)
    by_key: dict[str, tuple[str, list[Any]]] = {}
    for name, vtype in columns:
        key = name[4:] if name.startswith("var_") and name[4:] in _META else name
        arrays[name] = [None] * len(records)
        by_key[key] = (vtype, arrays[name])
    for index, record in enumerate(records):
        for key, value in (record.get("recordData") or {}).items():
            target = by_key.get(key)
            if target is not None and value is not None and value != "":
                target[1][index] = value
    for name, vtype in columns:
        arrays[name] = typed_column(arrays[name], vtype)
    fields = [pa.field(n, t) for n, t in RECORD_COLUMNS] + [
        pa.field(n, arrow_type(t)) for n, t in columns
    ]
    return pa.Table.from_pydict(arrays, schema=pa.schema(fields))


def typed_column(values: list[Any] | pa.Array, variable_type: str) -> pa.Array:
    """A variable's values cast by Arrow in one call where they are all text of a form
    whose cast agrees with `coerce`; a column holding anything else (typed JSON echoed
    back, '12.0', stray text, or strings and typed JSON mixed) goes value by value through
    `coerce`, which turns what does not fit into None. Either way a blank is None, so the
    path taken never shows in the result."""
    kind = arrow_type(variable_type)
    text = as_text_array(values)
    if text is not None:
        cast = cast_text(blank_to_null(text.cast(pa.string())), variable_type)
        if cast is not None:
            return cast
    python = values.to_pylist() if isinstance(values, pa.Array) else values
    return pa.array([coerce(v, variable_type) for v in python], kind)
