"""Record batches without Prefect: validate_batch and the landing comparison as pure
functions, post_batch and wait_for_job against an emulator over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from imednet_flows.edc.batches import JobTimeout, post_batch, wait_for_job
from imednet_flows.edc.client import Credentials, ImednetClient
from imednet_flows.edc.errors import ImednetFlowsError
from imednet_flows.edc.landing import Landing, data_contains, landed_rows, values_match
from imednet_flows.edc.validation import (
    Mode,
    RecordItem,
    detect_mode,
    validate_batch,
    value_problem,
)
from imednet_flows.emulator import DEMO_API_KEY, DEMO_SECURITY_KEY, Emulator, EmulatorServer
from imednet_flows.timestamps import format_timestamp
from tests.conftest import SMALL
from tests.upsert_helpers import same_value

K = SMALL.study_key
SINCE = datetime(2025, 6, 5, 12, 0, 0, tzinfo=UTC)
BEFORE, AT, AFTER = "2025-06-05 11:59:59", "2025-06-05 12:00:00", "2025-06-05 12:00:05"


# --------------------------------------------------------------------------- validate_batch


@pytest.fixture(scope="module")
def study() -> dict[str, list[dict[str, Any]]]:
    """The seeded study's reference lists, straight from the emulator (no HTTP)."""
    emulator = Emulator([SMALL])
    routes = ("forms", "variables", "sites", "subjects", "intervals", "records")
    return {route: emulator.rows(K, route) for route in routes}


def check(study: dict[str, list[dict[str, Any]]], rows: list[Any]) -> tuple[list, list[str]]:
    return validate_batch(
        rows,
        study["forms"],
        study["variables"],
        study["sites"],
        study["subjects"],
        study["intervals"],
    )


def test_valid_rows_in_all_four_modes(study: dict[str, list[dict[str, Any]]]) -> None:
    subject = study["subjects"][0]
    ae = next(r for r in study["records"] if r["formKey"] == "AE")
    keys = {s["subjectKey"] for s in study["subjects"]}
    rows = [
        {"formKey": "AE", "recordId": ae["recordId"], "data": {"aedur": "3", "aeongo": False}},
        {
            "formKey": "VS",
            "subjectKey": subject["subjectKey"],
            "intervalName": "Week 2",
            "data": {"vstemp": 36.6, "vssysbp": 120, "vsdt": "2025-01-31"},
        },
        {"formId": ae["formId"], "subjectId": subject["subjectId"], "data": {"aeterm": "x"}},
        {"formKey": "REG", "siteName": study["sites"][0]["siteName"], "data": {"regyob": 1970}},
        {
            "formKey": "REG",
            "siteId": study["sites"][0]["siteId"],
            "subjectKey": "01-NEW",
            "data": {"reginit": "ABC", "regcmt": None},
        },
    ]
    items, errors = check(study, rows)
    assert errors == []
    assert [detect_mode(i, keys) for i in items] == [
        Mode.UPDATE_EXISTING,
        Mode.UPDATE_SCHEDULED,
        Mode.NEW_RECORD,
        Mode.REGISTER,
        Mode.REGISTER,
    ]
    assert items[2].to_api() == {
        "formId": ae["formId"],
        "subjectId": subject["subjectId"],
        "data": {"aeterm": "x"},
    }


