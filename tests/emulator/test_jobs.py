"""POST /records, the job state machine and revision semantics (docs/api-behaviour.md §5)."""

from __future__ import annotations

import time

import httpx
import pytest
from imednet import ImednetSDK

from imednet_flows.emulator import EmulatorServer
from tests.conftest import SMALL
from tests.emulator.test_contract import AUTH

K = SMALL.study_key


def post(server: EmulatorServer, body: object, raw: bytes | None = None) -> httpx.Response:
    url = f"{server.base_url}/api/v1/edc/studies/{K}/records"
    if raw is not None:
        return httpx.post(url, content=raw, headers={**AUTH, "content-type": "application/json"})
    return httpx.post(url, json=body, headers=AUTH)


def a_record(server: EmulatorServer) -> dict:
    return next(r for r in server.emulator.rows(K, "records") if not r["deleted"])


def test_post_returns_202_job_and_completes(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    record = a_record(fresh_emulator)
    var = next(iter(record["recordData"]))
    revisions_before = [
        r
        for r in fresh_emulator.emulator.rows(K, "recordRevisions")
        if r["recordId"] == record["recordId"]
    ]
    job = fresh_sdk.records.create(
        K,
        [{"formKey": record["formKey"], "recordId": record["recordId"], "data": {var: "changed"}}],
    )
    assert job.batch_id and job.state.lower() == "created"
    final = fresh_sdk.poll_job(K, job.batch_id, interval=0, timeout=10)
    assert final.state.lower() == "completed"
    raw = fresh_emulator.emulator.jobs[job.batch_id].as_json()
    assert raw["dateCreated"] <= raw["dateStarted"] <= raw["dateFinished"]
    after = next(r for r in fresh_sdk.records.list(K) if r.record_id == record["recordId"])
    assert after.record_data[var] == "changed"
    assert after.date_modified.strftime("%Y-%m-%d %H:%M:%S") >= raw["dateCreated"]
    revisions = [
        r
        for r in fresh_emulator.emulator.rows(K, "recordRevisions")
        if r["recordId"] == record["recordId"]
    ]
    assert len(revisions) == len(revisions_before) + 1
    assert revisions[-1]["recordRevision"] == revisions_before[-1]["recordRevision"] + 1
    assert revisions[-1]["dataRevision"] == revisions_before[-1]["dataRevision"] + 1


def test_202_body_is_exactly_the_job_status(fresh_emulator: EmulatorServer) -> None:
    record = a_record(fresh_emulator)
    response = post(
        fresh_emulator, [{"formKey": record["formKey"], "recordId": record["recordId"], "data": {}}]
    )
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"jobId", "batchId", "state"} and body["state"] == "created"
    assert body["jobId"] != body["batchId"]


