"""How a restriction to many subject (or other) keys is split into requests: every value
exactly once, every request within the API's filter-length limit.

Pure functions, tested directly; expected values are written out by hand, never computed
by the code under test.
"""

from __future__ import annotations

import itertools

from imednet_flows.edc.criteria import restricted
from imednet_flows.filter_syntax import (
    and_dnf,
    dnf,
    parse_dnf,
    render_dnf,
)

# ---------------------------------------------------------------------- criteria.restricted


def _equalities(filter_text: str) -> list[list[tuple[str, str]]]:
    """Parse a rendered filter back into (attribute, value) pairs per OR-group."""
    groups = parse_dnf(filter_text, "filter")
    assert all(t.op == "==" for g in groups for t in g)
    return [[(t.attribute, t.value) for t in g] for g in groups]


def _matches(filter_text: str, row: dict[str, str]) -> bool:
    """Evaluate an ==-only filter on a row: OR over groups of AND-ed terms."""
    return any(all(row.get(a) == v for a, v in g) for g in _equalities(filter_text))


SCOPE = [["studyKey==PHX-101"]]


def test_restricted_covers_every_value_exactly_once_within_the_limit() -> None:
    values: list[object] = [f"{site:02d}-{n:03d}" for site in range(1, 9) for n in range(1, 61)]
    chunks = restricted([[]], "subjectKey", values, SCOPE, max_chars=400)
    assert len(chunks) > 1, "480 keys cannot fit 400 characters"
    seen: list[str] = []
    for chunk in chunks:
        rendered = render_dnf(and_dnf(chunk, SCOPE))
        assert len(rendered) <= 400, rendered
        for group in _equalities(rendered):
            assert ("studyKey", "PHX-101") in group  # the scope reaches every OR-group
            seen += [v for a, v in group if a == "subjectKey"]
    assert seen == values  # each exactly once, in the order given


def test_restricted_chunks_are_filled_greedily() -> None:
    """A chunk is closed only when the next value would not fit: no needless requests."""
    values: list[object] = list(range(1000, 1200))
    chunks = restricted([[]], "visitId", values, SCOPE, max_chars=300)
    for chunk, following in itertools.pairwise(chunks):
        grown = and_dnf([*chunk, following[0]], SCOPE)
        assert len(render_dnf(grown)) > 300


def test_restricted_dedupes_and_quotes_values() -> None:
    values: list[object] = ["03-001", 'Mc"Coy', "03-001", "a,b;c", 'Mc"Coy']
    (chunk,) = restricted([[]], "subjectKey", values, SCOPE)
    assert render_dnf(chunk) == r'subjectKey==03-001,subjectKey=="Mc\"Coy",subjectKey=="a,b;c"'
    got = [v for g in _equalities(render_dnf(chunk)) for _, v in g]
    assert got == ["03-001", 'Mc"Coy', "a,b;c"]


def test_restricted_without_values_means_no_request() -> None:
    assert restricted(dnf("formKey==AE"), "subjectKey", [], SCOPE) == []


def test_restricted_distributes_over_an_or_in_the_base() -> None:
    """(AE OR VS) AND visitId in {1, 2}: the grammar has no parentheses, so the product."""
    (chunk,) = restricted(dnf("formKey==AE,formKey==VS"), "visitId", [1, 2], SCOPE)
    assert render_dnf(chunk) == (
        "formKey==AE;visitId==1,formKey==AE;visitId==2,formKey==VS;visitId==1,formKey==VS;visitId==2"
    )
    text = render_dnf(chunk)
    for form in ("AE", "VS", "CM"):
        for visit in ("1", "2", "3"):
            expected = form in ("AE", "VS") and visit in ("1", "2")
            assert _matches(text, {"formKey": form, "visitId": visit}) is expected, (form, visit)


def test_restricted_split_with_or_base_keeps_both_branches_in_every_chunk() -> None:
    base = dnf('formKey==AE,recordStatus=="Record Complete"')
    values: list[object] = list(range(1, 80))
    chunks = restricted(base, "visitId", values, SCOPE, max_chars=500)
    assert len(chunks) > 1
    seen: list[str] = []
    for chunk in chunks:
        text = render_dnf(and_dnf(chunk, SCOPE))
        assert len(text) <= 500
        groups = _equalities(text)
        ids = [v for g in groups for a, v in g if a == "visitId"]
        half = len(ids) // 2
        assert ids[:half] == ids[half:]  # the same ids under each branch of the base
        assert {g[0] for g in groups} == {("formKey", "AE"), ("recordStatus", "Record Complete")}
        seen += ids[:half]
    assert seen == [str(v) for v in values]


def test_restricted_keeps_an_oversize_single_value() -> None:
    """A value longer than the limit on its own still gets a request: dropping it would
    silently lose that subject's records."""
    long_key = "K" * 50
    chunks = restricted([[]], "subjectKey", ["a", long_key, "b"], SCOPE, max_chars=40)
    assert chunks == [[["subjectKey==a"]], [[f"subjectKey=={long_key}"]], [["subjectKey==b"]]]
