"""Pure functions of the EDC layer, tested directly: no emulator, no Prefect, no sockets.

These are the decisions every flow depends on (when to retry, how long to wait, how a
restriction is split into requests, how values are quoted, typed and tabled, what an error
tells the operator). Flow tests exercise them only indirectly and only on happy paths, so
a wrong wait, a dropped subject key or a mistyped column could pass unnoticed there.
Expected values are written out by hand, never computed by the code under test.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pyarrow as pa
import pytest
from imednet.core.retry import RetryState
from imednet.errors import (
    BadRequestError,
    ForbiddenError,
    NotFoundError,
    RateLimitError,
    RequestError,
    ServerError,
    UnauthorizedError,
)
from imednet.utils.filters import _format_filter_value

from imednet_flows.edc.client import Credentials, ImednetClient
from imednet_flows.edc.criteria import restricted
from imednet_flows.edc.errors import ImednetFlowsError, explain
from imednet_flows.edc.retry import (
    PARSED,
    RetrySettings,
    TransientRetryPolicy,
    backoff_delay,
    parse_retry_after,
)
from imednet_flows.emulator import DEMO_API_KEY, DEMO_SECURITY_KEY, EmulatorServer
from imednet_flows.filter_syntax import (
    Term,
    and_dnf,
    any_of,
    dnf,
    parse_dnf,
    quote_value,
    render_dnf,
)
from imednet_flows.frames import RECORD_COLUMNS, records_table
from imednet_flows.values import coerce

#: Explicit settings: the autouse `fast_backoff` fixture changes the environment defaults.
SETTINGS = RetrySettings(max_attempts=6, base_delay=1.0, max_delay=30.0, max_retry_after=120.0)


# ------------------------------------------------------------------------------ backoff_delay


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 30.0), (12, 30.0)],
)
def test_backoff_grows_exponentially_up_to_the_cap(attempt: int, expected: float) -> None:
    # rng -> 1.0 exposes the ceiling of the full-jitter draw
    assert backoff_delay(attempt, SETTINGS, None, rng=lambda: 1.0) == expected


def test_backoff_is_full_jitter_over_the_ceiling() -> None:
    assert backoff_delay(3, SETTINGS, None, rng=lambda: 0.25) == 1.0  # 4 s ceiling x 0.25
    assert backoff_delay(3, SETTINGS, None, rng=lambda: 0.0) == 0.0
    custom = RetrySettings(max_attempts=3, base_delay=0.5, max_delay=3.0, max_retry_after=10.0)
    assert backoff_delay(4, custom, None, rng=lambda: 1.0) == 3.0  # 0.5 * 8 = 4, capped at 3


def _no_jitter() -> float:
    pytest.fail("with a Retry-After the jitter must not be drawn")


def test_retry_after_is_honoured_and_capped() -> None:
    never: Callable[[], float] = _no_jitter
    assert backoff_delay(1, SETTINGS, 7.0, rng=never) == 7.0
    assert backoff_delay(6, SETTINGS, 0.0, rng=never) == 0.0  # "retry now" is not backoff
    assert backoff_delay(1, SETTINGS, 500.0, rng=never) == 120.0


# -------------------------------------------------------------------------- parse_retry_after


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("1.5", 1.5), ("0", 0.0), ("-3", 0.0), (" 12 ", 12.0)],
)
def test_parse_retry_after_numeric(header: str, expected: float) -> None:
    assert parse_retry_after(httpx.Response(429, headers={"Retry-After": header})) == expected


def test_parse_retry_after_http_date_and_missing_give_none() -> None:
    dated = httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert parse_retry_after(dated) is None  # falls back to our own backoff
    assert parse_retry_after(httpx.Response(503)) is None
    assert parse_retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None


# ---------------------------------------------------------------------- TransientRetryPolicy


class Recorder:
    """A no-op sleep and on_retry hook that remember what they were asked."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.retries: list[tuple[int, str, float]] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def on_retry(self, attempt: int, reason: str, delay: float) -> None:
        self.retries.append((attempt, reason, delay))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def policy(recorder: Recorder, settings: RetrySettings = SETTINGS) -> TransientRetryPolicy:
    return TransientRetryPolicy(settings, sleep=recorder.sleep, on_retry=recorder.on_retry)


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
    return httpx.Response(status, content=body, headers=headers)


