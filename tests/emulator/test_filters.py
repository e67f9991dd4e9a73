"""Unit tests for the emulator's `filter` / `recordDataFilter` compiler (docs/api-behaviour.md §4).

Every test asserts the exact set of selected row ids, so a predicate that matches too much or
too little fails, not only one that raises.
"""

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from imednet_flows.emulator.filters import (
    FieldKind,
    FilterError,
    compile_filter,
    compile_record_data_filter,
    format_timestamp,
    parse_timestamp,
)

FIELDS: Mapping[str, FieldKind] = {
    "formId": "int",
    "formKey": "str",
    "siteName": "str",
    "disabled": "bool",
    "dateModified": "ts",
    "visitDate": "date",
    "studyKey": "str",
}

ROWS: list[dict[str, Any]] = [
    {
        "formId": 1,
        "formKey": "AE",
        "siteName": "My Site",
        "disabled": False,
        "dateModified": "2025-06-05 21:12:07",
        "visitDate": "2019-03-18",
        "studyKey": "K",
    },
    {
        "formId": 2,
        "formKey": "AE",
        "siteName": 'The "Best" Site',
        "disabled": True,
        "dateModified": "2025-06-05 21:12:08",
        "visitDate": "2019-03-19",
        "studyKey": "K",
    },
    {
        "formId": 3,
        "formKey": "DM",
        "siteName": "C:\\sites\\north",
        "disabled": False,
        "dateModified": "2025-06-05 21:12:09",
        "visitDate": "2019-03-20",
        "studyKey": "K",
    },
    {
        "formId": 4,
        "formKey": "DM",
        "siteName": "a;b,c",
        "disabled": False,
        "dateModified": None,
        "visitDate": None,
        "studyKey": "OTHER",
    },
    {
        "formId": 5,
        "formKey": "VS",
        "siteName": "my site",
        "disabled": True,
        "dateModified": "2026-01-01 00:00:00",
        "studyKey": "K",
    },  # no visitDate key at all
]


def select(text: str, rows: Iterable[Mapping[str, Any]] = ROWS) -> set[int]:
    predicate = compile_filter(text, FIELDS)
    return {row["formId"] for row in rows if predicate(row)}


# --------------------------------------------------------------------------- grammar


@pytest.mark.parametrize("text", ["", "   ", "\t"])
def test_empty_filter_selects_everything(text: str) -> None:
    assert select(text) == {1, 2, 3, 4, 5}


def test_semicolon_is_and_comma_is_or() -> None:
    assert select("formKey==AE;disabled==true") == {2}
    assert select("formKey==AE,disabled==true") == {1, 2, 5}


def test_semicolon_binds_tighter_than_comma() -> None:
    # RSQL: AE OR (DM AND formId>3), not (AE OR DM) AND formId>3.
    assert select("formKey==AE,formKey==DM;formId>3") == {1, 2, 4}
    # (DM AND formId>3) OR AE.
    assert select("formKey==DM;formId>3,formKey==AE") == {1, 2, 4}
    # VS OR (AE AND disabled) OR (DM AND formId<4).
    assert select("formKey==VS,formKey==AE;disabled==true,formKey==DM;formId<4") == {2, 3, 5}


def test_repeated_attribute_expresses_or_and_ranges() -> None:
    assert select("formKey==AE,formKey==VS") == {1, 2, 5}
    assert select("formId>1;formId<4") == {2, 3}
    assert select("formId>=2;formId<=2") == {2}


def test_sdk_style_filter_with_study_key_last() -> None:
    assert select("formKey==DM;disabled==False;studyKey==K") == {3}
    assert select("studyKey==NOPE") == set()


def test_quoted_value_with_escaped_quote() -> None:
    assert select(r'siteName=="The \"Best\" Site"') == {2}


def test_quoted_value_with_escaped_backslash() -> None:
    assert select(r'siteName=="C:\\sites\\north"') == {3}


def test_quoted_value_may_contain_separators() -> None:
    assert select('siteName=="a;b,c"') == {4}
    assert select('siteName=="a;b,c",formId==1') == {1, 4}


def test_quoted_empty_string_is_a_value() -> None:
    assert select('siteName==""') == set()
    assert select('siteName!=""') == {1, 2, 3, 4, 5}


def test_unquoted_value_may_contain_spaces() -> None:
    assert select("siteName==My Site") == {1}
    assert select('siteName=="My Site"') == {1}


