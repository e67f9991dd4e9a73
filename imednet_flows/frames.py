"""Records as tables: metadata columns plus one typed column per variable."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

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


def records_table(
    records: list[Row], variables: Iterable[Row], form_keys: Iterable[str] | None = None
) -> pa.Table:
    """One row per record; variables of forms in `form_keys` (all when None) as typed columns."""
    columns = variable_columns(variables, form_keys)
    arrays: dict[str, list[Any]] = {name: [] for name, _ in RECORD_COLUMNS}
    for name, _ in columns:
        arrays[name] = []
    stamp = pa.timestamp("s", tz="UTC")
    metadata = [(arrays[name], name, kind == stamp) for name, kind in RECORD_COLUMNS]
    data_columns = [
        (arrays[name], name[4:] if name.startswith("var_") and name[4:] in _META else name, vtype)
        for name, vtype in columns
    ]
    for record in records:
        for target, name, is_stamp in metadata:
            value = record.get(name)
            target.append(parse_ts(value) if is_stamp else value)
        data = record.get("recordData") or {}
        for target, key, vtype in data_columns:
            target.append(coerce(data.get(key), vtype))
    fields = [pa.field(n, t) for n, t in RECORD_COLUMNS] + [
        pa.field(n, arrow_type(t)) for n, t in columns
    ]
    schema = pa.schema(fields)
    return pa.Table.from_pydict(arrays, schema=schema)
