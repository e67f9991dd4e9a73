"""Operating the project the way an operator would, against a real `prefect server start`.

Why: the harness server of the other tests is a Prefect API, but operators run
`imednet-flows deploy` + `prefect worker start` or `imednet-flows serve` against a long-lived
server. One real server on a loopback port (own PREFECT_HOME in tmp) is shared by the whole
module. Its scheduler and triggers services are switched off: schedules are checked as
definitions, not by waiting 15 minutes, and no run the tests did not ask for (a scheduled
sync with the project-relative default cache path, a triggered report) can start on the
worker. The trigger itself is exercised in test_deployments.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.utilities.asyncutils import run_coro_as_sync

from deployments.definitions import PROJECT_ROOT, load_definitions
from flows.incremental_sync import incremental_sync
from imednet_flows.cache.crash import ENV as CRASH_ENV
from imednet_flows.cache.crash import MARKER_ENV
from imednet_flows.emulator import (
    DEMO_API_KEY,
    DEMO_SECURITY_KEY,
    EmulatorServer,
    StudySpec,
    running_emulator,
)
from tests.deployments.test_deployments import assert_matches_yaml, flow_of, wait_for
from tests.sync_helpers import assert_cache_equals_truth

BIN = Path(sys.executable).parent
POOL = "imednet-process"
SYNC = "incremental-sync/incremental-sync"
SPECS = load_definitions()
DEMO = StudySpec(study_key="DEMO", study_id=1, seed=51, subjects=8)
DASK_A = StudySpec(study_key="DASK-A", study_id=2, seed=52, subjects=8)
DASK_B = StudySpec(study_key="DASK-B", study_id=3, seed=53, subjects=8)


@dataclass
class RealServer:
    api_url: str
    home: Path
    log: Path
    #: Environment for processes that talk to this server (and to nothing else).
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """SIGTERM to the worker's own process group (it was started as its leader)."""
        stop_group(self.process, grace=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def base_env(home: Path) -> dict[str, str]:
    """The test process's environment without its Prefect and iMednet settings: a child
    process must talk to this module's server and emulator only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "IMEDNET_"))}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
    )
    return env


# --------------------------------------------------------------------------- fixtures


def stop_group(process: subprocess.Popen[bytes], grace: float = 20) -> None:
    """SIGTERM to a process started as its group's leader, SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextlib.contextmanager
def prefect_server(home: Path, database: Path, **settings: str) -> Iterator[str]:
    """`prefect server start` on a free loopback port with its own PREFECT_HOME, a copy of
    `database` (a new, migrated one) as its database, scheduler and triggers off plus
    `settings`; yields its API URL once healthy, stops it after."""
    shutil.copyfile(database, home / "prefect.db")
    log = home / "server.log"
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = base_env(home)
    env.update(
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED="false",
        **{k: v.format(api_url=api_url) for k, v in settings.items()},
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: uvicorn children are stopped with it
        )
    try:

        def healthy() -> bool:
            assert process.poll() is None, f"prefect server exited:\n{tail(log)}"
            try:
                return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, 120, f"prefect server on {api_url}", every=0.3)
        yield api_url
    finally:
        stop_group(process)


