"""Record values as the API reads them back: text, whatever JSON type was posted.

POST /records takes typed JSON (`"regyob": 1980, "regelig": true`) while every read
returns strings (`"regyob": "1983"`, `"aeser": ""`), the spec's ExampleRecordsList and the
seed alike. Storing the text keeps one column of one type, so a client's tables and Parquet
files see what the real API sends. The text follows the seed's conventions per variable
type: INTEGER "1983", NUMBER "36.9" (always a decimal point), CHECKBOX "true"/"false",
DATE and text types as posted; null or "" clears the value to "".
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from imednet_flows.emulator.checks import is_number


class BadValue(ValueError):
    """A value no variable can hold (a JSON array or object, or a non-finite number)."""


def read_back_text(value: Any, variable_type: str) -> str:
    """The string the API returns for `value` posted to a variable of `variable_type`."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if not is_number(value):
        shape = "a JSON array or object" if isinstance(value, list | dict) else repr(value)
        raise BadValue(f"{shape} cannot be a record value; send a string, number or boolean")
    kind = variable_type.upper()
    if kind == "CHECKBOX" and value in (0, 1):
        return "true" if value else "false"
    if isinstance(value, float):
        if kind == "INTEGER" and value.is_integer():
            return str(int(value))
        text = format(Decimal(repr(value)), "f")  # positional: never "1e-07"
    else:
        text = str(value)
    return text + ".0" if kind == "NUMBER" and "." not in text else text


def read_back_data(
    data: dict[str, Any], types: dict[str, str], as_posted: bool = False
) -> dict[str, Any]:
    """A posted `data` object as stored: text per `types` (variableName -> variableType,
    TEXT when unknown), or unchanged when the emulator is told to echo typed JSON."""
    if as_posted:
        return dict(data)
    stored = {}
    for name, value in data.items():
        try:
            stored[name] = read_back_text(value, types.get(name, "TEXT"))
        except BadValue as exc:
            raise BadValue(f"variable {name}: {exc}") from None
    return stored
