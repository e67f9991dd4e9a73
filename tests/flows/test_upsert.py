"""The Record Update workflow under a real Prefect API, against the emulator, over real HTTP.

Expected values come from the emulator's own rows (targets picked from them, results read
from them afterwards), never from the code under test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.utilities.callables import parameter_schema

from flows.upsert_records import create_or_update_records
from imednet_flows.edc.errors import ImednetFlowsError
from imednet_flows.emulator import DEMO_API_KEY, DEMO_SECURITY_KEY, EmulatorServer
from tests.conftest import SMALL

pytestmark = pytest.mark.usefixtures("prefect_api")
Env = Callable[[EmulatorServer], None]
K = SMALL.study_key
FAST = {"poll_interval": 0.05, "timeout": 20}


# --------------------------------------------------------------------------- helpers


def rows(server: EmulatorServer, route: str) -> list[dict[str, Any]]:
    return server.emulator.rows(K, route)


def posts(server: EmulatorServer) -> list[Any]:
    return [e for e in server.emulator.requests() if e.method == "POST"]


def record(server: EmulatorServer, record_id: int) -> dict[str, Any]:
    return next(r for r in rows(server, "records") if r["recordId"] == record_id)


def revisions(server: EmulatorServer, record_id: int) -> int:
    return sum(1 for r in rows(server, "recordRevisions") if r["recordId"] == record_id)


def live(server: EmulatorServer, form_key: str) -> list[dict[str, Any]]:
    return [r for r in rows(server, "records") if r["formKey"] == form_key and not r["deleted"]]


def interval_id(server: EmulatorServer, name: str) -> int:
    return next(i["intervalId"] for i in rows(server, "intervals") if i["intervalName"] == name)


def a_subject(server: EmulatorServer) -> dict[str, Any]:
    return next(s for s in rows(server, "subjects") if not s["deleted"])


def new_ae_row(subject_key: str, term: str) -> dict[str, Any]:
    return {"formKey": "AE", "subjectKey": subject_key, "data": {"aeterm": term, "aedur": 4}}


def records_like(server: EmulatorServer, subject_key: str, term: str) -> list[dict[str, Any]]:
    return [
        r
        for r in rows(server, "records")
        if r["subjectKey"] == subject_key and r["recordData"].get("aeterm") == term
    ]


# --------------------------------------------------------------------------- the four modes


def test_update_existing_record(fresh_emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(fresh_emulator)
    target = live(fresh_emulator, "AE")[0]
    before = revisions(fresh_emulator, target["recordId"])
    data = {"aeterm": "Migraine", "aedur": 7, "aeongo": True}
    result = create_or_update_records(
        K, [{"formKey": "AE", "recordId": target["recordId"], "data": data}], **FAST
    )
    after = record(fresh_emulator, target["recordId"])
    # read back as the API returns values: text (api-behaviour.md §3, the spec's ExampleRecordsList)
    assert {k: after["recordData"][k] for k in data} == {
        "aeterm": "Migraine",
        "aedur": "7",
        "aeongo": "true",
    }
    assert revisions(fresh_emulator, target["recordId"]) == before + 1
    assert len(posts(fresh_emulator)) == 1
    job = next(iter(fresh_emulator.emulator.jobs.values()))
    assert [(b.batch_id, b.state, b.rows) for b in result.batches] == [
        (job.batch_id, "COMPLETED", 1)
    ]
    assert result.rows_by_mode == {"update existing record": 1}


def test_scheduled_upsert_updates_the_slot(
    fresh_emulator: EmulatorServer, imednet_env: Env
) -> None:
    imednet_env(fresh_emulator)
    week2 = interval_id(fresh_emulator, "Week 2")
    target = next(r for r in live(fresh_emulator, "VS") if r["intervalId"] == week2)
    count, before = (
        len(rows(fresh_emulator, "records")),
        revisions(fresh_emulator, target["recordId"]),
    )
    row = {
        "formKey": "VS",
        "subjectKey": target["subjectKey"],
        "intervalName": "Week 2",
        "data": {"vssysbp": 131, "vstemp": "36.9"},
    }
    result = create_or_update_records(K, [row], **FAST)
    stored = record(fresh_emulator, target["recordId"])["recordData"]
    assert (stored["vssysbp"], stored["vstemp"]) == ("131", "36.9")
    assert len(rows(fresh_emulator, "records")) == count
    assert revisions(fresh_emulator, target["recordId"]) == before + 1
    assert result.rows_by_mode == {"update scheduled record": 1}


def test_new_record(fresh_emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(fresh_emulator)
    subject = a_subject(fresh_emulator)["subjectKey"]
    count = len(rows(fresh_emulator, "records"))
    result = create_or_update_records(
        K, [new_ae_row(subject, "Nausea (new)")], email_notify="dm@example.org", **FAST
    )
    created = records_like(fresh_emulator, subject, "Nausea (new)")
    assert len(created) == 1 and created[0]["formKey"] == "AE"
    assert len(rows(fresh_emulator, "records")) == count + 1
    assert revisions(fresh_emulator, created[0]["recordId"]) == 1
    assert result.rows_by_mode == {"new record": 1}
    (job,) = fresh_emulator.emulator.jobs.values()
    assert job.email_notify == "dm@example.org"


def test_registration(fresh_emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(fresh_emulator)
    site = rows(fresh_emulator, "sites")[0]
    key = "01-777"
    assert key not in {s["subjectKey"] for s in rows(fresh_emulator, "subjects")}
    data = {"regdt": "2025-05-01", "reginit": "ABC", "regyob": 1980, "regelig": True}
    row = {"formKey": "REG", "siteName": site["siteName"], "subjectKey": key, "data": data}
    result = create_or_update_records(K, [row], **FAST)
    subjects = [s for s in rows(fresh_emulator, "subjects") if s["subjectKey"] == key]
    assert len(subjects) == 1 and subjects[0]["siteId"] == site["siteId"]
    created = [r for r in rows(fresh_emulator, "records") if r["subjectKey"] == key]
    assert len(created) == 1 and created[0]["recordData"] == {
        "regdt": "2025-05-01",
        "reginit": "ABC",
        "regyob": "1980",
        "regelig": "true",
    }
    assert revisions(fresh_emulator, created[0]["recordId"]) == 1
    assert result.rows_by_mode == {"register subject": 1}


# --------------------------------------------------------------------------- validation


def test_every_bad_row_is_listed_and_nothing_is_posted(
    fresh_emulator: EmulatorServer, imednet_env: Env
) -> None:
    imednet_env(fresh_emulator)
    subject = a_subject(fresh_emulator)["subjectKey"]
    good = live(fresh_emulator, "AE")[0]["recordId"]
    bad = [
        {"formKey": "AE", "recordId": good, "data": {"aeterm": "fine"}},  # row 1 is valid
        {"formKey": "NOPE", "subjectKey": subject, "data": {"x": "1"}},
        {"formKey": "AE", "subjectKey": subject, "data": {"notavariable": "1"}},
        {"formKey": "REG", "siteName": "Atlantis", "data": {"reginit": "X"}},
        {"formKey": "AE", "subjectKey": "99-999", "data": {"aeterm": "x"}},
        {"formKey": "VS", "subjectKey": subject, "intervalName": "Week 99", "data": {"vstemp": 1}},
        {"formKey": "AE", "subjectKey": subject, "data": {"aedur": "three"}},
        {"formKey": "VS", "subjectKey": subject, "data": {"vstemp": "warm"}},
        {"formKey": "AE", "subjectKey": subject, "data": {"aestdt": "05/01/2025"}},
        {"formKey": "AE", "subjectKey": subject, "data": {"aeongo": "yes"}},
        {"formKey": "AE", "subjectKey": subject, "data": {"aeterm": 12}},
        {"subjectKey": subject, "data": {"aeterm": "x"}},
        {"formKey": "AE", "subjectKey": subject},
        {"formKey": "AE", "data": {"aeterm": "x"}},
        {"formKey": "AE", "subjectKey": subject, "data": {"aeterm": "x"}, "colour": "red"},
    ]
    with pytest.raises(ImednetFlowsError) as caught:
        create_or_update_records(K, bad, **FAST)
    message = str(caught.value)
    for number in range(2, len(bad) + 1):
        assert f"\nrow {number}: " in message, number
    assert "row 1:" not in message
    for phrase in (
        "row 2: unknown form: formKey names no form of this study",
        "row 3: unknown variable(s) 'notavariable' on form AE",
        "row 4: unknown site: siteName names no site of this study",
        "row 5: unknown subject: subjectKey names no subject of this study",
        "row 6: unknown interval: intervalName names no interval of this study",
        "row 7: aedur (INTEGER): not an integer (got text that does not fit)",
        "row 8: vstemp (NUMBER): not a number (got text that does not fit)",
        "row 9: aestdt (DATE): not a date in YYYY-MM-DD form (got text that does not fit)",
        "row 10: aeongo (CHECKBOX): not true or false (got text that does not fit)",
        "row 11: aeterm (TEXT): not text (quote it) (got a whole number)",
        "no formKey or formId",
        "no data",
        "nothing places the row",
        "unexpected field 'colour'",
        "nothing was sent",
    ):
        assert phrase in message, phrase
    # the rows' values are clinical data: none of them is repeated back
    for value in ("NOPE", "Atlantis", "99-999", "Week 99", "three", "warm", "05/01/2025"):
        assert value not in message, value
    assert "'yes'" not in message and "'red'" not in message and subject not in message
    assert posts(fresh_emulator) == []


def test_empty_batch_posts_nothing(fresh_emulator: EmulatorServer, imednet_env: Env) -> None:
    """An empty list is what the run form sends when no row was added: with no rows file
    either, the run is refused, before any request (an empty rows file still posts
    nothing and succeeds)."""
    imednet_env(fresh_emulator)
    with pytest.raises(ImednetFlowsError, match="no rows given: set records"):
        create_or_update_records(K, [], **FAST)
    assert fresh_emulator.emulator.requests() == []


def test_batches_of_batch_size(fresh_emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(fresh_emulator)
    targets = live(fresh_emulator, "AE")[:7]
    assert len(targets) == 7
    batch = [
        {"formKey": "AE", "recordId": r["recordId"], "data": {"aeterm": f"term {i}"}}
        for i, r in enumerate(targets)
    ]
    state = create_or_update_records(K, batch, batch_size=3, return_state=True, **FAST)
    result = state.result()
    assert [e.items for e in posts(fresh_emulator)] == [3, 3, 1]
    assert [(b.first_row, b.last_row, b.state) for b in result.batches] == [
        (1, 3, "COMPLETED"),
        (4, 6, "COMPLETED"),
        (7, 7, "COMPLETED"),
    ]
    for i, r in enumerate(targets):
        assert record(fresh_emulator, r["recordId"])["recordData"]["aeterm"] == f"term {i}"
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["upsert-records-small"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    table = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert [(r["rows"], r["batchId"], r["state"]) for r in table] == [
        (f"{b.first_row}-{b.last_row}", b.batch_id, "COMPLETED") for b in result.batches
    ]


# --------------------------------------------------------------------------- lost answers


@pytest.mark.parametrize("job_delay", [0.0, 0.5], ids=["job-done", "job-lands-later"])
def test_commit_then_502_applies_once(
    fresh_emulator: EmulatorServer, imednet_env: Env, job_delay: float
) -> None:
    imednet_env(fresh_emulator)
    fresh_emulator.emulator.config.job_delay = job_delay
    subject = a_subject(fresh_emulator)["subjectKey"]
    target = live(fresh_emulator, "AE")[1]
    count, before = (
        len(rows(fresh_emulator, "records")),
        revisions(fresh_emulator, target["recordId"]),
    )
    fresh_emulator.emulator.add_fault("commit_then_502", route="records", method="POST")
    batch = [
        {"formKey": "AE", "recordId": target["recordId"], "data": {"aeterm": "after 502"}},
        new_ae_row(subject, "Rash (502)"),
    ]
    result = create_or_update_records(K, batch, **FAST)
    assert len(posts(fresh_emulator)) == 1
    assert len(fresh_emulator.emulator.jobs) == 1
    assert len(records_like(fresh_emulator, subject, "Rash (502)")) == 1
    assert len(rows(fresh_emulator, "records")) == count + 1
    assert revisions(fresh_emulator, target["recordId"]) == before + 1
    assert record(fresh_emulator, target["recordId"])["recordData"]["aeterm"] == "after 502"
    (outcome,) = result.batches
    assert (outcome.state, outcome.confirmed_rows, outcome.resent_rows) == ("CONFIRMED", [1, 2], [])


def test_503_before_commit_is_resent_once(fresh_emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(fresh_emulator)
    subject = a_subject(fresh_emulator)["subjectKey"]
    fresh_emulator.emulator.add_fault("status", status=503, route="records", method="POST")
    result = create_or_update_records(K, [new_ae_row(subject, "Cough (503)")], **FAST)
    assert [e.status for e in posts(fresh_emulator)] == [503, 202]
    assert len(records_like(fresh_emulator, subject, "Cough (503)")) == 1
    (outcome,) = result.batches
    assert (outcome.state, outcome.resent_rows) == ("COMPLETED", [1])
    assert outcome.batch_id == next(iter(fresh_emulator.emulator.jobs))


def test_dropped_connection_after_commit(fresh_emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(fresh_emulator)
    subject = a_subject(fresh_emulator)["subjectKey"]
    fresh_emulator.emulator.add_fault("drop", route="records", method="POST")
    result = create_or_update_records(K, [new_ae_row(subject, "Fever (drop)")], **FAST)
    assert len(posts(fresh_emulator)) == 1
    assert len(records_like(fresh_emulator, subject, "Fever (drop)")) == 1
    assert result.batches[0].state == "CONFIRMED"


def test_429_is_resent_and_lands_once(fresh_emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(fresh_emulator)
    subject = a_subject(fresh_emulator)["subjectKey"]
    fresh_emulator.emulator.add_fault("status", status=429, route="records", method="POST")
    result = create_or_update_records(K, [new_ae_row(subject, "Itch (429)")], **FAST)
    assert [e.status for e in posts(fresh_emulator)] == [429, 202]
    assert len(records_like(fresh_emulator, subject, "Itch (429)")) == 1
    assert result.batches[0].state == "COMPLETED" and result.batches[0].resent_rows == []


# --------------------------------------------------------------------------- undecided answers


def ae_updates(server: EmulatorServer, n: int, term: str, skip: int = 0) -> list[dict[str, Any]]:
    """`n` update rows, each for a different live AE record."""
    targets = live(server, "AE")[skip : skip + n]
    assert len(targets) == n
    return [
        {"formKey": "AE", "recordId": r["recordId"], "data": {"aeterm": f"{term} {i}"}}
        for i, r in enumerate(targets, start=1)
    ]


def revision_counts(server: EmulatorServer, batch: list[dict[str, Any]]) -> list[int]:
    return [revisions(server, row["recordId"]) for row in batch]


def settle_jobs(server: EmulatorServer, timeout: float = 15) -> None:
    """Wait (bounded) until every job the emulator holds has ended, so a late duplicate would
    show in the revision counts."""
    deadline = time.monotonic() + timeout
    while any(j.state not in ("completed", "failed", "cancelled") for j in jobs_of(server)):
        assert time.monotonic() < deadline, "jobs still running"
        time.sleep(0.05)


def jobs_of(server: EmulatorServer) -> list[Any]:
    server.emulator.advance_jobs()
    return list(server.emulator.jobs.values())


def lose_jobs_listing(server: EmulatorServer, how: str) -> None:
    if how == "404":
        server.emulator.config.jobs_listing = False
    else:  # every GET .../jobs fails, retries included (the route also covers jobs/{id})
        server.emulator.add_fault("status", status=503, route="jobs", method="GET", count=None)


@pytest.mark.parametrize("how", ["404", "503"], ids=["jobs-listing-404", "jobs-listing-5xx"])
def test_slow_job_behind_a_lost_answer_is_never_posted_twice(
    fresh_emulator: EmulatorServer, imednet_env: Env, how: str
) -> None:
    """The answer to the POST is lost, the server cannot list jobs, and the job is slower
    than the run's timeout: nothing proves the rows absent, so the run fails naming them and
    nothing is sent again. Once the job ends, every row was applied exactly once."""
    imednet_env(fresh_emulator)
    lose_jobs_listing(fresh_emulator, how)
    fresh_emulator.emulator.config.job_delay = 1.5
    fresh_emulator.emulator.add_fault("commit_then_502", route="records", method="POST")
    batch = ae_updates(fresh_emulator, 5, "late")
    before = revision_counts(fresh_emulator, batch)
    with pytest.raises(ImednetFlowsError) as caught:
        create_or_update_records(K, batch, timeout=0.5, poll_interval=0.05)
    assert len(posts(fresh_emulator)) == 1
    message = str(caught.value)
    assert "batch 1 (rows 1-5)" in message and "Undecided: rows 1-5" in message
    assert "nothing was sent again" in message and "check in iMednet" in message
    settle_jobs(fresh_emulator)
    assert revision_counts(fresh_emulator, batch) == [n + 1 for n in before]
    for row in batch:
        assert (
            record(fresh_emulator, row["recordId"])["recordData"]["aeterm"] == row["data"]["aeterm"]
        )


@pytest.mark.parametrize("job_delay", [0.0, 0.4], ids=["job-done", "job-lands-later"])
def test_without_jobs_listing_a_lost_answer_is_confirmed_by_reading_back(
    fresh_emulator: EmulatorServer, imednet_env: Env, job_delay: float
) -> None:
    imednet_env(fresh_emulator)
    lose_jobs_listing(fresh_emulator, "404")
    fresh_emulator.emulator.config.job_delay = job_delay
    fresh_emulator.emulator.add_fault("commit_then_502", route="records", method="POST")
    batch = ae_updates(fresh_emulator, 5, "confirmed")
    before = revision_counts(fresh_emulator, batch)
    result = create_or_update_records(K, batch, **FAST)
    assert [(b.state, b.confirmed_rows, b.resent_rows) for b in result.batches] == [
        ("CONFIRMED", [1, 2, 3, 4, 5], [])
    ]
    assert len(posts(fresh_emulator)) == 1
    assert revision_counts(fresh_emulator, batch) == [n + 1 for n in before]


def test_stuck_job_behind_a_lost_answer_fails_naming_it(
    fresh_emulator: EmulatorServer, imednet_env: Env
) -> None:
    imednet_env(fresh_emulator)
    fresh_emulator.emulator.add_job_outcome("stuck")
    fresh_emulator.emulator.add_fault("commit_then_502", route="records", method="POST")
    batch = ae_updates(fresh_emulator, 3, "stuck")
    before = [record(fresh_emulator, row["recordId"]) for row in batch]
    with pytest.raises(ImednetFlowsError) as caught:
        create_or_update_records(K, batch, timeout=0.5, poll_interval=0.05)
    (job,) = jobs_of(fresh_emulator)
    message = str(caught.value)
    assert job.batch_id in message and "Undecided: rows 1-3" in message
    assert len(posts(fresh_emulator)) == 1
    assert [record(fresh_emulator, row["recordId"]) for row in batch] == before


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
def test_ended_job_behind_a_lost_answer_proves_the_rows_absent(
    fresh_emulator: EmulatorServer, imednet_env: Env, outcome: str
) -> None:
    """The job ended without applying anything and the records show no change since the
    POST: only then are the rows sent again, once."""
    imednet_env(fresh_emulator)
    fresh_emulator.emulator.add_job_outcome(outcome)
    fresh_emulator.emulator.add_fault("commit_then_502", route="records", method="POST")
    batch = ae_updates(fresh_emulator, 5, outcome)
    before = revision_counts(fresh_emulator, batch)
    result = create_or_update_records(K, batch, **FAST)
    assert [(b.state, b.resent_rows) for b in result.batches] == [("COMPLETED", [1, 2, 3, 4, 5])]
    assert [(e.status, e.items) for e in posts(fresh_emulator)] == [(502, 5), (202, 5)]
    assert revision_counts(fresh_emulator, batch) == [n + 1 for n in before]


def test_only_the_interrupted_second_batch_is_recovered(
    fresh_emulator: EmulatorServer, imednet_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch 1 is answered, its job still running; batch 2's answer is lost. Batch 2 is
    confirmed by reading back after both jobs end; nothing is posted twice."""
    imednet_env(fresh_emulator)
    emulator = fresh_emulator.emulator
    emulator.config.job_delay = 0.5
    submit = emulator.submit

    def submit_then_break_the_next_answer(*args: Any, **kwargs: Any) -> Any:
        job = submit(*args, **kwargs)
        if len(emulator.jobs) == 1:  # the first POST is handled: the second one's answer is lost
            emulator.add_fault("commit_then_502", route="records", method="POST")
        return job

    monkeypatch.setattr(emulator, "submit", submit_then_break_the_next_answer)
    batch = ae_updates(fresh_emulator, 6, "two batches")
    before = revision_counts(fresh_emulator, batch)
    result = create_or_update_records(K, batch, batch_size=3, **FAST)
    assert [(b.first_row, b.state, b.resent_rows) for b in result.batches] == [
        (1, "COMPLETED", []),
        (4, "CONFIRMED", []),
    ]
    assert result.batches[1].confirmed_rows == [4, 5, 6]
    assert [(e.status, e.items) for e in posts(fresh_emulator)] == [(202, 3), (502, 3)]
    assert revision_counts(fresh_emulator, batch) == [n + 1 for n in before]