def test_every_problem_of_every_row_is_reported(study: dict[str, list[dict[str, Any]]]) -> None:
    subject = study["subjects"][0]["subjectKey"]
    other_site = next(
        s["siteName"] for s in study["sites"] if s["siteId"] != study["subjects"][0]["siteId"]
    )
    rows = [
        "not a row",
        {"fromKey": "AE", "subjectKey": subject, "data": {"aeterm": "x"}},
        {"formKey": "AE", "formId": 1, "subjectKey": subject, "data": {"aeterm": "x"}},
        {"formKey": "AE", "subjectKey": subject, "siteName": other_site, "data": {"aeterm": "x"}},
        {
            "formKey": "REG",
            "siteName": "Minneapolis",
            "subjectKey": "N-1",
            "data": {"reginit": "A"},
        },
        {
            "formKey": "REG",
            "siteName": "Minneapolis",
            "subjectKey": "N-1",
            "data": {"reginit": "B"},
        },
        {"formKey": "AE", "subjectKey": subject, "data": {}},
        {"formKey": "AE", "recordId": True, "data": {"aeterm": ["a"], "aedur": 2.5, "bogus": 1}},
    ]
    items, errors = check(study, rows)
    assert items == []
    by_row: dict[int, list[str]] = {}
    for error in errors:
        number, text = error.split(": ", 1)
        by_row.setdefault(int(number.removeprefix("row ")), []).append(text)
    assert sorted(by_row) == [1, 2, 3, 4, 6, 7, 8]  # row 5 is fine; row 6 repeats its subject
    assert "not a JSON object" in by_row[1][0]
    assert any("unexpected field 'fromKey'" in t for t in by_row[2])
    assert any("no formKey or formId" in t for t in by_row[2])
    assert any("unknown form: formId names no form of this study" in t for t in by_row[3])
    assert "the subject is at another site than siteName names" in by_row[4]
    assert any("registered by row 5" in t for t in by_row[6])
    assert by_row[7] == ["data is empty: nothing to write"]
    row8 = " | ".join(by_row[8])
    assert "recordId: Input should be a valid integer, not a boolean" in row8
    assert "'bogus'" in row8 and "cannot be a TEXT value" in row8
    assert "aedur (INTEGER): not an integer (got a decimal number)" in row8
    assert "a list cannot be a TEXT value" in row8
    # rows are clinical data: no value of theirs is repeated
    assert not any(v in e for e in errors for v in ("not a row", "N-1", other_site, subject))


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("INTEGER", [7, "-3", " 12 ", None, ""], [2.5, "1.5", True, "x"]),
        ("NUMBER", [7, 2.5, "1e3", ".5", "-0.25"], ["1,5", True, "abc", float("nan")]),
        ("DATE", ["2025-02-28"], ["2025-02-30", "2025/02/01", "20250201", 20250201]),
        ("CHECKBOX", [True, False], ["true", 1, "yes"]),
        ("RADIO", ["1", "M"], [1, False]),
        ("TEXT", ["anything"], [5, {"a": 1}]),
        ("MEMO", ["long text"], [[1, 2]]),
    ],
)
def test_value_types(kind: str, good: list[Any], bad: list[Any]) -> None:
    assert [value_problem(kind, v) for v in good] == [None] * len(good)
    assert all(value_problem(kind, v) for v in bad), kind


# --------------------------------------------------------------------------- landing comparison


def item(**fields: Any) -> RecordItem:
    return RecordItem.model_validate(fields)


def rec(record_id: int, data: dict[str, Any], modified: str = AFTER, **fields: Any) -> dict:
    return {
        "recordId": record_id,
        "recordOid": f"REC-{record_id}",
        "formKey": "AE",
        "formId": 5,
        "subjectKey": "01-001",
        "subjectId": 1,
        "intervalId": 0,
        "deleted": False,
        "dateCreated": fields.pop("created", BEFORE),
        "dateModified": modified,
        "recordData": data,
        **fields,
    }


@pytest.mark.parametrize(
    ("posted", "seen", "same"),
    [
        (5, 5, True),
        (5, "5", True),
        (5, "5.0", True),
        (5, 6, False),
        (2.5, "2.5", True),
        (True, True, True),
        (True, "true", True),
        (True, 1, False),
        (False, "false", True),
        ("120", 120, True),
        ("abc", "abc", True),
        ("abc", "ABC", False),
        (None, "", True),
        ("", None, True),
        ("x", None, False),
    ],
)
def test_values_match(posted: Any, seen: Any, same: bool) -> None:
    assert values_match(posted, seen) is same


def test_data_contains_needs_every_posted_key() -> None:
    assert data_contains({"a": "1", "b": "x"}, {"a": 1})
    assert not data_contains({"a": "1"}, {"a": 1, "b": "x"})
    assert not data_contains(None, {"a": 1})


def verdict(found: Landing) -> tuple[set[int], set[int], set[int]]:
    return set(found.landed), set(found.absent), set(found.undecided)


