"""The API keys never leave the client: not in logs, artifacts, parameters, results, events,
the cache, the snapshots or any output file.

Why: imednet_flows/credentials.py promises that credentials are read from the environment
or from Prefect Secret blocks and are never flow parameters, so they never reach what Prefect
stores or what the flows write. These tests run every flow against an emulator that accepts
only two recognisable fake keys, then grep everything a run leaves behind for them: once with
the keys in the environment, once from Secret blocks (`store_credentials`) with no key in the
environment, and the demo's output folder for the demo keys.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH
from prefect.states import State
from prefect.variables import Variable
from pydantic import BaseModel

from flows.extract_records import extract_records_by_criteria
from flows.incremental_sync import CHANGED_EVENT, run_incremental_sync
from flows.open_queries import get_open_queries
from flows.subject_data import get_all_subject_data
from flows.upsert_records import create_or_update_records
from imednet_flows.credentials import (
    API_KEY_BLOCK,
    BASE_URL_VARIABLE,
    SECURITY_KEY_BLOCK,
    store_credentials,
)
from imednet_flows.emulator import (
    DEMO_API_KEY,
    DEMO_SECURITY_KEY,
    EmulatorConfig,
    EmulatorServer,
    StudySpec,
    running_emulator,
)
from tests.conftest import is_loopback_url
from tests.deployments.test_deployments import wait_for

pytestmark = pytest.mark.usefixtures("prefect_api")

API_KEY = "FAKEKEY-API-9f3e2c"
SECURITY_KEY = "FAKEKEY-SEC-77ab01"
KEYS = (API_KEY, SECURITY_KEY)
STUDY = StudySpec(study_key="SECRETS", study_id=61, seed=61, subjects=10)


@pytest.fixture
def fake_key_emulator() -> Iterator[EmulatorServer]:
    """Accepts the fake keys only: a run that got its keys from anywhere else fails."""
    config = EmulatorConfig(api_key=API_KEY, security_key=SECURITY_KEY)
    with running_emulator([STUDY], config=config) as server:
        yield server


@pytest.fixture
def no_env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IMEDNET_BASE_URL", "IMEDNET_API_KEY", "IMEDNET_SECURITY_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def everything_logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record at DEBUG and up, Prefect's, httpx's and the SDK's included."""
    caplog.set_level(logging.DEBUG)
    for name in ("prefect", "httpx", "httpcore", "imednet", "imednet_flows"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


# --------------------------------------------------------------------------- running and looking


def run_every_flow(server: EmulatorServer, out: Path) -> dict[str, State[Any]]:
    """The five flows once each, writing only under `out`; their final states by flow."""
    key = STUDY.study_key
    emu = server.emulator
    subject = next(s for s in emu.rows(key, "subjects") if not s["deleted"])["subjectKey"]
    target = next(r for r in emu.rows(key, "records") if r["formKey"] == "AE" and not r["deleted"])
    states = {
        "sync": run_incremental_sync(
            [key],
            cache_path=str(out / "cache" / "imednet.sqlite"),
            snapshot_dir=str(out / "snapshots"),
            return_state=True,
        ),
        "extract": extract_records_by_criteria(
            key, record_filter="formKey==AE", output_dir=str(out / "extract"), return_state=True
        ),
        "subject": get_all_subject_data(key, subject, return_state=True),
        "queries": get_open_queries(key, return_state=True),
        "upsert": create_or_update_records(
            key,
            [{"formKey": "AE", "recordId": target["recordId"], "data": {"aeterm": "Headache"}}],
            poll_interval=0.05,
            timeout=20,
            return_state=True,
        ),
    }
    failed = {name: s.message for name, s in states.items() if not s.is_completed()}
    assert not failed, failed
    return states


def as_text(value: Any) -> str:
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, pd.DataFrame):
        return value.to_json(orient="records", default_handler=str)
    return json.dumps(value, default=str)


def stored_by_prefect(flow_run_ids: list[Any], since: float) -> dict[str, str]:
    """What the Prefect API holds about these runs and their child runs: the runs (with
    parameters and state messages), task runs, logs, artifacts, and the events since
    `since` that involve them (waiting until every run's Completed event is persisted)."""
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=flow_run_ids)
            )
        )
        ids = list(flow_run_ids) + [c.id for c in children]
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        assert len(runs) == len(ids)
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids))
        )
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
        )

        def events() -> list[dict[str, Any]]:
            found = read_events(
                client,
                {
                    "any_resource": {"id": [f"prefect.flow-run.{i}" for i in ids]},
                    "occurred": {"since": _iso(since)},
                },
            )
            completed = {
                e["resource"]["prefect.resource.id"]
                for e in found
                if e["event"] == "prefect.flow-run.Completed"
            }
            wanted = {f"prefect.flow-run.{i}" for i in flow_run_ids}
            synced = any(e["event"] == CHANGED_EVENT for e in found)
            return found if synced and wanted <= completed else []

        persisted = wait_for(events, 30, "the runs' events to be persisted", every=0.5)
    assert logs and artifacts and task_runs
    assert any("iMednet API at http://127.0.0.1" in log.message for log in logs)
    return {
        "flow runs": json.dumps([r.model_dump(mode="json") for r in runs]),
        "task runs": json.dumps([t.model_dump(mode="json") for t in task_runs]),
        "logs": "\n".join(log.message for log in logs),
        "artifacts": json.dumps([a.model_dump(mode="json") for a in artifacts]),
        "events": json.dumps(persisted),
    }


