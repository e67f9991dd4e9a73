"""Typed values from recordData: iMednet returns strings on read ("12", "37.5",
"2024-03-01", "true") and echoes typed JSON it was sent. One mapping from
variableType to a column type serves extraction frames and Parquet snapshots.
"""

from __future__ import annotations

from datetime import date
from typing import Any

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


def coerce(value: Any, variable_type: str) -> Any:
    """The typed value, or None for a blank or a value that does not fit its type."""
    if value is None or value == "":
        return None
    kind = variable_type.upper()
    try:
        if kind == "INTEGER":
            number = float(value)
            return int(number) if number.is_integer() else None
        if kind == "NUMBER":
            return float(value)
        if kind == "DATE":
            return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
        if kind == "CHECKBOX":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            return True if text in _TRUE else False if text in _FALSE else None
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, str) else str(value)