def test_string_comparison_is_case_sensitive() -> None:
    assert select("siteName==my site") == {5}
    assert select("formKey==ae") == set()


# --------------------------------------------------------------------------- operators per kind


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("formId==3", {3}),
        ("formId!=3", {1, 2, 4, 5}),
        ("formId<3", {1, 2}),
        ("formId<=3", {1, 2, 3}),
        ("formId>3", {4, 5}),
        ("formId>=3", {3, 4, 5}),
        ("formId==+3", {3}),
        ("formId>-1", {1, 2, 3, 4, 5}),
        ('formId=="3"', {3}),
    ],
)
def test_int_operators(text: str, expected: set[int]) -> None:
    assert select(text) == expected


def test_int_comparison_is_numeric_not_lexicographic() -> None:
    rows = [{"formId": n} for n in (2, 10, 100)]
    assert select("formId<10", rows) == {2}
    assert select("formId>=10", rows) == {10, 100}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("formKey==DM", {3, 4}),
        ("formKey!=DM", {1, 2, 5}),
        ("formKey<DM", {1, 2}),
        ("formKey<=DM", {1, 2, 3, 4}),
        ("formKey>DM", {5}),
        ("formKey>=DM", {3, 4, 5}),
    ],
)
def test_str_operators(text: str, expected: set[int]) -> None:
    assert select(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("disabled==true", {2, 5}),
        ("disabled==True", {2, 5}),
        ("disabled==TRUE", {2, 5}),
        ("disabled==false", {1, 3, 4}),
        ("disabled==False", {1, 3, 4}),
        ("disabled!=true", {1, 3, 4}),
        ("disabled!=False", {2, 5}),
        ('disabled=="true"', {2, 5}),
    ],
)
def test_bool_operators(text: str, expected: set[int]) -> None:
    assert select(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dateModified==2025-06-05 21:12:08", {2}),
        ("dateModified!=2025-06-05 21:12:08", {1, 3, 4, 5}),
        ("dateModified<2025-06-05 21:12:08", {1}),
        ("dateModified<=2025-06-05 21:12:08", {1, 2}),
        ("dateModified>2025-06-05 21:12:08", {3, 5}),
        ("dateModified>=2025-06-05 21:12:08", {2, 3, 5}),
    ],
)
def test_ts_operators(text: str, expected: set[int]) -> None:
    assert select(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("visitDate==2019-03-19", {2}),
        ("visitDate!=2019-03-19", {1, 3, 4, 5}),
        ("visitDate<2019-03-19", {1}),
        ("visitDate<=2019-03-19", {1, 2}),
        ("visitDate>2019-03-19", {3}),
        ("visitDate>=2019-03-19", {2, 3}),
    ],
)
def test_date_operators(text: str, expected: set[int]) -> None:
    assert select(text) == expected


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    "text",
    [
        'dateModified>="2025-06-05 21:12:08"',
        "dateModified>=2025-06-05 21:12:08",
        'dateModified>="2025-06-05T21:12:08Z"',
        "dateModified>=2025-06-05T21:12:08Z",
        "dateModified>=2025-06-05T23:12:08+02:00",
        "dateModified>=2025-06-05T17:12:08-04:00",
        "dateModified>=2025-06-05T21:12:08.000Z",
        "dateModified>=2025-06-05 21:12:08+00:00",
    ],
)
def test_timestamp_spellings_select_identical_rows_including_exact_second(text: str) -> None:
    # Row 2 was modified at exactly 21:12:08 and must be included by >=.
    assert select(text) == {2, 3, 5}
    assert select(f"{text};studyKey==K") == {2, 3, 5}


def test_timestamp_greater_than_excludes_the_exact_second() -> None:
    assert select('dateModified>"2025-06-05T21:12:08Z"') == {3, 5}


def test_date_only_operand_on_timestamp_field_means_midnight_utc() -> None:
    assert select("dateModified>=2025-06-05") == {1, 2, 3, 5}
    assert select("dateModified>=2025-06-06") == {5}
    assert select("dateModified==2026-01-01") == {5}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Row seconds compared with the real instant 21:12:08.5.
        ("dateModified>=2025-06-05 21:12:08.500", {3, 5}),
        ("dateModified>2025-06-05T21:12:08.5Z", {3, 5}),
        ("dateModified<=2025-06-05T21:12:08.5Z", {1, 2}),
        ("dateModified<2025-06-05T21:12:08.5Z", {1, 2}),
        ("dateModified==2025-06-05T21:12:08.5Z", set()),
        ("dateModified!=2025-06-05T21:12:08.5Z", {1, 2, 3, 4, 5}),
        # A fraction below one microsecond still lies after the whole second.
        ("dateModified>=2025-06-05T21:12:08.0000001Z", {3, 5}),
    ],
)
def test_sub_second_operand_compares_as_an_instant(text: str, expected: set[int]) -> None:
    assert select(text) == expected