def read_events(client: SyncPrefectClient, event_filter: dict[str, Any]) -> list[dict[str, Any]]:
    """Every persisted event matching the filter, following the API's pages."""
    page = client.request("POST", "/events/filter", json={"filter": event_filter, "limit": 50})
    body = page.json()
    found = list(body["events"])
    while body.get("next_page"):
        body = httpx.get(body["next_page"], timeout=30).json()
        found += body["events"]
    return found


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch - 1)) + "Z"


def files_under(*roots: Path, since: float = 0.0) -> list[Path]:
    return [
        p
        for root in roots
        if root.exists()
        for p in root.rglob("*")
        if p.is_file() and p.stat().st_mtime >= since
    ]


def leaks(keys: tuple[str, ...], texts: dict[str, str], files: list[Path]) -> list[str]:
    found = [f"{where}: {key}" for where, text in texts.items() for key in keys if key in text]
    for path in files:
        data = path.read_bytes()
        found += [f"{path}: {key}" for key in keys if key.encode() in data]
    return found


def check_nothing_leaked(
    states: dict[str, State[Any]],
    out: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    since: float,
) -> None:
    texts = stored_by_prefect([s.state_details.flow_run_id for s in states.values()], since)
    texts["results"] = "\n".join(as_text(s.result()) for s in states.values())
    texts["state messages"] = "\n".join(s.message or "" for s in states.values())
    texts["python logs"] = caplog.text
    captured = capfd.readouterr()
    texts["stdout/stderr"] = captured.out + captured.err
    written = files_under(out)
    kinds = {p.suffix for p in written}
    assert {".sqlite", ".parquet"} <= kinds, kinds  # the grep is not vacuous
    stored_results = files_under(Path(PREFECT_LOCAL_STORAGE_PATH.value()), since=since)
    assert not leaks(KEYS, texts, written + stored_results)


# --------------------------------------------------------------------------- the tests


def test_keys_from_environment_leave_no_trace(
    fake_key_emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
    everything_logged: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    assert is_loopback_url(fake_key_emulator.base_url)
    monkeypatch.setenv("IMEDNET_BASE_URL", fake_key_emulator.base_url)
    monkeypatch.setenv("IMEDNET_API_KEY", API_KEY)
    monkeypatch.setenv("IMEDNET_SECURITY_KEY", SECURITY_KEY)
    since = time.time()
    states = run_every_flow(fake_key_emulator, tmp_path)
    check_nothing_leaked(states, tmp_path, everything_logged, capfd, since)


@pytest.fixture
def secret_blocks(fake_key_emulator: EmulatorServer) -> Iterator[None]:
    """What `imednet-flows configure` stores, removed afterwards for the other tests."""
    store_credentials(API_KEY, SECURITY_KEY, fake_key_emulator.base_url)
    try:
        yield
    finally:
        Secret.delete(API_KEY_BLOCK)
        Secret.delete(SECURITY_KEY_BLOCK)
        Variable.unset(BASE_URL_VARIABLE)


@pytest.mark.usefixtures("no_env_credentials", "secret_blocks")
def test_keys_from_secret_blocks_leave_no_trace(
    fake_key_emulator: EmulatorServer,
    everything_logged: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    since = time.time()
    states = run_every_flow(fake_key_emulator, tmp_path)
    check_nothing_leaked(states, tmp_path, everything_logged, capfd, since)
    # the blocks were what authenticated: every request carried the fake keys
    assert len(fake_key_emulator.emulator.requests()) > 10


def test_demo_output_holds_no_keys(
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """`imednet-flows demo` writes a cache, snapshots and extracts: none hold its keys.
    The demo exports its keys into os.environ; monkeypatch restores what was there."""
    from imednet_flows.demo import run_demo

    for name in ("IMEDNET_BASE_URL", "IMEDNET_API_KEY", "IMEDNET_SECURITY_KEY"):
        monkeypatch.setenv(name, "restored-after-the-demo")
    out = tmp_path / "demo-output"
    assert run_demo(subjects=8, output=str(out)) == 0
    written = files_under(out)
    assert {".sqlite", ".parquet"} <= {p.suffix for p in written}
    captured = capfd.readouterr()
    assert not leaks(
        (DEMO_API_KEY, DEMO_SECURITY_KEY), {"demo report": captured.out + captured.err}, written
    )