@contextlib.contextmanager
def prefect_api_at(api_url: str) -> Iterator[None]:
    """This process talks to `api_url` instead of the session's API, and back after.

    The process's event and log workers keep the API they first connected to: without a
    drain at both ends, events and logs of later tests in this process would go to a
    server that has stopped (a refused connection: no trigger fires, no log is stored)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    def drain() -> None:
        EventsWorker.drain_all(timeout=10)
        APILogWorker.drain_all(timeout=10)

    drain()
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield
    finally:
        drain()


@pytest.fixture(scope="module")
def real_server(
    tmp_path_factory: pytest.TempPathFactory, migrated_prefect_db: Path
) -> Iterator[RealServer]:
    home = tmp_path_factory.mktemp("prefect-home")
    with prefect_server(home, migrated_prefect_db) as api_url:
        client_env = base_env(home)
        client_env["PREFECT_API_URL"] = api_url
        with prefect_api_at(api_url):
            yield RealServer(api_url=api_url, home=home, log=home / "server.log", env=client_env)


@pytest.fixture(scope="module")
def ops_emulator() -> Iterator[EmulatorServer]:
    with running_emulator([DEMO, DASK_A, DASK_B]) as server:
        yield server


@pytest.fixture(scope="module")
def deployed(real_server: RealServer) -> subprocess.CompletedProcess[str]:
    """`imednet-flows deploy` as documented: from the project root."""
    done = subprocess.run(
        [str(BIN / "imednet-flows"), "deploy"],
        cwd=PROJECT_ROOT,
        env=real_server.env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def worker(
    real_server: RealServer,
    deployed: subprocess.CompletedProcess[str],
    ops_emulator: EmulatorServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    """`prefect worker start --pool imednet-process`, finding the emulator through the
    environment as an operator's worker would; it polls every second instead of 10."""
    workdir = tmp_path_factory.mktemp("worker")
    env = dict(real_server.env)
    env.update(
        IMEDNET_BASE_URL=ops_emulator.base_url,
        IMEDNET_API_KEY=DEMO_API_KEY,
        IMEDNET_SECURITY_KEY=DEMO_SECURITY_KEY,
        IMEDNET_FLOWS_BACKOFF_BASE="0.01",
        IMEDNET_FLOWS_BACKOFF_MAX="0.05",
        PREFECT_WORKER_QUERY_SECONDS="1",
    )
    log = workdir / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--name", "ops-worker"],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    handle = Worker(process, log)
    try:
        with get_client(sync_client=True) as client:
            wait_for(
                lambda: (
                    process.poll() is None
                    and any(w.name == "ops-worker" for w in client.read_workers_for_work_pool(POOL))
                ),
                60,
                "the worker to register",
                every=0.5,
            )
        assert process.poll() is None, tail(log)
        yield handle
    finally:
        handle.stop()


def sync_parameters(tmp: Path) -> dict[str, Any]:
    """Per-run parameters: the cache and snapshots in tmp, never in the project directory
    (the deployment's working directory)."""
    return {
        "study_keys": [DEMO.study_key],
        "cache_path": str(tmp / "cache.sqlite"),
        "snapshot_dir": str(tmp / "snapshots"),
    }


# --------------------------------------------------------------------------- deploy + worker


def test_deploy_creates_pool_and_the_yaml_deployments(
    deployed: subprocess.CompletedProcess[str],
) -> None:
    assert f"work pool {POOL}: created" in deployed.stdout
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(POOL).type == "process"
        deployments = {d.name: d for d in client.read_deployments()}
        assert sorted(deployments) == sorted(s["name"] for s in SPECS)
        for spec in SPECS:
            deployment = client.read_deployment_by_name(f"{flow_of(spec).name}/{spec['name']}")
            # `prefect deploy` records where the worker runs the flow from
            [step] = deployment.pull_steps or []
            workdir = step["prefect.deployments.steps.set_working_directory"]["directory"]
            assert Path(workdir) == PROJECT_ROOT
            assert_matches_yaml(client, spec, deployment, work_pool=POOL, base_dir=Path(workdir))
    assert deployments["incremental-sync"].schedules
    assert deployments["open-queries-report"].schedules


def test_worker_runs_a_deployment_and_its_artifact_is_stored(
    worker: Worker, ops_emulator: EmulatorServer, tmp_path: Path
) -> None:
    run = run_deployment(SYNC, parameters=sync_parameters(tmp_path), timeout=120, poll_interval=0.5)
    assert run.state is not None and run.state.is_completed(), (run.state, tail(worker.log))
    assert_cache_equals_truth(ops_emulator, tmp_path / "cache.sqlite", DEMO.study_key)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    table = next(a for a in artifacts if a.key == "incremental-sync")
    assert table.type == "table"
    assert DEMO.study_key in str(table.data) and "records" in str(table.data)


