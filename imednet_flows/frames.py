"""Records as tables: metadata columns plus one typed column per variable."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from imednet_flows.values import arrow_type, coerce

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
    ("dateCreated", pa.timestamp("s", tz="UTC")),
    ("dateModified", pa.timestamp("s", tz="UTC")),
]
_META = {name for name, _ in RECORD_COLUMNS}


def parse_ts(value: Any) -> datetime | None:
    """The API's 'YYYY-MM-DD HH:MM:SS' (UTC) as an aware datetime; blanks are None."""
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


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


def _timestamps(values: list[Any]) -> pa.Array:
    """The API's canonical stamps parse in Arrow at C speed; anything else goes one by one."""
    stamp = pa.timestamp("s", tz="UTC")
    try:
        parsed = pc.strptime(
            pa.array(values, pa.string()), format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=False
        )
        return parsed.cast(stamp)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([parse_ts(v) for v in values], stamp)


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
        values = [record.get(name) for record in records]
        arrays[name] = _timestamps(values) if pa.types.is_timestamp(kind) else values
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


def typed_column(values: list[Any], variable_type: str) -> pa.Array:
    """Values as read (strings) cast by Arrow in one call; a column holding anything Arrow
    will not cast (typed JSON echoed back, '12.0', stray text, or strings and typed JSON
    mixed) goes value by value through `coerce`, which turns what does not fit into None.
    Either way a blank is None, so the path taken never shows in the result."""
    kind = arrow_type(variable_type)
    try:
        raw = pa.array(values, pa.string())
        if kind != pa.string():
            return raw.cast(kind)
        return pc.if_else(pc.equal(raw, ""), pa.scalar(None, pa.string()), raw)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return pa.array([coerce(v, variable_type) for v in values], kind)