def test_update_lands_only_with_fresh_timestamp_and_data() -> None:
    items = [
        item(formKey="AE", recordId=1, data={"aeterm": "new"}),
        item(formKey="AE", recordId=2, data={"aeterm": "new"}),
        item(formKey="AE", recordId=3, data={"aeterm": "new"}),
        item(formKey="AE", recordOid="REC-4", data={"aeterm": "new"}),
        item(formKey="AE", recordId=5, data={"aeterm": "new"}),
    ]
    records = [
        rec(1, {"aeterm": "new"}, AT),  # same second as the POST: landed
        rec(2, {"aeterm": "new"}, BEFORE),  # already so before the POST: no trace of it
        rec(3, {"aeterm": "old"}, AFTER),  # changed since, not to these values: who knows
        rec(4, {"aeterm": "new"}, AFTER),
    ]  # record 5 did not change since the POST: not even listed
    assert verdict(landed_rows(items, records, SINCE)) == ({0, 3}, {1, 4}, {2})


def test_rows_for_one_record_are_judged_together() -> None:
    items = [
        item(formKey="AE", recordId=1, data={"aeterm": "first", "aedur": 1}),
        item(formKey="AE", recordId=1, data={"aeterm": "second"}),
    ]
    merged = rec(1, {"aeterm": "second", "aedur": 1})
    assert verdict(landed_rows(items, [merged], SINCE)) == ({0, 1}, set(), set())
    # the first row's value alone is no evidence: the merged result is what must show
    partial = rec(1, {"aeterm": "first", "aedur": 1})
    assert verdict(landed_rows(items, [partial], SINCE)) == (set(), set(), {0, 1})


def test_scheduled_rows_resolve_interval_names() -> None:
    row = item(formKey="VS", subjectKey="01-001", intervalName="Week 2", data={"vstemp": 36.6})
    slot = rec(9, {"vstemp": "36.6"}, formKey="VS", intervalId=3)
    elsewhere = rec(10, {"vstemp": "36.6"}, formKey="VS", intervalId=4)
    assert verdict(landed_rows([row], [slot], SINCE, {"Week 2": 3})) == ({0}, set(), set())
    assert verdict(landed_rows([row], [elsewhere], SINCE, {"Week 2": 3})) == (set(), {0}, set())
    assert verdict(landed_rows([row], [slot], SINCE, {})) == (set(), set(), {0})


def test_new_records_match_one_to_one() -> None:
    twins = [
        item(formKey="AE", subjectKey="01-001", data={"aeterm": "Rash"}),
        item(formKey="AE", subjectKey="01-001", data={"aeterm": "Rash"}),
    ]
    one = [rec(20, {"aeterm": "Rash"}, created=AFTER)]
    assert len(landed_rows(twins, one, SINCE).landed) == 1
    both = [*one, rec(21, {"aeterm": "Rash"}, created=AFTER)]
    assert landed_rows(twins, both, SINCE).landed == {0, 1}
    old = [rec(22, {"aeterm": "Rash"}, created=BEFORE)]
    assert verdict(landed_rows(twins, old, SINCE)) == (set(), {0, 1}, set())
    # a record created since that shows other values, or was deleted since: a trace
    other = [rec(23, {"aeterm": "Itch"}, created=AFTER)]
    assert verdict(landed_rows(twins, other, SINCE)) == (set(), set(), {0, 1})
    deleted = [rec(24, {"aeterm": "Rash"}, created=AFTER, deleted=True)]
    assert verdict(landed_rows(twins, deleted, SINCE)) == (set(), set(), {0, 1})


def test_new_record_matching_is_not_greedy() -> None:
    general = item(formKey="AE", subjectKey="01-001", data={"aeterm": "Rash"})
    specific = item(formKey="AE", subjectKey="01-001", data={"aeterm": "Rash", "aedur": 3})
    records = [
        rec(30, {"aeterm": "Rash", "aedur": 3}, created=AFTER),
        rec(31, {"aeterm": "Rash", "aedur": ""}, created=AFTER),
    ]
    assert landed_rows([general, specific], records, SINCE).landed == {0, 1}


def test_what_cannot_be_decided() -> None:
    anonymous = item(formKey="REG", siteName="Minneapolis", data={"reginit": "A"})
    no_dates = item(formKey="AE", recordId=1, data={"aeterm": "x"})
    found = landed_rows([anonymous, no_dates], [rec(1, {"aeterm": "x"}, "")], SINCE)
    assert verdict(found) == (set(), set(), {0, 1})


POSTED = {"aedur": 3, "aeongo": True, "aeser": False, "vstemp": 36.6, "aestdt": "2025-01-31"}
AS_STRINGS = {"aedur": "3", "aeongo": "true", "aeser": "false", "vstemp": "36.6"}