def decide(
    recorder: Recorder,
    method: str,
    result: Any = None,
    exception: BaseException | None = None,
    attempt: int = 1,
) -> bool:
    state = RetryState(attempt_number=attempt, exception=exception, result=result, method=method)
    return policy(recorder).should_retry(state)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_get_retries_transient_statuses(recorder: Recorder, status: int) -> None:
    assert decide(recorder, "GET", response(status), attempt=2) is True
    assert len(recorder.sleeps) == 1
    assert 0.0 <= recorder.sleeps[0] <= 2.0  # attempt 2: full jitter under a 2 s ceiling
    reason = "HTTP 429 rate limited" if status == 429 else f"HTTP {status}"
    assert recorder.retries == [(2, reason, recorder.sleeps[0])]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_get_does_not_retry_client_errors(recorder: Recorder, status: int) -> None:
    assert decide(recorder, "GET", response(status, b'{"metadata": {}}')) is False
    assert recorder.sleeps == []
    assert recorder.retries == []


def test_retry_after_header_sets_the_wait(recorder: Recorder) -> None:
    assert decide(recorder, "GET", response(503, headers={"Retry-After": "3"})) is True
    assert recorder.sleeps == [3.0]


def test_retry_after_beyond_the_limit_gives_up(recorder: Recorder) -> None:
    """A server asking for 10 minutes is a failure to report, not a wait to sit through."""
    assert decide(recorder, "GET", response(429, headers={"Retry-After": "600"})) is False
    assert recorder.sleeps == []


def test_post_503_is_not_resent(recorder: Recorder) -> None:
    """The server may have created the records before failing: resending could duplicate."""
    assert decide(recorder, "POST", response(503)) is False
    assert decide(recorder, "post", response(500)) is False
    assert recorder.sleeps == []


def test_post_429_is_resent(recorder: Recorder) -> None:
    """A rate-limited POST created nothing, so sending it again is safe."""
    assert decide(recorder, "POST", response(429, headers={"Retry-After": "1"})) is True
    assert recorder.sleeps == [1.0]
    assert recorder.retries[0][1] == "HTTP 429 rate limited"


def test_network_error_retried_on_get_not_on_post(recorder: Recorder) -> None:
    error = httpx.ConnectError("connection refused")
    assert decide(recorder, "GET", exception=error) is True
    assert recorder.retries[0][1] == "network error (ConnectError)"
    assert decide(recorder, "POST", exception=httpx.ReadTimeout("slow")) is False
    assert len(recorder.sleeps) == 1


def test_non_network_exception_is_not_retried(recorder: Recorder) -> None:
    assert decide(recorder, "GET", exception=ValueError("a bug, not a fault")) is False
    assert recorder.sleeps == []


def test_truncated_json_body_retried_on_get(recorder: Recorder) -> None:
    assert decide(recorder, "GET", response(200, b'{"data": [{"recordId": 1}, {"rec')) is True
    assert recorder.retries[0][1] == "truncated JSON body"


def test_complete_body_is_parsed_once_and_kept(recorder: Recorder) -> None:
    ok = response(200, b'{"data": [1, 2], "pagination": {"totalPages": 1}}')
    assert decide(recorder, "GET", ok) is False
    assert ok.extensions[PARSED] == {"data": [1, 2], "pagination": {"totalPages": 1}}


def test_truncated_body_on_post_is_not_resent(recorder: Recorder) -> None:
    assert decide(recorder, "POST", response(200, b'{"batchId": "b-')) is False


@pytest.mark.parametrize(("attempt", "expected"), [(1, True), (5, True), (6, False), (9, False)])
def test_attempts_are_capped_at_max_attempts(
    recorder: Recorder, attempt: int, expected: bool
) -> None:
    assert decide(recorder, "GET", response(503), attempt=attempt) is expected
    assert len(recorder.sleeps) == int(expected)