def test_date_field_accepts_timestamp_operand_by_its_utc_date() -> None:
    assert select("visitDate==2019-03-19T10:00:00Z") == {2}
    assert select("visitDate==2019-03-19 23:59:59") == {2}
    # 01:00 at +02:00 is 23:00 UTC on the previous day.
    assert select("visitDate==2019-03-20T01:00:00+02:00") == {2}
    assert select("visitDate<2019-03-19T10:00:00Z") == {1}


# --------------------------------------------------------------------------- None / missing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("visitDate==2019-03-20", {3}),
        ("visitDate!=2019-03-20", {1, 2, 4, 5}),  # None (4) and missing (5) match only !=
        ("visitDate<2030-01-01", {1, 2, 3}),
        ("visitDate>1900-01-01", {1, 2, 3}),
        ("dateModified!=2025-06-05 21:12:08", {1, 3, 4, 5}),
        ("dateModified<=2099-01-01", {1, 2, 3, 5}),
    ],
)
def test_null_or_missing_value_matches_only_not_equal(text: str, expected: set[int]) -> None:
    assert select(text) == expected


def test_null_int_str_bool_match_only_not_equal() -> None:
    rows = [{"formId": 1, "formKey": None, "disabled": None}, {"formId": 2}]
    fields: Mapping[str, FieldKind] = {"formId": "int", "formKey": "str", "disabled": "bool"}
    for text in ("formKey==AE", "formKey<ZZ", "disabled==false", "disabled==true"):
        predicate = compile_filter(text, fields)
        assert [row["formId"] for row in rows if predicate(row)] == [], text
    for text in ("formKey!=AE", "disabled!=true", "disabled!=false"):
        predicate = compile_filter(text, fields)
        assert [row["formId"] for row in rows if predicate(row)] == [1, 2], text
    assert [r["formId"] for r in rows if compile_filter("formId!=9", fields)(r)] == [1, 2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Row 4 has visitDate None and studyKey OTHER: a null term must fail wherever it sits.
        ("visitDate==2019-03-20;studyKey==OTHER", set()),
        ("studyKey==OTHER;visitDate<2030-01-01", set()),
        ("visitDate==2019-03-20;formKey==DM;studyKey==OTHER", set()),
        ("formKey==DM;visitDate>2000-01-01;studyKey==OTHER", set()),
        ("formKey==DM;studyKey==OTHER;visitDate>2000-01-01", set()),
        ("visitDate>2000-01-01;formKey==DM;formId>0;studyKey==OTHER", set()),
        ("formKey==DM;formId>0;studyKey==OTHER;visitDate>2000-01-01", set()),
        ("visitDate!=2000-01-01;formKey==DM;studyKey==OTHER", {4}),
        ("formKey==DM;formId>0;visitDate!=2000-01-01;studyKey==OTHER", {4}),
    ],
)
def test_null_term_position_in_and_group(text: str, expected: set[int]) -> None:
    assert select(text) == expected


def test_four_or_more_terms_in_one_group() -> None:
    text = "formKey==DM;disabled==false;studyKey==K;formId>=1;siteName!=x"
    assert select(text) == {3}
    assert select(f"{text};visitDate!=2000-01-01") == {3}
    assert select(f"{text};visitDate==2000-01-01") == set()


# --------------------------------------------------------------------------- recordDataFilter

DATA: dict[str, dict[str, Any]] = {
    "s12": {"n": "12", "term": "Acute Bronchitis", "sev": "Serious"},
    "s9": {"n": "9", "term": "bronchospasm", "sev": "Non-serious"},
    "f12_5": {"n": 12.5, "term": "Headache"},
    "i10": {"n": 10, "flag": True},
    "s12_0": {"n": "12.0", "flag": False},
    "abc": {"n": "abc", "term": None},
    "none": {"n": None},
    "empty": {},
}


