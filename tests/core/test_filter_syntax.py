"""The filter grammar shared by the client and the emulator: values quoted as the SDK quotes
them, and filters that parse back to themselves.

Pure functions, tested directly; expected values are written out by hand, never computed
by the code under test.
"""

from __future__ import annotations

import pytest
from imednet.utils.filters import _format_filter_value

from imednet_flows.filter_syntax import (
    Term,
    and_dnf,
    any_of,
    dnf,
    parse_dnf,
    quote_value,
    render_dnf,
)

# ------------------------------------------------------------------------------ filter syntax

TRICKY = [
    "plain",
    "03-001",
    "1.5",
    "-7",
    "snake_case",
    "Record Complete",
    'say "hi"',
    "back\\slash",
    '\\"',
    "a,b",
    "a;b",
    "x==y",
    "a>=b",
    "=~",
    "trailing ",
    " leading",
    "tab\there",
    "new\nline",
    "ünïcödé",
    "١٢٣",  # Arabic-Indic digits: not [0-9]
    "2025-01-01 00:00:00",
    "(parens)",
    "'single'",
    "%20",
    "emoji 🙂",
]


@pytest.mark.parametrize("value", TRICKY)
def test_quote_value_matches_sdk_format_filter_value(value: str) -> None:
    assert quote_value(value) == _format_filter_value(value)


def test_quote_value_examples() -> None:
    assert quote_value("03-001") == "03-001"
    assert quote_value("Record Complete") == '"Record Complete"'
    assert quote_value('say "hi" \\o/') == r'"say \"hi\" \\o/"'
    assert quote_value(42) == "42"


def test_quote_value_empty_string_differs_from_the_sdk_on_purpose() -> None:
    """SDK 0.5.0 sends `attr==` for an empty value, which the grammar rejects; ours quotes
    it so `attr==""` means "equals the empty string"."""
    assert _format_filter_value("") == ""
    assert quote_value("") == '""'
    assert parse_dnf('subjectKey==""', "filter")[0][0].value == ""


@pytest.mark.parametrize("value", TRICKY)
def test_quoted_values_parse_back_to_themselves(value: str) -> None:
    (group,) = parse_dnf(f"subjectKey=={quote_value(value)}", "filter")
    assert [(t.attribute, t.op, t.value) for t in group] == [("subjectKey", "==", value)]


def _triples(groups: list[list[Term]]) -> list[list[tuple[str, str, str]]]:
    return [[(t.attribute, t.op, t.value) for t in g] for g in groups]


def test_dnf_render_round_trip() -> None:
    text = 'formKey==AE;recordStatus=="Record Complete",siteId>=3;subjectKey!="03 \\"x\\""'
    rendered = render_dnf(dnf(text))
    assert _triples(parse_dnf(rendered, "filter")) == [
        [("formKey", "==", "AE"), ("recordStatus", "==", "Record Complete")],
        [("siteId", ">=", "3"), ("subjectKey", "!=", '03 "x"')],
    ]
    assert render_dnf(dnf(rendered)) == rendered  # rendering is a fixed point


def test_dnf_of_blank_matches_everything() -> None:
    assert dnf(None) == [[]]
    assert dnf("  ") == [[]]
    assert render_dnf(dnf("")) == ""


def test_and_dnf_is_the_product_in_order() -> None:
    left = dnf("a==1,a==2")
    right = dnf('b==x,b=="y z"')
    product = and_dnf(left, right)
    assert _triples(parse_dnf(render_dnf(product), "filter")) == [
        [("a", "==", "1"), ("b", "==", "x")],
        [("a", "==", "1"), ("b", "==", "y z")],
        [("a", "==", "2"), ("b", "==", "x")],
        [("a", "==", "2"), ("b", "==", "y z")],
    ]
    assert and_dnf(left, [[]]) == left  # [[]] is the neutral "match all"


def test_any_of_round_trip() -> None:
    groups = any_of("subjectKey", ["03-001", "A B", 7])
    assert _triples(parse_dnf(render_dnf(groups), "filter")) == [
        [("subjectKey", "==", "03-001")],
        [("subjectKey", "==", "A B")],
        [("subjectKey", "==", "7")],
    ]