def test_sdk_executor_stops_at_max_attempts() -> None:
    """End to end through SDK 0.5.0's own executor (no server: an httpx MockTransport):
    a GET that always answers 503 is sent exactly max_attempts times, then explained."""
    calls: list[str] = []

    def always_503(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(503, json={"metadata": {"status": "SERVICE_UNAVAILABLE"}})

    settings = RetrySettings(max_attempts=3, base_delay=0.0, max_delay=0.0, max_retry_after=1.0)
    credentials = Credentials("http://127.0.0.1:9", "key", "secret")
    with ImednetClient(credentials, retry=settings) as client:
        client._http._client._transport = httpx.MockTransport(always_503)
        with pytest.raises(ImednetFlowsError, match=r"HTTP 503"):
            client.get("/api/v1/edc/studies", what="listing studies")
        assert calls == ["GET", "GET", "GET"]
        assert client.retries == 2
        assert client.requests == 3


def test_every_attempt_is_counted_once(fresh_emulator: EmulatorServer) -> None:
    """The request counter relies on the SDK asking the retry policy after every attempt,
    a success included (its public `retry_policy` hook): counted requests are exactly what
    the server saw, retries included."""
    fresh_emulator.emulator.add_fault("status", status=503, count=2)
    credentials = Credentials(fresh_emulator.base_url, DEMO_API_KEY, DEMO_SECURITY_KEY)
    settings = RetrySettings(max_attempts=4, base_delay=0.0, max_delay=0.0, max_retry_after=1.0)
    with ImednetClient(credentials, retry=settings) as client:
        for _ in range(3):
            client.get("/api/v1/edc/studies", what="listing studies")
        assert (client.requests, client.retries) == (5, 2)
    assert len(fresh_emulator.emulator.requests()) == 5


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


# -------------------------------------------------------------------------- frames.records_table


def _variable(form_id: int, form_key: str, seq: int, vid: int, name: str, vtype: str) -> dict:
    return {
        "formId": form_id,
        "formKey": form_key,
        "sequence": seq,
        "variableId": vid,
        "variableName": name,
        "variableType": vtype,
        "deleted": False,
    }


VARIABLES = [
    # listed out of order on purpose: columns follow (formId, sequence, variableId)
    _variable(2, "VS", 2, 21, "weight", "NUMBER"),
    _variable(1, "AE", 1, 11, "aeterm", "TEXT"),
    _variable(2, "VS", 1, 20, "vsdt", "DATE"),
    _variable(1, "AE", 2, 12, "aeser", "CHECKBOX"),
    _variable(1, "AE", 3, 13, "siteId", "INTEGER"),  # collides with a metadata column
    _variable(2, "VS", 3, 22, "aeterm", "MEMO"),  # same name again: first one wins
    _variable(2, "VS", 4, 23, "pulse", "INTEGER"),
    {**_variable(1, "AE", 4, 14, "retired", "TEXT"), "deleted": True},
]


def _record(rid: int, form_key: str, data: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "recordId": rid,
        "recordOid": f"REC-{rid}",
        "formId": 1 if form_key == "AE" else 2,
        "formKey": form_key,
        "siteId": 3,
        "subjectId": 100,
        "subjectKey": "03-001",
        "intervalId": 5,
        "visitId": 50 + rid,
        "recordStatus": "Record Complete",
        "recordType": "SUBJECT",
        "deleted": False,
        "dateCreated": "2024-03-01 10:00:00",
        "dateModified": "2024-03-02 11:30:15",
        "recordData": data,
        **meta,
    }


RECORDS = [
    _record(1, "AE", {"aeterm": "Headache", "aeser": "true", "siteId": "44", "retired": "x"}),
    _record(2, "VS", {"vsdt": "2024-03-05", "weight": "71.5", "pulse": "sixty"}),
    _record(3, "AE", {"aeterm": "", "aeser": "no"}, dateModified="", deleted=True),
]

META_NAMES = [name for name, _ in RECORD_COLUMNS]


def test_records_table_column_order_and_types() -> None:
    table = records_table(RECORDS, VARIABLES)
    assert table.column_names == [
        *META_NAMES,
        "aeterm",
        "aeser",
        "var_siteId",
        "vsdt",
        "weight",
        "pulse",
    ]
    types = {f.name: f.type for f in table.schema}
    assert types["recordId"] == pa.int64()
    assert types["deleted"] == pa.bool_()
    assert types["dateModified"] == pa.timestamp("s", tz="UTC")
    assert types["aeterm"] == pa.string()  # TEXT from form AE, not MEMO from VS
    assert types["aeser"] == pa.bool_()
    assert types["var_siteId"] == pa.int64()
    assert types["vsdt"] == pa.date32()
    assert types["weight"] == pa.float64()
    assert types["pulse"] == pa.int64()


def test_records_table_values() -> None:
    rows = records_table(RECORDS, VARIABLES).to_pylist()
    assert [r["recordId"] for r in rows] == [1, 2, 3]
    first, second, third = rows
    assert first["siteId"] == 3  # metadata column: from the record
    assert first["var_siteId"] == 44  # the variable: from recordData
    assert first["aeterm"] == "Headache"
    assert first["aeser"] is True
    assert first["weight"] is None  # another form's variable: null, not absent
    assert first["dateCreated"] == datetime(2024, 3, 1, 10, 0, 0, tzinfo=UTC)
    assert "retired" not in first  # a deleted variable has no column
    assert second["vsdt"] == date(2024, 3, 5)
    assert second["weight"] == 71.5
    assert second["pulse"] is None  # garbage in an INTEGER field
    assert second["var_siteId"] is None
    assert third["aeterm"] is None  # blank
    assert third["aeser"] is False
    assert third["dateModified"] is None
    assert third["deleted"] is True


def test_records_table_restricted_to_form_keys() -> None:
    table = records_table([RECORDS[1]], VARIABLES, ["VS"])
    assert table.column_names == [*META_NAMES, "vsdt", "weight", "aeterm", "pulse"]
    assert table.schema.field("aeterm").type == pa.string()  # MEMO: text as well
    assert table.to_pylist()[0]["aeterm"] is None


def test_records_table_empty_keeps_the_schema() -> None:
    table = records_table([], VARIABLES, ["AE"])
    assert table.num_rows == 0
    assert table.column_names == [*META_NAMES, "aeterm", "aeser", "var_siteId"]


# --------------------------------------------------------------------------------- explain


def _explained(exc: BaseException) -> str:
    error = explain(exc, "listing records of study PHX-101")
    assert isinstance(error, ImednetFlowsError)
    assert error.__cause__ is exc  # the SDK's exception stays reachable for debugging
    message = str(error)
    assert message.startswith("listing records of study PHX-101 failed: ")
    return message


def test_explain_401_points_at_the_keys() -> None:
    message = _explained(UnauthorizedError({"metadata": {}}, status_code=401))
    assert "HTTP 401" in message
    assert "IMEDNET_API_KEY" in message and "IMEDNET_SECURITY_KEY" in message
    assert "imednet-api-key" in message  # the Secret block, for deployments


def test_explain_403_points_at_the_study_key_and_permissions() -> None:
    message = _explained(ForbiddenError({"metadata": {}}, status_code=403))
    assert "HTTP 403" in message
    assert "study key" in message and "case-sensitive" in message
    assert "permissions" in message


def test_explain_404_names_the_status() -> None:
    message = _explained(NotFoundError({"metadata": {}}, status_code=404))
    assert "HTTP 404" in message


def test_explain_404_says_what_to_do() -> None:
    message = _explained(NotFoundError({"metadata": {}}, status_code=404))
    assert "check" in message.lower()


def test_explain_400_quotes_the_api_message() -> None:
    body = {
        "metadata": {
            "status": "BAD_REQUEST",
            "error": {"code": "INVALID_FILTER", "description": "unknown attribute 'sitId'"},
        }
    }
    message = _explained(BadRequestError(body, status_code=400))
    assert "HTTP 400" in message
    assert "unknown attribute 'sitId'" in message


def test_explain_400_without_error_details_shows_the_body() -> None:
    message = _explained(BadRequestError("plain text body", status_code=400))
    assert "HTTP 400" in message and "plain text body" in message


def test_explain_429_says_lower_the_concurrency() -> None:
    message = _explained(RateLimitError({"metadata": {}}, status_code=429))
    assert "HTTP 429" in message
    assert "IMEDNET_FLOWS_MAX_CONCURRENCY" in message and "later" in message


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        (503, "HTTP 503"),
        (502, "HTTP 502"),
        pytest.param(None, "HTTP 5xx"),
    ],
)
def test_explain_5xx_says_try_later(status: int | None, shown: str) -> None:
    message = _explained(ServerError({"metadata": {}}, status_code=status))
    assert shown in message
    assert "try again later" in message


@pytest.mark.parametrize(
    "exc", [RequestError("gave up"), httpx.ConnectError("refused"), httpx.ReadTimeout("slow")]
)
def test_explain_network_errors_point_at_the_base_url(exc: BaseException) -> None:
    message = _explained(exc)
    assert "could not be reached" in message
    assert "IMEDNET_BASE_URL" in message


def test_explain_truncated_json() -> None:
    exc = json.JSONDecodeError("Expecting value", '{"data": [', 10)
    message = _explained(exc)
    assert "incomplete (truncated)" in message


def test_explain_anything_else_names_the_exception() -> None:
    message = _explained(KeyError("pagination"))
    assert "KeyError: 'pagination'" in message
