"""The read workflows under a real Prefect API, against the emulator, through the real SDK.

Expected values come from the emulator's own rows, never from the code under test.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.extract_records import extract_records_by_criteria
from flows.open_queries import get_open_queries
from flows.subject_data import SubjectNotFound, get_all_subject_data
from imednet_flows.edc.criteria import MAX_FILTER_CHARS
from imednet_flows.edc.errors import ImednetFlowsError
from imednet_flows.emulator import EmulatorServer
from imednet_flows.filter_syntax import FilterError
from imednet_flows.values import ARROW_TYPES
from tests.conftest import BIG, SMALL

pytestmark = pytest.mark.usefixtures("prefect_api")
Env = Callable[[EmulatorServer], None]
K = BIG.study_key


def record_requests(server: EmulatorServer) -> list:
    return [e for e in server.emulator.requests() if e.path.endswith("/records")]


def test_extract_by_record_filter_typed_columns(emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(emulator)
    truth = [r for r in emulator.emulator.rows(K, "records") if r["formKey"] == "VS"]
    frame = extract_records_by_criteria(K, record_filter="formKey==VS")
    assert list(frame["recordId"]) == [r["recordId"] for r in truth]
    variables = [v for v in emulator.emulator.rows(K, "variables") if v["formKey"] == "VS"]
    for var in variables:
        dtype = frame[var["variableName"]].dtype
        assert dtype.pyarrow_dtype == ARROW_TYPES[var["variableType"]], var
    first = truth[0]
    int_var = next(
        v["variableName"]
        for v in variables
        if v["variableType"] == "INTEGER" and first["recordData"][v["variableName"]] != ""
    )
    assert frame[int_var].iloc[0] == int(first["recordData"][int_var])


def test_extract_restricts_by_subject_on_the_server(
    emulator: EmulatorServer, imednet_env: Env
) -> None:
    imednet_env(emulator)
    site = emulator.emulator.rows(K, "sites")[1]["siteId"]
    keys = {s["subjectKey"] for s in emulator.emulator.rows(K, "subjects") if s["siteId"] == site}
    truth = [
        r["recordId"]
        for r in emulator.emulator.rows(K, "records")
        if r["subjectKey"] in keys and r["formKey"] == "AE"
    ]
    emulator.emulator.reset_requests()
    frame = extract_records_by_criteria(
        K, record_filter="formKey==AE", subject_filter=f"siteId=={site}"
    )
    assert sorted(frame["recordId"]) == sorted(truth)
    sent = [e.query["filter"][0] for e in record_requests(emulator)]
    assert sent and all("subjectKey==" in f and "formKey==AE" in f for f in sent)
    assert all(len(f) <= MAX_FILTER_CHARS for f in sent)
    # every records request was restricted: the study was never pulled whole
    total = sum(int(e.status == 200) for e in record_requests(emulator))
    assert total == len(sent)
    assert len(sent) > 1, "520 subjects cannot fit one URL: the restriction must be split"


def test_extract_restricts_by_visit(emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(emulator)
    visits = [v for v in emulator.emulator.rows(K, "visits") if v["intervalName"] == "Baseline"]
    ids = {v["visitId"] for v in visits[:40]}
    subjects = {v["subjectKey"] for v in visits[:40]}
    subject_filter = ",".join(f"subjectKey=={s}" for s in sorted(subjects))
    truth = [r["recordId"] for r in emulator.emulator.rows(K, "records") if r["visitId"] in ids]
    emulator.emulator.reset_requests()
    frame = extract_records_by_criteria(
        K, subject_filter=subject_filter, visit_filter="intervalName==Baseline"
    )
    assert sorted(frame["recordId"]) == sorted(truth)
    sent = [e.query["filter"][0] for e in record_requests(emulator)]
    assert all("visitId==" in f for f in sent)


def test_extract_record_data_filter_and_parquet(
    emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(emulator)
    truth = [
        r
        for r in emulator.emulator.rows(K, "records")
        if r["formKey"] == "AE" and r["recordData"].get("aeser") == "Serious"
    ]
    frame = extract_records_by_criteria(
        K,
        record_filter="formKey==AE",
        record_data_filter="aeser==Serious",
        output_dir=str(tmp_path),
    )
    assert list(frame["recordId"]) == [r["recordId"] for r in truth]
    table = pq.read_table(tmp_path / "form_AE.parquet")
    assert table.column("recordId").to_pylist() == [r["recordId"] for r in truth]
    stamp = table.schema.field("dateModified").type
    assert pa.types.is_timestamp(stamp) and stamp.tz == "UTC"  # Parquet has no seconds unit
    assert [p.name for p in tmp_path.iterdir()] == ["form_AE.parquet"]


def test_extract_form_files_never_collide(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    """Form keys "A/B" and "A_B" once both became form_A_B.parquet, the second overwriting
    the first; each form now gets its own file, named as snapshots name form tables."""
    imednet_env(fresh_emulator)
    tables = fresh_emulator.emulator.study(SMALL.study_key).tables
    renamed = {"VS": "A/B", "AE": "A_B"}
    for table in ("forms", "variables", "records"):
        for row in tables[table].values():
            row["formKey"] = renamed.get(row["formKey"], row["formKey"])
    expected = {
        k: sum(r["formKey"] == k for r in tables["records"].values()) for k in renamed.values()
    }
    assert all(expected.values())
    extract_records_by_criteria(SMALL.study_key, output_dir=str(tmp_path))
    files = sorted(tmp_path.glob("form_A*.parquet"))
    assert len(files) == 2, [f.name for f in files]
    got = {}
    for path in files:
        keys = set(pq.read_table(path).column("formKey").to_pylist())
        assert len(keys) == 1, (path.name, keys)
        got[keys.pop()] = pq.read_metadata(path).num_rows
    assert got == expected
    assert (tmp_path / "form_A_B.parquet").exists()  # a readable key keeps its plain name


def test_extract_lists_concurrently(fresh_emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(fresh_emulator)
    fresh_emulator.emulator.add_fault("latency", seconds=0.4, count=None)
    extract_records_by_criteria(
        SMALL.study_key, subject_filter="siteId>0", visit_filter="intervalName==Screening"
    )
    first = {e.path.rsplit("/", 1)[-1]: e for e in reversed(fresh_emulator.emulator.requests())}
    overlapping = [first[r] for r in ("subjects", "visits", "variables")]
    assert max(e.started for e in overlapping) < min(e.finished for e in overlapping)


def peak_in_flight(server: EmulatorServer) -> int:
    """Most requests the emulator was serving at once, from its own log."""
    edges = sorted(
        (t, step)
        for e in server.emulator.requests()
        for t, step in ((e.started, 1), (e.finished, -1))
    )  # at equal times an end (-1) sorts first: back-to-back is not overlap
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize("setting", [1, 2])
def test_max_concurrency_setting_bounds_a_flow_run(
    fresh_emulator: EmulatorServer,
    imednet_env: Env,
    monkeypatch: pytest.MonkeyPatch,
    setting: int,
) -> None:
    """README and the 429 hint tell operators to set IMEDNET_FLOWS_MAX_CONCURRENCY: a flow
    run left at its default parameter honours it (the three listings would overlap)."""
    imednet_env(fresh_emulator)
    monkeypatch.setenv("IMEDNET_FLOWS_MAX_CONCURRENCY", str(setting))
    fresh_emulator.emulator.add_fault("latency", seconds=0.15, count=None)
    extract_records_by_criteria(
        SMALL.study_key, subject_filter="siteId>0", visit_filter="intervalName==Screening"
    )
    assert peak_in_flight(fresh_emulator) == setting


def test_max_concurrency_parameter_overrides_the_setting(
    fresh_emulator: EmulatorServer, imednet_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    imednet_env(fresh_emulator)
    monkeypatch.setenv("IMEDNET_FLOWS_MAX_CONCURRENCY", "1")
    fresh_emulator.emulator.add_fault("latency", seconds=0.15, count=None)
    extract_records_by_criteria(
        SMALL.study_key,
        subject_filter="siteId>0",
        visit_filter="intervalName==Screening",
        max_concurrency=3,
    )
    assert peak_in_flight(fresh_emulator) >= 2


def test_malformed_filter_fails_before_any_request(
    fresh_emulator: EmulatorServer, imednet_env: Env
) -> None:
    imednet_env(fresh_emulator)
    with pytest.raises(FilterError, match="formKey=AE"):
        extract_records_by_criteria(SMALL.study_key, record_filter="formKey=AE")
    assert fresh_emulator.emulator.requests() == []


def test_subject_data_matches_emulator(emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(emulator)
    subject = emulator.emulator.rows(K, "subjects")[3]
    key = subject["subjectKey"]
    data = get_all_subject_data(K, key)
    assert data.subject.subject_id == subject["subjectId"]
    for name, route in (("visits", "visits"), ("records", "records"), ("queries", "queries")):
        truth = [r for r in emulator.emulator.rows(K, route) if r["subjectKey"] == key]
        assert len(getattr(data, name)) == len(truth), name
    assert {r.record_id for r in data.records} == {
        r["recordId"] for r in emulator.emulator.rows(K, "records") if r["subjectKey"] == key
    }


def test_unknown_subject_is_a_clear_error(emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(emulator)
    with pytest.raises(SubjectNotFound, match="'99-999' was not found in study PHX-101"):
        get_all_subject_data(K, "99-999")


def _open_truth(rows: list[dict]) -> tuple[set, set, int]:
    open_, none, closed = set(), set(), 0
    for q in rows:
        comments = q["queryComments"]
        if not comments:
            none.add(q["annotationId"])
        elif max(comments, key=lambda c: c["sequence"])["closed"]:
            closed += 1
        else:
            open_.add(q["annotationId"])
    return open_, none, closed


def test_open_queries_and_artifact(emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(emulator)
    rows = emulator.emulator.rows(K, "queries")
    open_ids, none_ids, closed = _open_truth(rows)
    assert open_ids and none_ids and closed
    result = get_open_queries(K)
    assert {q.annotation_id for q in result.open} == open_ids
    assert {q.annotation_id for q in result.without_comments} == none_ids
    assert result.closed == closed and result.total == len(rows)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["open-queries-phx-101"]))
        )
    assert artifacts
    table = artifacts[0].data
    import json

    parsed = json.loads(table) if isinstance(table, str) else table
    assert {row["query"] for row in parsed} == open_ids


def test_open_queries_filter(emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(emulator)
    subject = emulator.emulator.rows(K, "queries")[0]["subjectKey"]
    rows = [q for q in emulator.emulator.rows(K, "queries") if q["subjectKey"] == subject]
    result = get_open_queries(K, filters=f"subjectKey=={subject}")
    assert result.total == len(rows)
    assert {q.annotation_id for q in result.open} == _open_truth(rows)[0]


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "status", "status": 429, "count": 4},
        {"kind": "status", "status": 503, "count": 4},
        {"kind": "drop", "count": 3},
        {"kind": "truncate", "count": 2},
    ],
)
def test_transient_faults_are_recovered(
    fresh_emulator: EmulatorServer, imednet_env: Env, fault: dict
) -> None:
    """Four 429s outlast the SDK's own three attempts; ours recover them."""
    imednet_env(fresh_emulator)
    fresh_emulator.emulator.add_fault(route="queries", **fault)
    rows = fresh_emulator.emulator.rows(SMALL.study_key, "queries")
    result = get_open_queries(SMALL.study_key)
    assert result.total == len(rows)
    statuses = [e.status for e in fresh_emulator.emulator.requests() if e.path.endswith("/queries")]
    assert len(statuses) == fault["count"] + 1