def test_registration_is_resent_when_no_job_was_created(
    fresh_emulator: EmulatorServer, imednet_env: Env
) -> None:
    """A registration without subjectKey cannot be found by reading back; but a 503 before
    the API took the POST leaves no job created since, which proves it absent."""
    imednet_env(fresh_emulator)
    site = rows(fresh_emulator, "sites")[0]
    subjects = len(rows(fresh_emulator, "subjects"))
    fresh_emulator.emulator.add_fault("status", status=503, route="records", method="POST")
    row = {"formKey": "REG", "siteName": site["siteName"], "data": {"reginit": "NEW"}}
    result = create_or_update_records(K, [row], **FAST)
    assert [(b.state, b.resent_rows) for b in result.batches] == [("COMPLETED", [1])]
    assert [e.status for e in posts(fresh_emulator)] == [503, 202]
    assert len(rows(fresh_emulator, "subjects")) == subjects + 1


# --------------------------------------------------------------------------- job outcomes


@pytest.mark.parametrize(
    ("outcome", "state", "options"),
    [
        ("failed", "FAILED", FAST),
        ("cancelled", "CANCELLED", FAST),
        ("stuck", "TIMEOUT", {"timeout": 1, "poll_interval": 0.1}),
    ],
)
def test_unfinished_job_fails_the_flow_naming_it(
    fresh_emulator: EmulatorServer,
    imednet_env: Env,
    outcome: str,
    state: str,
    options: dict[str, float],
) -> None:
    imednet_env(fresh_emulator)
    fresh_emulator.emulator.add_job_outcome(outcome)
    target = live(fresh_emulator, "AE")[2]
    before = record(fresh_emulator, target["recordId"])
    row = {"formKey": "AE", "recordId": target["recordId"], "data": {"aeterm": "never"}}
    with pytest.raises(ImednetFlowsError) as caught:
        create_or_update_records(K, [row], **options)
    (batch_id,) = fresh_emulator.emulator.jobs
    assert f"job {batch_id} {state}" in str(caught.value)
    assert record(fresh_emulator, target["recordId"]) == before