@pytest.mark.parametrize("form", ["typed", "strings"])
def test_read_back_values_in_either_form(form: str) -> None:
    """The emulator echoes typed JSON; the API sends every value as a string. Both land,
    and a value that differs is a trace (undecided) in both forms, never absent."""
    shown = {**POSTED, **AS_STRINGS} if form == "strings" else dict(POSTED)
    cleared = {"aeterm": ""} if form == "strings" else {"aeterm": None}
    data = {**POSTED, "aeterm": None}
    rows = [
        item(formKey="AE", recordId=1, data=data),
        item(formKey="VS", subjectKey="01-001", intervalId=3, data=data),
        item(formKey="AE", subjectKey="01-002", data=data),
        item(formKey="AE", recordId=4, data=data),
    ]
    changed = {**shown, "aedur": "4" if form == "strings" else 4}
    records = [
        rec(1, {**shown, **cleared}),
        rec(2, {**shown, **cleared}, formKey="VS", intervalId=3),
        rec(3, {**shown, **cleared}, created=AFTER, subjectKey="01-002", subjectId=2),
        rec(4, {**changed, **cleared}),
    ]
    assert verdict(landed_rows(rows, records, SINCE)) == ({0, 1, 2}, set(), {3})


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture
def client(fresh_emulator: EmulatorServer) -> Iterator[ImednetClient]:
    credentials = Credentials(fresh_emulator.base_url, DEMO_API_KEY, DEMO_SECURITY_KEY)
    with ImednetClient(credentials) as api:
        yield api


def _new_ae(server: EmulatorServer, term: str) -> RecordItem:
    subject = server.emulator.rows(K, "subjects")[0]["subjectKey"]
    return item(formKey="AE", subjectKey=subject, data={"aeterm": term})


def _count(server: EmulatorServer, term: str) -> int:
    return sum(r["recordData"].get("aeterm") == term for r in server.emulator.rows(K, "records"))


def _posts(server: EmulatorServer) -> list[Any]:
    return [e for e in server.emulator.requests() if e.method == "POST"]


def test_without_jobs_listing_the_read_back_waits_for_the_late_job(
    fresh_emulator: EmulatorServer, client: ImednetClient
) -> None:
    """A server without GET jobs (404): re-reading until the late job lands, no resend."""
    fresh_emulator.emulator.config.job_delay = 0.5
    fresh_emulator.emulator.config.jobs_listing = False
    fresh_emulator.emulator.add_fault("commit_then_502", route="records", method="POST")
    outcome = post_batch(client, K, [_new_ae(fresh_emulator, "Blind")], poll_interval=0.05)
    assert (outcome.job, outcome.confirmed_rows) == (None, [1])
    assert len(_posts(fresh_emulator)) == 1 and _count(fresh_emulator, "Blind") == 1


def test_a_second_failure_stops_after_one_resend(
    fresh_emulator: EmulatorServer, client: ImednetClient
) -> None:
    fresh_emulator.emulator.add_fault("status", status=503, route="records", method="POST", count=5)
    with pytest.raises(ImednetFlowsError, match=r"rows 1-2 .* still not in the study"):
        post_batch(
            client,
            K,
            [_new_ae(fresh_emulator, "A"), _new_ae(fresh_emulator, "B")],
            poll_interval=0.05,
        )
    assert [e.status for e in _posts(fresh_emulator)] == [503, 503]
    assert _count(fresh_emulator, "A") == _count(fresh_emulator, "B") == 0


def test_only_missing_rows_are_resent(
    fresh_emulator: EmulatorServer, client: ImednetClient
) -> None:
    """Row 1 is already in the study (an earlier, interrupted POST of the same batch);
    after a 503 only row 2 goes out again."""
    landed = _new_ae(fresh_emulator, "Landed")
    missing = _new_ae(fresh_emulator, "Missing")
    fresh_emulator.emulator.add_fault("status", status=503, route="records", method="POST")
    if time.time() % 1 > 0.7:  # stamp the landed row in the second post_batch starts in
        time.sleep(0.35)
    fresh_emulator.emulator.submit(K, [landed.to_api()])  # as if committed behind our back
    outcome = post_batch(client, K, [landed, missing], first_row=11, poll_interval=0.05)
    assert (outcome.confirmed_rows, outcome.resent_rows) == ([11], [12])
    assert [e.items for e in _posts(fresh_emulator)] == [None, 1]
    assert _count(fresh_emulator, "Landed") == _count(fresh_emulator, "Missing") == 1