def test_killed_sync_does_not_block_the_next_run(
    worker: Worker, ops_emulator: EmulatorServer, tmp_path: Path
) -> None:
    """SIGKILL inside the flow run process (a crash point, for this one run only, through
    the process work pool's `env` job variable): the run ends Crashed, the deployment's
    concurrency slot (limit 1, ENQUEUE) is released, and the next run completes."""
    marker = tmp_path / "crashed"
    parameters = sync_parameters(tmp_path)
    crashed = run_deployment(
        SYNC,
        parameters=parameters,
        job_variables={"env": {CRASH_ENV: "sync.after-fetch-forms", MARKER_ENV: str(marker)}},
        timeout=120,
        poll_interval=0.5,
    )
    assert marker.read_text() == "sync.after-fetch-forms", tail(worker.log)
    assert crashed.state is not None and crashed.state.is_crashed(), crashed.state
    assert "SIGKILL" in (crashed.state.message or "")

    ops_emulator.emulator.mutate(DEMO.study_key, "add_queries", n=2, seed=5)
    after = run_deployment(SYNC, parameters=parameters, timeout=120, poll_interval=0.5)
    assert after.state is not None and after.state.is_completed(), (after.state, tail(worker.log))
    assert_cache_equals_truth(ops_emulator, tmp_path / "cache.sqlite", DEMO.study_key)
    with get_client(sync_client=True) as client:
        limit = client.read_deployment_by_name(SYNC).global_concurrency_limit
    assert limit is not None and limit.limit == 1 and limit.active_slots == 0


# --------------------------------------------------------------------------- Dask


def test_multi_study_sync_on_dask(
    real_server: RealServer,
    ops_emulator: EmulatorServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dask serializes the task graph even on an in-process cluster: the client crosses it
    without its keys (rebuilt from the environment on the other side)."""
    from prefect_dask import DaskTaskRunner

    monkeypatch.setenv("IMEDNET_BASE_URL", ops_emulator.base_url)
    monkeypatch.setenv("IMEDNET_API_KEY", DEMO_API_KEY)
    monkeypatch.setenv("IMEDNET_SECURITY_KEY", DEMO_SECURITY_KEY)
    runner = DaskTaskRunner(
        cluster_kwargs={
            "processes": False,
            "n_workers": 1,
            "threads_per_worker": 4,
            "dashboard_address": None,
        }
    )
    keys = [DASK_A.study_key, DASK_B.study_key]
    result = run_coro_as_sync(
        incremental_sync.with_options(task_runner=runner)(
            keys, cache_path=str(tmp_path / "cache.sqlite"), snapshot_dir=str(tmp_path / "snap")
        )
    )
    assert sorted(result.studies) == sorted(keys) == sorted(result.snapshots)
    for key in keys:
        assert_cache_equals_truth(ops_emulator, tmp_path / "cache.sqlite", key)


# --------------------------------------------------------------------------- serve


def test_serve_serves_the_same_deployments_and_stops_without_pausing(
    real_server: RealServer, deployed: subprocess.CompletedProcess[str], worker: Worker
) -> None:
    """Last in this module. Serving the deployments that sit on the work pool would take
    them over, so `serve` refuses and says why; once they are deleted it serves the same
    names from one process and stops on SIGTERM without pausing them."""
    worker.stop()
    names = {f"{flow_of(s).name}/{s['name']}" for s in SPECS}
    env = dict(real_server.env, PREFECT_RUNNER_POLL_FREQUENCY="1")
    refused = subprocess.run(
        [str(BIN / "imednet-flows"), "serve"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    assert (
        "run on a work pool already" in refused.stderr and "delete them first" in refused.stderr
    ), refused.stderr[-2000:]
    with get_client(sync_client=True) as client:
        for name in names:
            client.delete_deployment(client.read_deployment_by_name(name).id)
    started = time.time()
    process = subprocess.Popen(
        [str(BIN / "imednet-flows"), "serve"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or []), daemon=True)
    reader.start()
    try:
        wait_for(
            lambda: process.poll() is None and all(n in "".join(lines) for n in names),
            90,
            "the serve process to list every deployment",
        )
        with get_client(sync_client=True) as client:

            def polled() -> bool:
                found = [client.read_deployment_by_name(n) for n in names]
                return all(d.last_polled and d.last_polled.timestamp() > started for d in found)

            wait_for(polled, 30, "the serve process to poll every deployment", every=0.5)
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 0, "".join(lines)[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    reader.join(timeout=10)
    output = "".join(lines)
    assert "Traceback" not in output, output[-3000:]
    assert "Pausing all deployments" not in output
    with get_client(sync_client=True) as client:
        for name in names:
            deployment = client.read_deployment_by_name(name)
            assert deployment.paused is False, name
            assert all(s.active for s in deployment.schedules), name
        scheduled = [
            client.read_deployment_by_name(f"{flow_of(s).name}/{s['name']}")
            for s in SPECS
            if s.get("schedules")
        ]
    assert [len(d.schedules) for d in scheduled] == [1, 1]
