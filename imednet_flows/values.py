"""Typed values from recordData: iMednet returns strings on read ("12", "37.5",
"2024-03-01", "true"); a server that echoes the typed JSON it was sent returns 12, 37.5
or true instead, and one column may hold both. One mapping from variableType to a
column type serves extraction frames and Parquet snapshots, whichever form arrives.

The same rules type the API's own fields (recordId, dateModified, deleted, ...), as
`field_column`: a value already of the column's type goes through Arrow in one call, and
everything else value by value through `coerce`, so which path a column took never shows
in its values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from imednet_flows.timestamps import canonical_ts

#: Timestamps are second-precision UTC instants (Parquet files carry them as ms).
TIMESTAMP = pa.timestamp("s", tz="UTC")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

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
            if not number.is_integer() or not _INT64_MIN <= number <= _INT64_MAX:
                return None
            return int(number)
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


# What Arrow's casts from text accept must be a subset of what `coerce` accepts, with the
# same meaning (Arrow reads "0x10" as 16 and "2024-3-1 1:2:3" as a timestamp, coerce does
# not): only text matching these patterns takes the one-call cast.
_CASTABLE: dict[str, str] = {
    "INTEGER": r"^-?[0-9]{1,18}$",
    "NUMBER": r"^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,3})?$",
    "CHECKBOX": r"^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|0|1)$",
    "DATE": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
}
_CANONICAL_TS = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}$"
_NUMBER_RE = re.compile(_CASTABLE["NUMBER"])


def blank_to_null(text: pa.Array) -> pa.Array:
    """ "" as null: the API clears a value to "", and a cleared value has no type."""
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, text.type), text)


def _all_match(text: pa.Array, pattern: str) -> bool:
    if text.null_count == len(text):
        return True
    return bool(pc.all(pc.match_substring_regex(text, pattern)).as_py())


def cast_text(text: pa.Array, variable_type: str) -> pa.Array | None:
    """A column of text (blanks already null) cast in one call, or None when some value is
    not in a form whose cast is known to agree with `coerce` (the caller then goes value by
    value)."""
    kind = arrow_type(variable_type)
    if kind == pa.string():
        return text
    pattern = _CASTABLE.get(variable_type.upper())
    if pattern is None or not _all_match(text, pattern):
        return None
    try:
        return text.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # e.g. 2024-02-30, or an integer beyond int64


def as_text_array(values: Sequence[Any] | pa.Array) -> pa.Array | None:
    """Values as an Arrow string array if they are all text (or null), else None."""
    if isinstance(values, pa.Array):
        return values if pa.types.is_string(values.type) or pa.types.is_null(values.type) else None
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def timestamp_column(values: Sequence[Any] | pa.Array) -> pa.Array:
    """The API's timestamps as second-precision UTC instants. Its own 'YYYY-MM-DD HH:MM:SS'
    (UTC by contract) parses in Arrow in one call; any other form (ISO with a zone, a
    fraction) goes value by value through `timestamps.canonical_ts`; garbage is null."""
    text = as_text_array(values)
    if text is not None:
        text = blank_to_null(text.cast(pa.string()))
        if _all_match(text, _CANONICAL_TS):
            try:
                return pc.strptime(text, format="%Y-%m-%d %H:%M:%S", unit="s").cast(TIMESTAMP)
            except pa.ArrowInvalid:
                pass  # a well-formed but impossible stamp (2024-02-30): value by value
    python = values.to_pylist() if isinstance(values, pa.Array) else values
    canonical = pa.array([canonical_ts(v) for v in python], pa.string())
    parsed = pc.strptime(canonical, format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=True)
    return parsed.cast(TIMESTAMP)


_FIELD_RULE: dict[pa.DataType, str] = {
    pa.int64(): "INTEGER",
    pa.float64(): "NUMBER",
    pa.bool_(): "CHECKBOX",
    pa.date32(): "DATE",
}


def field_column(values: Sequence[Any] | pa.Array, kind: pa.DataType) -> pa.Array:
    """An API field's values (not a variable's) as a column of `kind`.

    Unlike variables, text fields keep "" (it is what the API says, e.g. an empty
    ``reasonForChange``) and non-text values become their JSON text; other kinds follow
    `coerce` (a blank or a value that does not fit is null); timestamps follow
    `timestamp_column`.
    """
    if pa.types.is_timestamp(kind):
        return timestamp_column(values)
    if isinstance(values, pa.Array):
        if values.type == kind:
            return values
        if kind != pa.string() and pa.types.is_string(values.type):
            rule = _FIELD_RULE.get(kind)
            cast = cast_text(blank_to_null(values), rule) if rule else None
            if cast is not None:
                return cast
        values = values.to_pylist()
    fast = _python_fast(values, kind)
    if fast is not None:
        return fast
    if kind == pa.string():
        return pa.array([as_text(v) for v in values], kind)
    rule = _FIELD_RULE.get(kind, "TEXT")
    return pa.array([coerce(v, rule) for v in values], kind)


def _python_fast(values: Sequence[Any], kind: pa.DataType) -> pa.Array | None:
    """Arrow's own conversion where it agrees with the rules: int64 refuses bools and
    fractions, bool refuses numbers, string refuses numbers; float64 would take True as 1.0,
    so its values are inferred first and only numbers pass."""
    try:
        if kind == pa.float64():
            inferred = pa.array(values)
            if inferred.type in (pa.int64(), pa.float64(), pa.null()):
                return inferred.cast(kind, safe=False)
            return None
        if kind == pa.date32():
            text = as_text_array(values)
            return None if text is None else cast_text(blank_to_null(text), "DATE")
        if kind in (pa.int64(), pa.bool_(), pa.string()):
            return pa.array(values, kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None
    return None