def test_undecidable_rows_stop_the_batch(
    fresh_emulator: EmulatorServer, client: ImednetClient
) -> None:
    site = fresh_emulator.emulator.rows(K, "sites")[0]["siteName"]
    anonymous = item(formKey="REG", siteName=site, data={"reginit": "ZZ"})
    fresh_emulator.emulator.add_fault("commit_then_502", route="records", method="POST")
    with pytest.raises(ImednetFlowsError, match=r"nothing was sent again\. Undecided: rows 2,"):
        post_batch(client, K, [_new_ae(fresh_emulator, "Known"), anonymous], poll_interval=0.05)
    assert len(_posts(fresh_emulator)) == 1


def test_a_target_changed_by_someone_else_is_not_resent(
    fresh_emulator: EmulatorServer, client: ImednetClient
) -> None:
    """Our job failed, but another user changed the record since the POST: the record shows
    neither our values nor no change at all, so the row is undecided and not sent again."""
    emulator = fresh_emulator.emulator
    target = next(r for r in emulator.rows(K, "records") if r["formKey"] == "AE")
    emulator.add_job_outcome("failed")
    emulator.add_fault("commit_then_502", route="records", method="POST")
    submit = emulator.submit

    def and_another_user_edits(*args: Any, **kwargs: Any) -> Any:
        job = submit(*args, **kwargs)
        submit(K, [{"formKey": "AE", "recordId": target["recordId"], "data": {"aeterm": "B"}}])
        return job

    emulator.submit = and_another_user_edits  # type: ignore[method-assign]
    row = item(formKey="AE", recordId=target["recordId"], data={"aeterm": "ours"})
    with pytest.raises(ImednetFlowsError, match=r"Undecided: rows 1, because every job"):
        post_batch(client, K, [row], poll_interval=0.05)
    assert len(_posts(fresh_emulator)) == 1


def test_the_servers_clock_decides_what_changed_since_the_post(
    fresh_emulator: EmulatorServer, client: ImednetClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's clock runs an hour behind this machine's: its timestamps on the applied
    rows are still recognised as "since the POST", so nothing is sent twice."""
    clock = fresh_emulator.emulator.state.clock
    monkeypatch.setattr(
        clock, "now", lambda: format_timestamp(datetime.now(UTC) - timedelta(hours=1))
    )
    fresh_emulator.emulator.add_fault("commit_then_502", route="records", method="POST")
    target = next(r for r in fresh_emulator.emulator.rows(K, "records") if r["formKey"] == "AE")
    rows = [
        item(formKey="AE", recordId=target["recordId"], data={"aeterm": "behind"}),
        _new_ae(fresh_emulator, "Behind"),
    ]
    outcome = post_batch(client, K, rows, poll_interval=0.05)
    assert (outcome.job, outcome.confirmed_rows, outcome.resent_rows) == (None, [1, 2], [])
    assert len(_posts(fresh_emulator)) == 1 and _count(fresh_emulator, "Behind") == 1


def test_wait_for_job_terminal_states_and_timeout(
    fresh_emulator: EmulatorServer, client: ImednetClient
) -> None:
    emulator = fresh_emulator.emulator
    for outcome in ("cancelled", "stuck"):
        emulator.add_job_outcome(outcome)
    cancelled = emulator.submit(K, [_new_ae(fresh_emulator, "C").to_api()]).batch_id
    stuck = emulator.submit(K, [_new_ae(fresh_emulator, "S").to_api()]).batch_id
    assert wait_for_job(client, K, cancelled, 5, 0.01)["state"] == "cancelled"
    with pytest.raises(JobTimeout, match=stuck) as caught:
        wait_for_job(client, K, stuck, 0.2, 0.05)
    assert caught.value.state == "PROCESSING"


@pytest.mark.parametrize(
    ("posted", "shown", "same"),
    [
        (7, 7, True),
        (7, "7", True),
        (36.6, "36.6", True),
        (True, "true", True),
        (False, True, False),
        (None, "", True),
        ("x", "x", True),
        (7, "8", False),
    ],
)
def test_the_tests_compare_either_read_back_form(posted: Any, shown: Any, same: bool) -> None:
    assert same_value(posted, shown) is same
