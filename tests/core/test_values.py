"""How a record's string values become typed values, per variable type.

Pure functions, tested directly; expected values are written out by hand, never computed
by the code under test.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from imednet_flows.values import coerce

# ------------------------------------------------------------------------------ values.coerce


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("12", "INTEGER", 12),
        ("12.0", "INTEGER", 12),
        ("-3", "integer", -3),
        (7, "INTEGER", 7),
        ("1e3", "INTEGER", 1000),
        ("12.5", "INTEGER", None),
        ("inf", "INTEGER", None),
        ("twelve", "INTEGER", None),
        ("37.5", "NUMBER", 37.5),
        ("-0.25", "NUMBER", -0.25),
        (3, "NUMBER", 3.0),
        ("37,5", "NUMBER", None),
        ("2024-03-01", "DATE", date(2024, 3, 1)),
        ("2024-03-01 10:11:12", "DATE", date(2024, 3, 1)),
        ("2024-03-01T10:11:12Z", "DATE", date(2024, 3, 1)),
        (date(2020, 2, 29), "DATE", date(2020, 2, 29)),
        ("2024-13-01", "DATE", None),
        ("01/03/2024", "DATE", None),
        ("true", "CHECKBOX", True),
        (" Yes ", "CHECKBOX", True),
        ("CHECKED", "CHECKBOX", True),
        ("1", "CHECKBOX", True),
        (1, "CHECKBOX", True),
        ("false", "CHECKBOX", False),
        ("0", "CHECKBOX", False),
        ("unchecked", "CHECKBOX", False),
        (False, "CHECKBOX", False),
        ("maybe", "CHECKBOX", None),
        ("Headache", "TEXT", "Headache"),
        ("  kept as is ", "MEMO", "  kept as is "),
        ("2", "RADIO", "2"),
        (2, "RADIO", "2"),
        ("x", "SIGNATURE", "x"),  # unknown types stay text
    ],
)
def test_coerce(value: Any, kind: str, expected: Any) -> None:
    got = coerce(value, kind)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize("kind", ["TEXT", "MEMO", "RADIO", "INTEGER", "NUMBER", "DATE", "CHECKBOX"])
@pytest.mark.parametrize("blank", ["", None])
def test_coerce_blank_is_none(kind: str, blank: str | None) -> None:
    assert coerce(blank, kind) is None