def select_data(text: str) -> set[str]:
    predicate = compile_record_data_filter(text)
    return {name for name, data in DATA.items() if predicate(data)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Numeric: "9" < 10 although "9" > "10" as strings; "abc" is compared as a string.
        ("n>10", {"s12", "f12_5", "s12_0", "abc"}),
        ("n>=10", {"s12", "f12_5", "i10", "s12_0", "abc"}),
        ("n<10", {"s9"}),
        ("n<=10", {"s9", "i10"}),
        ("n==12", {"s12", "s12_0"}),
        ("n==12.0", {"s12", "s12_0"}),
        ("n!=12", {"s9", "f12_5", "i10", "abc", "none"}),
        ("n==12.5", {"f12_5"}),
        ("n>1e1", {"s12", "f12_5", "s12_0", "abc"}),
    ],
)
def test_record_data_numeric_comparison(text: str, expected: set[str]) -> None:
    assert select_data(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n==abc", {"abc"}),
        ("n>a", {"abc"}),  # digits sort before letters; 10 and 12.5 compare as "10" / "12.5"
        ("n<a", {"s12", "s9", "f12_5", "i10", "s12_0"}),
        ("sev==Serious", {"s12"}),
        ("sev==serious", set()),
        ('sev=="Non-serious"', {"s9"}),
    ],
)
def test_record_data_string_comparison(text: str, expected: set[str]) -> None:
    assert select_data(text) == expected


@pytest.mark.parametrize("op", ["=~", "~="])
def test_record_data_contains_both_spellings_case_insensitive(op: str) -> None:
    assert select_data(f"term{op}bron") == {"s12", "s9"}
    assert select_data(f"term{op}BRONCH") == {"s12", "s9"}
    assert select_data(f'term{op}"acute b"') == {"s12"}
    assert select_data(f"n{op}2") == {"s12", "f12_5", "s12_0"}


def test_record_data_booleans_compare_as_true_false_any_case() -> None:
    assert select_data("flag==true") == {"i10"}
    assert select_data("flag==False") == {"s12_0"}
    assert select_data("flag!=TRUE") == {"s12_0"}


def test_record_data_missing_key_never_matches_null_matches_only_not_equal() -> None:
    assert select_data("sev!=Serious") == {"s9"}  # keys missing elsewhere never match
    assert select_data("term!=Headache") == {"s12", "s9", "abc"}  # abc has term: null
    assert select_data("term=~e") == {"s12", "f12_5"}  # null never "contains"
    assert select_data("nope!=x") == set()
    # Same rules inside a multi-term group.
    assert select_data("sev!=x;n!=x") == {"s12", "s9"}
    assert select_data("n!=x;term!=x") == {"s12", "s9", "f12_5", "abc"}
    assert select_data("term==x;n!=1") == set()
    assert select_data("n!=1;term==x") == set()


def test_record_data_and_or_precedence() -> None:
    assert select_data("term=~bron;sev==Serious") == {"s12"}
    assert select_data("flag==true,term=~bron;n<10") == {"i10", "s9"}


def test_record_data_empty_filter_matches_everything() -> None:
    assert select_data("") == set(DATA)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("op", ["=~", "~="])
def test_contains_is_rejected_in_filter(op: str) -> None:
    with pytest.raises(FilterError, match="recordDataFilter"):
        compile_filter(f"formKey{op}AE", FIELDS)


def test_unknown_attribute_names_it_and_lists_filterable_fields() -> None:
    with pytest.raises(FilterError) as excinfo:
        compile_filter("formKey==AE;fooBar==1", FIELDS)
    message = str(excinfo.value)
    assert '"fooBar"' in message
    assert "position 12" in message
    assert "formId, formKey" in message


def test_attribute_names_are_case_sensitive() -> None:
    with pytest.raises(FilterError, match="unknown attribute"):
        compile_filter("formkey==AE", FIELDS)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("formKey=AE", "expected one of == != <= >= < >"),
        ("formKey", "expected one of"),
        ("formKey AE", "expected one of"),
        ("formKey==", "missing value"),
        ("formKey==;formId==1", "missing value"),
        (";formKey==AE", "empty term at position 0"),
        ("formKey==AE;", "empty term at end"),
        ("formKey==AE,", "empty term at end"),
        ("formKey==AE;;formId==1", "empty term at position 12"),
        ("formKey==AE,;formId==1", "empty term"),
        ('formKey=="AE', "unterminated"),
        ('formKey=="AE\\"', "unterminated"),
        ('formKey==A"E', "unexpected '\"'"),
        ('formKey=="AE"x', 'unexpected "x"'),
        ("(formKey==AE)", "expected an attribute name"),
        (" formKey==AE", "expected an attribute name"),
        ("1formKey==AE", "expected an attribute name"),
        ("==AE", "expected an attribute name"),
        ("formKey==AE;formId", "expected one of"),
    ],
)
def test_malformed_syntax(text: str, fragment: str) -> None:
    with pytest.raises(FilterError) as excinfo:
        compile_filter(text, FIELDS)
    assert fragment in str(excinfo.value)


