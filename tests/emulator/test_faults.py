"""Fault switches, mutations and the request log (api-behaviour.md §8, issue #2 §4-5)."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from imednet import ImednetSDK
from imednet.errors import RateLimitError, RequestError, ServerError

from imednet_flows.emulator import EmulatorClient, EmulatorServer
from tests.conftest import SMALL, make_sdk
from tests.emulator.test_contract import AUTH

K = SMALL.study_key


@pytest.mark.parametrize(
    "kind,kw,error",
    [
        ("status", {"status": 429}, RateLimitError),
        ("status", {"status": 500}, ServerError),
        ("status", {"status": 502}, ServerError),
        ("status", {"status": 503}, ServerError),
        ("drop", {}, RequestError),
    ],
)
def test_faults_recover_within_sdk_retries_then_surface(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK, kind: str, kw: dict, error: type
) -> None:
    emu = fresh_emulator.emulator
    emu.add_fault(kind, route="sites", count=2, **kw)
    assert len(fresh_sdk.sites.list(K)) == len(emu.rows(K, "sites"))
    assert [e.fault for e in emu.requests()] == [kind, kind, None]
    emu.reset_requests()
    emu.add_fault(kind, route="sites", count=3, **kw)
    with pytest.raises(error):
        fresh_sdk.sites.list(K)
    assert len(emu.requests()) == 3  # the SDK's three attempts, no more


def test_faulted_post_creates_no_job(fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK) -> None:
    emu = fresh_emulator.emulator
    record = emu.rows(K, "records")[0]
    emu.add_fault("status", route="records", method="POST", count=3, status=503)
    with pytest.raises(ServerError):
        fresh_sdk.records.create(
            K, [{"formKey": record["formKey"], "recordId": record["recordId"], "data": {}}]
        )
    assert emu.jobs == {}
    assert [e.status for e in emu.requests()] == [503, 503, 503]


def test_commit_then_502_applies_the_batch(fresh_emulator: EmulatorServer) -> None:
    """The case that makes the SDK's blind POST retry duplicate data."""
    emu = fresh_emulator.emulator
    record = emu.rows(K, "records")[0]
    with make_sdk(fresh_emulator, retries=1) as once:
        emu.add_fault("commit_then_502", count=1)
        with pytest.raises(ServerError):
            once.records.create(
                K, [{"formKey": record["formKey"], "subjectKey": record["subjectKey"], "data": {}}]
            )
    assert len(emu.jobs) == 1
    (job,) = emu.jobs.values()
    emu.advance_jobs()
    assert job.state == "completed" and len(job.record_ids) == 1


def test_retry_after_header(fresh_emulator: EmulatorServer) -> None:
    fresh_emulator.emulator.add_fault("status", status=429, retry_after=2)
    response = httpx.get(f"{fresh_emulator.base_url}/api/v1/edc/studies", headers=AUTH)
    assert response.status_code == 429 and response.headers["retry-after"] == "2"
    fresh_emulator.emulator.add_fault("status", status=429)
    response = httpx.get(f"{fresh_emulator.base_url}/api/v1/edc/studies", headers=AUTH)
    assert response.status_code == 429 and "retry-after" not in response.headers


def test_truncated_json(fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK) -> None:
    fresh_emulator.emulator.add_fault("truncate", route="subjects")
    with pytest.raises(json.JSONDecodeError):
        fresh_sdk.subjects.list(K)
    assert len(fresh_sdk.subjects.list(K)) == len(fresh_emulator.emulator.rows(K, "subjects"))