def test_persistent_503_fails_with_advice(fresh_emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(fresh_emulator)
    fresh_emulator.emulator.add_fault("status", status=503, route="queries", count=None)
    with pytest.raises(ImednetFlowsError, match=r"kept failing .HTTP 503. after every retry"):
        get_open_queries(SMALL.study_key)
    assert len([e for e in fresh_emulator.emulator.requests() if e.path.endswith("/queries")]) == 6


def test_wrong_credentials_one_request(
    fresh_emulator: EmulatorServer, imednet_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    imednet_env(fresh_emulator)
    monkeypatch.setenv("IMEDNET_API_KEY", "wrong-key")
    with pytest.raises(ImednetFlowsError, match=r"rejected .HTTP 401.*IMEDNET_API_KEY"):
        get_open_queries(SMALL.study_key)
    assert len(fresh_emulator.emulator.requests()) == 1


def test_unknown_study_one_request(fresh_emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(fresh_emulator)
    with pytest.raises(ImednetFlowsError, match="study key is unknown"):
        get_open_queries("NOPE-1")
    assert len(fresh_emulator.emulator.requests()) == 1


def test_missing_key_is_a_clear_error(
    fresh_emulator: EmulatorServer, imednet_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    imednet_env(fresh_emulator)
    monkeypatch.delenv("IMEDNET_SECURITY_KEY")
    with pytest.raises(ImednetFlowsError, match=r"IMEDNET_SECURITY_KEY.*imednet-security-key"):
        get_open_queries(SMALL.study_key)
    assert fresh_emulator.emulator.requests() == []


def test_real_backoff_schedule_honours_retry_after(
    fresh_emulator: EmulatorServer, imednet_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The production schedule, unshortened: Retry-After of 1 s is waited out."""
    imednet_env(fresh_emulator)
    monkeypatch.delenv("IMEDNET_FLOWS_BACKOFF_BASE")
    monkeypatch.delenv("IMEDNET_FLOWS_BACKOFF_MAX")
    fresh_emulator.emulator.add_fault("status", status=429, retry_after=1, route="queries")
    started = time.monotonic()
    get_open_queries(SMALL.study_key)
    entries = [e for e in fresh_emulator.emulator.requests() if e.path.endswith("/queries")]
    assert [e.status for e in entries] == [429, 200]
    assert entries[1].started - entries[0].finished >= 0.95
    assert time.monotonic() - started < 30