def test_jobs_move_through_states_with_delay(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    fresh_emulator.emulator.config.job_delay = 0.4
    record = a_record(fresh_emulator)
    job = fresh_sdk.records.create(
        K, [{"formKey": record["formKey"], "recordId": record["recordId"], "data": {}}]
    )
    seen = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        state = fresh_sdk.jobs.get(K, job.batch_id).state.lower()
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == "completed":
            break
        time.sleep(0.05)
    assert seen == ["created", "processing", "completed"]


@pytest.mark.parametrize(
    "body",
    [
        {"formKey": "X", "data": {}},
        [],
        [1],
        [{"data": {}}],
        [{"formKey": "DM"}],
        [{"formKey": "DM", "data": [1]}],
    ],
)
def test_bad_bodies_are_400_and_create_no_job(fresh_emulator: EmulatorServer, body: object) -> None:
    response = post(fresh_emulator, body)
    assert response.status_code == 400
    assert response.json()["metadata"]["error"]["code"] == "1000"
    assert fresh_emulator.emulator.jobs == {}


def test_non_json_body_is_400(fresh_emulator: EmulatorServer) -> None:
    response = post(fresh_emulator, None, raw=b"{not json")
    assert response.status_code == 400 and fresh_emulator.emulator.jobs == {}


def _unknown_cases(server: EmulatorServer) -> list[dict]:
    record = a_record(server)
    subject = server.emulator.rows(K, "subjects")[0]
    return [
        {"formKey": "NOPE", "recordId": record["recordId"], "data": {}},
        {"formKey": record["formKey"], "recordId": 999_999_999, "data": {}},
        {"formKey": record["formKey"], "recordId": record["recordId"], "data": {"nope": 1}},
        {"formKey": record["formKey"], "siteName": "Atlantis", "data": {}},
        {"formKey": record["formKey"], "subjectId": 123, "data": {}},
        {
            "formKey": record["formKey"],
            "subjectKey": subject["subjectKey"],
            "intervalName": "Week 999",
            "data": {},
        },
    ]


@pytest.mark.parametrize("case", range(6))
def test_business_errors_fail_the_job_and_change_nothing(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK, case: int
) -> None:
    item = _unknown_cases(fresh_emulator)[case]
    before = {
        r: fresh_emulator.emulator.rows(K, r)
        for r in ("records", "subjects", "recordRevisions", "visits")
    }
    good = a_record(fresh_emulator)
    batch = [
        {
            "formKey": good["formKey"],
            "recordId": good["recordId"],
            "data": {next(iter(good["recordData"])): "should not land"},
        },
        item,
    ]
    job = fresh_sdk.records.create(K, batch)
    with pytest.raises(RuntimeError, match="failed"):
        fresh_sdk.poll_job(K, job.batch_id, interval=0, timeout=10)
    for route, rows in before.items():
        assert fresh_emulator.emulator.rows(K, route) == rows


def test_registration_creates_subject(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    site = fresh_emulator.emulator.rows(K, "sites")[0]
    form = fresh_emulator.emulator.rows(K, "forms")[0]
    var = next(
        v for v in fresh_emulator.emulator.rows(K, "variables") if v["formId"] == form["formId"]
    )
    job = fresh_sdk.records.create(
        K,
        [
            {
                "formKey": form["formKey"],
                "siteName": site["siteName"],
                "subjectKey": "77-777",
                "data": {var["variableName"]: "x"},
            }
        ],
    )
    assert fresh_sdk.poll_job(K, job.batch_id, interval=0).state.lower() == "completed"
    subject = fresh_sdk.subjects.get(K, "77-777")
    assert subject.site_id == site["siteId"]
    records = fresh_sdk.records.list(K, subject_key="77-777")
    assert [r.form_key for r in records] == [form["formKey"]]


def test_scheduled_upsert_and_new_record(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    record = a_record(fresh_emulator)
    interval = next(
        i
        for i in fresh_emulator.emulator.rows(K, "intervals")
        if i["intervalId"] == record["intervalId"]
    )
    var = next(iter(record["recordData"]))
    count = len(fresh_emulator.emulator.rows(K, "records"))
    job = fresh_sdk.records.create(
        K,
        [
            {
                "formKey": record["formKey"],
                "subjectKey": record["subjectKey"],
                "intervalName": interval["intervalName"],
                "data": {var: "upserted"},
            },
            {
                "formKey": record["formKey"],
                "subjectKey": record["subjectKey"],
                "data": {var: "new"},
            },
        ],
    )
    fresh_sdk.poll_job(K, job.batch_id, interval=0)
    rows = fresh_emulator.emulator.rows(K, "records")
    assert len(rows) == count + 1  # the scheduled one was updated, one unscheduled added
    assert (
        next(r for r in rows if r["recordId"] == record["recordId"])["recordData"][var]
        == "upserted"
    )
    assert rows[-1]["recordData"] == {var: "new"} and rows[-1]["intervalId"] == 0


@pytest.mark.parametrize("outcome,expected", [("failed", "failed"), ("cancelled", "cancelled")])
def test_job_outcome_switches(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK, outcome: str, expected: str
) -> None:
    fresh_emulator.emulator.add_job_outcome(outcome)
    record = a_record(fresh_emulator)
    before = fresh_emulator.emulator.rows(K, "records")
    job = fresh_sdk.records.create(
        K,
        [
            {
                "formKey": record["formKey"],
                "recordId": record["recordId"],
                "data": {next(iter(record["recordData"])): "zzz"},
            }
        ],
    )
    assert fresh_sdk.jobs.get(K, job.batch_id).state.lower() == expected
    assert fresh_emulator.emulator.rows(K, "records") == before


def test_stuck_job_never_finishes(fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK) -> None:
    from imednet.workflows import JobTimeoutError

    fresh_emulator.emulator.add_job_outcome("stuck")
    record = a_record(fresh_emulator)
    job = fresh_sdk.records.create(
        K, [{"formKey": record["formKey"], "recordId": record["recordId"], "data": {}}]
    )
    with pytest.raises(JobTimeoutError):
        fresh_sdk.poll_job(K, job.batch_id, interval=0.05, timeout=0.5)
    assert fresh_sdk.jobs.get(K, job.batch_id).state.lower() == "processing"


def test_email_notify_is_stored(fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK) -> None:
    record = a_record(fresh_emulator)
    job = fresh_sdk.records.create(
        K,
        [{"formKey": record["formKey"], "recordId": record["recordId"], "data": {}}],
        email_notify="dm@example.org",
    )
    assert fresh_emulator.emulator.jobs[job.batch_id].email_notify == "dm@example.org"


def test_jobs_list_extension(fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK) -> None:
    record = a_record(fresh_emulator)
    job = fresh_sdk.records.create(
        K, [{"formKey": record["formKey"], "recordId": record["recordId"], "data": {}}]
    )
    assert [j.batch_id for j in fresh_sdk.jobs.list(K)] == [job.batch_id]


def test_jobs_due_at_once_apply_in_post_order(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    """Jobs that become due together are applied in the order they were posted: the later
    value of one record wins, and the revisions of eight records follow the POSTs."""
    emu = fresh_emulator.emulator
    emu.configure(job_delay=600)  # nothing applies until the delay is lifted
    live = [r for r in emu.rows(K, "records") if not r["deleted"]]
    record = next(r for r in live if r["formKey"] == "REG")
    var = "reginit"  # TEXT: stored as posted
    others = [r for r in live if r["recordId"] != record["recordId"]][:8]
    jobs = [
        fresh_sdk.records.create(
            K, [{"formKey": record["formKey"], "recordId": record["recordId"], "data": {var: v}}]
        )
        for v in ("first", "second")
    ]
    for other in others:
        item = {"formKey": other["formKey"], "recordId": other["recordId"], "data": {}}
        jobs.append(fresh_sdk.records.create(K, [item]))
    assert all(emu.jobs[j.batch_id].state == "created" for j in jobs)
    emu.configure(job_delay=0)
    for job in jobs:
        final = fresh_sdk.poll_job(K, job.batch_id, interval=0, timeout=10)
        assert final.state.lower() == "completed"
    after = next(r for r in emu.rows(K, "records") if r["recordId"] == record["recordId"])
    assert after["recordData"][var] == "second"
    revisions = emu.rows(K, "recordRevisions")
    order = [r["recordId"] for r in revisions if r["recordId"] in {o["recordId"] for o in others}]
    assert order[-len(others) :] == [o["recordId"] for o in others]