def test_latency_lets_requests_overlap(fresh_emulator: EmulatorServer) -> None:
    emu = fresh_emulator.emulator
    emu.add_fault("latency", seconds=0.5, count=None)
    # Clients are built first and released together: building one in its thread took long
    # enough on a busy machine for a request to finish before the last one started.
    clients = [make_sdk(fresh_emulator) for _ in range(3)]
    start = threading.Barrier(len(clients), timeout=10)

    def list_sites(client: ImednetSDK) -> None:
        start.wait()
        client.sites.list(K)

    threads = [threading.Thread(target=list_sites, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for client in clients:
        client.close()
    entries = emu.requests()
    assert len(entries) == 3
    assert max(e.started for e in entries) < min(e.finished for e in entries)


def test_faults_match_route_and_method_only(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    emu = fresh_emulator.emulator
    emu.add_fault("status", route="records", method="POST", status=500, count=None)
    assert fresh_sdk.records.list(K)  # GET unaffected
    assert fresh_sdk.sites.list(K)
    emu.clear_faults()
    assert emu.faults.rules() == []


def test_mutations_are_visible_through_the_api(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    emu = fresh_emulator.emulator
    before = {r["recordId"]: r for r in emu.rows(K, "records")}
    edited = emu.mutate(K, "edit_records", n=5, seed=3)
    assert len(edited["ids"]) == 5
    soft = emu.mutate(K, "soft_delete", n=2, seed=4)
    hard = emu.mutate(K, "hard_delete", n=3, seed=5)
    records = {r.record_id: r for r in fresh_sdk.records.list(K)}
    assert len(records) == len(before) - 3
    assert not set(hard["ids"]) & set(records)
    for rid in soft["ids"]:
        assert records[rid].deleted is True
    for rid in edited["ids"]:
        if rid in records:
            assert records[rid].record_data != before[rid]["recordData"]
    stamp = edited["at"]
    changed = fresh_sdk.records.list(K, date_modified=(">=", stamp))
    assert {r.record_id for r in changed} >= set(edited["ids"]) - set(hard["ids"])


def test_many_records_share_one_second(fresh_emulator: EmulatorServer) -> None:
    emu = fresh_emulator.emulator
    stamp = max(r["dateModified"] for r in emu.rows(K, "records"))
    emu.mutate(K, "edit_records", n=40, seed=1, at=stamp)
    same = [r for r in emu.rows(K, "records") if r["dateModified"] == stamp]
    assert len(same) >= 40


def test_query_traffic_bumps_date_modified(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    emu = fresh_emulator.emulator
    added = emu.mutate(K, "add_queries", n=2, seed=1)
    qid = added["ids"][0]
    emu.mutate(K, "add_query_comment", annotation_id=qid, closed=True)
    query = next(q for q in fresh_sdk.queries.list(K) if q.annotation_id == qid)
    latest = max(query.query_comments, key=lambda c: c.sequence)
    assert latest.closed is True and len(query.query_comments) == 2
    subjects = emu.mutate(K, "add_subjects", n=2)
    visits = emu.mutate(K, "add_visits", n=2)
    assert {s.subject_id for s in fresh_sdk.subjects.list(K)} >= set(subjects["ids"])
    assert {v.visit_id for v in fresh_sdk.visits.list(K)} >= set(visits["ids"])


def test_request_log_records_decoded_queries(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    fresh_sdk.records.list(K, form_key="AE")
    (entry,) = fresh_emulator.emulator.requests()
    assert entry.method == "GET" and entry.path.endswith(f"/studies/{K}/records")
    assert entry.query["filter"] == [f"formKey==AE;studyKey=={K}"]
    assert entry.status == 200


def test_admin_route_mirrors_the_handle(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    admin = EmulatorClient(fresh_emulator.base_url)
    try:
        admin.wait_ready()
        counts = admin.counts(K)
        result = admin.mutate(K, "hard_delete", n=2, seed=9)
        assert admin.counts(K)["records"] == counts["records"] - 2
        assert len(admin.rows(K, "records")) == counts["records"] - 2
        admin.add_fault("status", status=503, route="sites", count=1)
        fresh_sdk.sites.list(K)
        log = admin.requests()
        assert [e["status"] for e in log][-2:] == [503, 200]
        admin.reset_requests()
        assert admin.requests() == []
        with pytest.raises(ValueError, match="unknown mutation"):
            admin.mutate(K, "explode")
        assert result["ids"]
    finally:
        admin.close()