def test_no_wait_returns_the_created_job(fresh_emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(fresh_emulator)
    fresh_emulator.emulator.add_job_outcome("stuck")
    target = live(fresh_emulator, "AE")[3]
    row = {"formKey": "AE", "recordId": target["recordId"], "data": {"aeterm": "queued"}}
    state = create_or_update_records(K, [row], wait=False, return_state=True, **FAST)
    result = state.result()
    (batch_id,) = fresh_emulator.emulator.jobs
    assert [(b.batch_id, b.state) for b in result.batches] == [(batch_id, "CREATED")]
    assert not [e for e in fresh_emulator.emulator.requests() if "/jobs/" in e.path]
    logs = _logs(state.state_details.flow_run_id)
    assert logs and not any(DEMO_API_KEY in m or DEMO_SECURITY_KEY in m for m in logs)


def _logs(flow_run_id: Any) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    with get_client(sync_client=True) as client:
        found = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return [log.message for log in found]


def test_parameters_are_described_in_the_ui_schema() -> None:
    schema = parameter_schema(create_or_update_records.fn).model_dump()
    properties = schema["properties"]
    assert all(p.get("description") for p in properties.values()), properties
    assert properties["batch_size"]["minimum"] == 1
    # rows come as records or as rows_file (any size): neither alone is required
    assert schema["required"] == ["study_key"]
    assert "JSON Lines" in properties["rows_file"]["description"]
