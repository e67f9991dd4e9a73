"""Typed values from recordData: iMednet returns strings on read ("12", "37.5",
"2024-03-01", "true"); a server that echoes the typed JSON it was sent returns 12, 37.5
or true instead, and one column may hold both. One mapping from variableType to a
column type serves extraction frames and Parquet snapshots, whichever form arrives.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import orjson
import pyarrow as pa

ARROW_TYPES: dict[str, pa.DataType] = {
    "TEXT": pa.string(),
    "MEMO": pa.string(),
    "RADIO": pa.string(),
    "INTEGER": pa.int64(),
    "NUMBER": pa.float64(),
    "DATE": pa.date32(),
    "CHECKBOX": pa.bool_(),
}
_TRUE = {"true", "1", "yes", "y", "checked"}
_FALSE = {"false", "0", "no", "n", "unchecked"}


def arrow_type(variable_type: str) -> pa.DataType:
    """Unknown types stay text: a new EDC field type must not break an export."""
    return ARROW_TYPES.get(variable_type.upper(), pa.string())


def as_text(value: Any) -> str | None:
    """A recordData value as the API's read-back text: true, not Python's True."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool | int | float | list | dict):
        return orjson.dumps(value).decode()
    return str(value)


def coerce(value: Any, variable_type: str) -> Any:
    """The typed value, or None for a blank or a value that does not fit its type.

    A JSON boolean is no number and a JSON number no date, whatever Python's bool-is-int
    and date.fromisoformat("20240301") would make of them.
    """
    if value is None or value == "":
        return None
    kind = variable_type.upper()
    try:
        if kind in ("INTEGER", "NUMBER"):
            if isinstance(value, bool):
                return None
            number = float(value)
            if kind == "NUMBER":
                return number
            return int(number) if number.is_integer() else None
        if kind == "DATE":
            if isinstance(value, date):
                return value
            return date.fromisoformat(value[:10]) if isinstance(value, str) else None
        if kind == "CHECKBOX":
            if isinstance(value, bool):
                return value
            if isinstance(value, int | float):
                return bool(value) if value in (0, 1) else None
            text = str(value).strip().lower()
            return True if text in _TRUE else False if text in _FALSE else None
    except (TypeError, ValueError):
        return None
    return as_text(value)