def test_value_is_everything_up_to_the_next_separator() -> None:
    # No "and"/"or" words: the rest of the term is the (unquoted) value.
    assert select("siteName==My Site and formId==1") == set()


def test_malformed_error_quotes_term_and_position() -> None:
    with pytest.raises(FilterError) as excinfo:
        compile_filter("formId==1;formKey=AE", FIELDS)
    assert 'malformed term "formKey=AE" at position 10' in str(excinfo.value)


@pytest.mark.parametrize(
    "text",
    [
        "formId==abc",
        "formId==1.5",
        "formId==1e3",
        "formId== 1",
        "formId==1_000",
        "disabled==yes",
        "disabled==1",
        "dateModified>=06/05/2025",
        "dateModified>=2025-06-05T21:12:08 UTC",
        "dateModified>=2025-13-01",
        "dateModified>=2025-06-05 25:00:00",
        "dateModified>=2025-06-05T21:12:08+24:00",
        "dateModified>=2025-06-05T21:12",
        "dateModified>=now",
        "visitDate==19-03-2019",
        "visitDate==2019-02-30",
    ],
)
def test_bad_operand_for_kind(text: str) -> None:
    with pytest.raises(FilterError, match="bad value"):
        compile_filter(text, FIELDS)


@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
def test_ordering_operator_on_bool_is_rejected(op: str) -> None:
    with pytest.raises(FilterError, match="not allowed on boolean"):
        compile_filter(f"disabled{op}true", FIELDS)


@pytest.mark.parametrize("text", ["n==", "n=1", "n==1;", ",n==1", 'n=="x', "n-x==1", "n==1;;m==2"])
def test_record_data_filter_errors(text: str) -> None:
    with pytest.raises(FilterError, match="recordDataFilter"):
        compile_record_data_filter(text)


def test_filter_error_is_a_value_error() -> None:
    assert issubclass(FilterError, ValueError)


# --------------------------------------------------------------------------- timestamp helpers


@pytest.mark.parametrize(
    "text",
    [
        "2025-06-05 21:12:08",
        "2025-06-05T21:12:08Z",
        "2025-06-05T21:12:08.000Z",
        "2025-06-05T23:12:08+02:00",
        "2025-06-05T16:42:08-04:30",
        "2025-06-05 21:12:08+00:00",
    ],
)
def test_parse_timestamp_forms(text: str) -> None:
    assert parse_timestamp(text) == datetime(2025, 6, 5, 21, 12, 8, tzinfo=UTC)
    assert parse_timestamp(text).tzinfo is UTC


def test_parse_timestamp_date_only_and_fraction() -> None:
    assert parse_timestamp("2025-06-05") == datetime(2025, 6, 5, tzinfo=UTC)
    assert parse_timestamp("2025-06-05T21:12:08.5Z").microsecond == 500_000
    assert parse_timestamp("2025-06-05T21:12:08.123456789Z").microsecond == 123_456


@pytest.mark.parametrize(
    "text", ["", "2025-6-5", "2025-06-05T21:12:08 UTC", "06/05/2025", "2025-06-05 21:12:08Zx"]
)
def test_parse_timestamp_rejects(text: str) -> None:
    with pytest.raises(FilterError):
        parse_timestamp(text)


def test_format_timestamp() -> None:
    assert format_timestamp(datetime(2025, 6, 5, 21, 12, 8, 999_999)) == "2025-06-05 21:12:08"
    offset = timezone(timedelta(hours=2))
    assert format_timestamp(datetime(2025, 6, 5, 0, 30, tzinfo=offset)) == "2025-06-04 22:30:00"
    assert format_timestamp(datetime(999, 1, 2, 3, 4, 5)) == "0999-01-02 03:04:05"


def test_format_parse_round_trip() -> None:
    text = "2025-06-05 21:12:08"
    assert format_timestamp(parse_timestamp(text)) == text
