"""The deployments of prefect.yaml, applied to a real Prefect API, and the three ways to trigger.

Why: prefect.yaml is the one definition, and `runner_deployments()` rebuilds it for `serve`
with Prefect's own translation. These tests read back from the API what was registered and
compare it with the YAML field by field, so a drift in either path, or a parameter the UI form
cannot explain, fails here. Then the examples in flows/examples.py run for real: a subflow, a
`run_deployment` against a deployment served by a `Runner` in a background thread (the harness
API; flow runs in subprocesses, as in production), and the event trigger on
`imednet.sync.changed`, whose services (ReactiveTriggers, Actions) also run in the harness's
ephemeral server, so no separate `prefect server start` is needed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import pytest
from prefect import Flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.flows import load_flow_from_entrypoint
from prefect.runner import Runner
from prefect.utilities.callables import parameter_schema

from deployments.definitions import PROJECT_ROOT, load_definitions, runner_deployments
from flows.examples import (
    OPEN_QUERIES_DEPLOYMENT,
    report_via_deployment,
    weekly_review,
)
from flows.incremental_sync import CHANGED_EVENT, run_incremental_sync
from imednet_flows.emulator import (
    DEMO_API_KEY,
    DEMO_SECURITY_KEY,
    EmulatorServer,
    StudySpec,
    running_emulator,
)
from tests.sync_helpers import assert_cache_equals_truth

pytestmark = pytest.mark.usefixtures("prefect_api")
T = TypeVar("T")

SPECS: list[dict[str, Any]] = load_definitions()
#: One study per example, so runs the trigger creates for one never count for another.
REVIEW = StudySpec(study_key="EX-REVIEW", study_id=41, seed=41, subjects=8)
REPORT = StudySpec(study_key="EX-REPORT", study_id=42, seed=42, subjects=8)
TRIGGER = StudySpec(study_key="EX-TRIGGER", study_id=43, seed=43, subjects=8)
REPORT_DEPLOYMENT = "open-queries-report"


# --------------------------------------------------------------------------- helpers


def wait_for(check: Callable[[], T], timeout: float, what: str, every: float = 0.25) -> T:
    """Poll until `check()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(every)


def flow_of(spec: dict[str, Any]) -> Flow[Any, Any]:
    return load_flow_from_entrypoint(str(PROJECT_ROOT / spec["entrypoint"]))


def expected_schedule(entry: dict[str, Any]) -> dict[str, Any]:
    """A prefect.yaml schedule entry in the shape the API gives back."""
    if "interval" in entry:
        kind: dict[str, Any] = {"interval": float(entry["interval"])}
    else:
        kind = {"cron": entry["cron"]}
    return {
        **kind,
        # An interval without a timezone is anchored in UTC, Prefect's default.
        "timezone": entry.get("timezone", "UTC"),
        "parameters": entry.get("parameters") or {},
        "slug": entry.get("slug"),
        "active": entry.get("active", True),
    }


def served_schedule(schedule: Any) -> dict[str, Any]:
    inner = schedule.schedule.model_dump(mode="json")
    kind = {k: inner[k] for k in ("interval", "cron") if k in inner}
    return {
        **kind,
        "timezone": inner.get("timezone"),
        "parameters": schedule.parameters,
        "slug": schedule.slug,
        "active": schedule.active,
    }


def assert_matches_yaml(
    client: SyncPrefectClient,
    spec: dict[str, Any],
    deployment: DeploymentResponse,
    work_pool: str | None,
    base_dir: Path,
) -> None:
    """One deployment read back from the API equals its prefect.yaml entry, field by field.

    `work_pool` is None for served deployments; `base_dir` is where the entrypoint is
    resolved from (the serving process's cwd, or the deploy's working directory)."""
    name = spec["name"]
    assert deployment.name == name
    assert deployment.description == spec.get("description"), name
    assert sorted(deployment.tags) == sorted(spec.get("tags") or []), name
    assert deployment.parameters == (spec.get("parameters") or {}), name
    assert deployment.work_pool_name == work_pool, name
    if work_pool is not None:
        assert deployment.work_queue_name == spec["work_pool"]["work_queue_name"], name
    file, _, function = spec["entrypoint"].partition(":")
    served_file, _, served_function = (deployment.entrypoint or "").partition(":")
    assert served_function == function, name
    assert (base_dir / (deployment.path or ".") / served_file).resolve() == PROJECT_ROOT / file
    assert deployment.paused is False, name
    assert deployment.enforce_parameter_schema is True, name

    # schedules: type, interval or cron, timezone, per-schedule parameters, slug, active
    served = sorted((served_schedule(s) for s in deployment.schedules), key=lambda s: s["slug"])
    wanted = sorted(
        (expected_schedule(s) for s in spec.get("schedules") or []), key=lambda s: s["slug"]
    )
    assert served == wanted, name

    # concurrency: the limit and what a colliding run does
    limit = spec.get("concurrency_limit")
    if limit is None:
        assert deployment.global_concurrency_limit is None, name
        assert deployment.concurrency_options is None, name
    else:
        assert deployment.global_concurrency_limit is not None, name
        assert deployment.global_concurrency_limit.limit == limit["limit"], name
        assert deployment.concurrency_options is not None, name
        assert deployment.concurrency_options.collision_strategy == limit["collision_strategy"]

    # triggers: one automation each, running this deployment with the templated parameters
    automations = client.read_resource_related_automations(f"prefect.deployment.{deployment.id}")
    triggers = spec.get("triggers") or []
    assert sorted(a.name for a in automations) == sorted(t["name"] for t in triggers), name
    for wanted_trigger in triggers:
        automation = next(a for a in automations if a.name == wanted_trigger["name"])
        assert automation.enabled is wanted_trigger.get("enabled", True)
        trigger = automation.trigger
        assert trigger.type == wanted_trigger["type"]
        assert trigger.expect == set(wanted_trigger["expect"])
        assert trigger.match.root == wanted_trigger["match"]
        assert trigger.posture == "Reactive" and trigger.threshold == 1
        [action] = automation.actions
        assert action.type == "run-deployment"
        assert action.deployment_id == deployment.id
        assert action.parameters == wanted_trigger["parameters"]


def report_runs(client: SyncPrefectClient, deployment_id: UUID, study_key: str) -> list[FlowRun]:
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    )
    return [r for r in runs if r.parameters.get("study_key") == study_key]


def final_state(flow_run_id: UUID, timeout: float) -> FlowRun:
    with get_client(sync_client=True) as client:
        return wait_for(
            lambda: (r := client.read_flow_run(flow_run_id)).state and r.state.is_final() and r,
            timeout,
            f"flow run {flow_run_id} to finish",
        )


def open_query_ids(server: EmulatorServer, study_key: str) -> set[int]:
    """Queries whose latest comment is not closed, from the emulator's rows (the truth)."""
    ids = set()
    for query in server.emulator.rows(study_key, "queries"):
        comments = sorted(query.get("queryComments") or [], key=lambda c: c["sequence"])
        if comments and not comments[-1]["closed"]:
            ids.add(query["annotationId"])
    return ids


def table_of(client: SyncPrefectClient, flow_run_id: UUID) -> list[dict[str, Any]]:
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    )
    tables = [a for a in artifacts if a.type == "table"]
    assert len(tables) == 1, [a.key for a in artifacts]
    return json.loads(tables[0].data)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def applied(prefect_api: None) -> Iterator[dict[str, DeploymentResponse]]:
    """Every deployment of prefect.yaml applied as `serve` builds it; removed afterwards so
    the trigger does not fire for the syncs of later test modules."""
    ids = [d.apply() for d in runner_deployments()]
    with get_client(sync_client=True) as client:
        yield {d.name: d for d in (client.read_deployment(i) for i in ids)}
        for deployment_id in ids:
            client.delete_resource_owned_automations(f"prefect.deployment.{deployment_id}")
            client.delete_deployment(deployment_id)


@pytest.fixture(scope="module")
def served(applied: dict[str, DeploymentResponse]) -> Iterator[EmulatorServer]:
    """The open-queries deployment served by a Runner in a background thread, its flow runs
    in subprocesses that find the emulator through the environment, as an operator's would."""
    report = next(d for d in runner_deployments() if d.name == REPORT_DEPLOYMENT)
    with running_emulator([REVIEW, REPORT, TRIGGER]) as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMEDNET_BASE_URL", server.base_url)
        mp.setenv("IMEDNET_API_KEY", DEMO_API_KEY)
        mp.setenv("IMEDNET_SECURITY_KEY", DEMO_SECURITY_KEY)
        runner = Runner(name="test-deployments", query_seconds=1, pause_on_shutdown=False)
        loop = asyncio.new_event_loop()

        async def serve() -> None:
            await runner.aadd_deployment(report)
            await runner.start()

        thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
        thread.start()
        wait_for(lambda: runner.started or not thread.is_alive(), 60, "the runner to start")
        assert thread.is_alive(), "the runner stopped at once"
        try:
            yield server
        finally:
            # Let runs the trigger started finish, so stopping cancels nothing half-way.
            deployment_id = applied[REPORT_DEPLOYMENT].id
            with get_client(sync_client=True) as client, contextlib.suppress(AssertionError):
                wait_for(
                    lambda: all(
                        r.state and r.state.is_final()
                        for r in client.read_flow_runs(
                            deployment_filter=DeploymentFilter(
                                id=DeploymentFilterId(any_=[deployment_id])
                            )
                        )
                    ),
                    30,
                    "served runs to finish",
                )
            asyncio.run_coroutine_threadsafe(runner.astop(), loop).result(timeout=30)
            thread.join(timeout=30)
            loop.close()


# --------------------------------------------------------------------------- (i) schemas


@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
def test_parameter_schema_explains_every_parameter(
    applied: dict[str, DeploymentResponse], spec: dict[str, Any]
) -> None:
    """The UI's run form is built from this schema: every field needs a title and a
    description, optional ones their default, and required ones must be marked."""
    schema = applied[spec["name"]].parameter_openapi_schema
    assert schema is not None
    assert_schema_explains(schema, flow_of(spec))


@pytest.mark.parametrize("example", [weekly_review, report_via_deployment], ids=lambda f: f.name)
def test_example_flows_schemas(example: Flow[Any, Any]) -> None:
    assert_schema_explains(parameter_schema(example).model_dump(), example)


def assert_schema_explains(schema: dict[str, Any], flow: Flow[Any, Any]) -> None:
    signature = inspect.signature(flow.fn)
    properties = schema["properties"]
    assert list(properties) == list(signature.parameters)
    required = set()
    for name, parameter in signature.parameters.items():
        prop = properties[name]
        assert prop.get("title"), f"{flow.name}.{name}: no title"
        assert (prop.get("description") or "").strip(), f"{flow.name}.{name}: no description"
        if parameter.default is inspect.Parameter.empty:
            required.add(name)
            assert "default" not in prop, name
        else:
            assert "default" in prop, f"{flow.name}.{name}: optional without a default"
            assert prop["default"] == parameter.default, name
    assert set(schema.get("required", [])) == required, flow.name


# --------------------------------------------------------------------------- (ii) = prefect.yaml


def test_served_deployments_equal_prefect_yaml(applied: dict[str, DeploymentResponse]) -> None:
    assert sorted(applied) == sorted(s["name"] for s in SPECS)
    with get_client(sync_client=True) as client:
        for spec in SPECS:
            flow_name = flow_of(spec).name
            deployment = client.read_deployment_by_name(f"{flow_name}/{spec['name']}")
            assert deployment.id == applied[spec["name"]].id
            assert_matches_yaml(client, spec, deployment, work_pool=None, base_dir=Path.cwd())


# --------------------------------------------------------------------------- (iii) subflows


def test_subflow_example(served: EmulatorServer, tmp_path: Path) -> None:
    key = REVIEW.study_key
    cache = tmp_path / "cache.sqlite"
    state = weekly_review(
        key, cache_path=str(cache), snapshot_dir=str(tmp_path / "snap"), return_state=True
    )
    review = state.result()
    assert_cache_equals_truth(served, cache, key)
    assert set(review.changed) >= {"subjects", "visits", "records", "queries"}
    assert review.open_queries == len(open_query_ids(served, key))
    assert review.total_queries == len(served.emulator.rows(key, "queries"))
    parent = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])
            )
        )
        names = {client.read_flow(c.flow_id).name: c for c in children}
    assert sorted(names) == ["get-open-queries", "incremental-sync"]
    assert all(c.state and c.state.is_completed() for c in names.values())
    sync, report = names["incremental-sync"], names["get-open-queries"]
    assert sync.start_time and report.start_time and sync.end_time
    assert sync.end_time <= report.start_time, "the report ran before the sync finished"


# --------------------------------------------------------------------------- (iv) run_deployment


def test_run_deployment_example(served: EmulatorServer) -> None:
    key = REPORT.study_key
    state = report_via_deployment(key, timeout=120, poll_interval=0.5, return_state=True)
    child = state.result()
    assert child.state_type == "COMPLETED", child
    assert child.deployment == OPEN_QUERIES_DEPLOYMENT
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(child.flow_run_id))
        assert run.parameters == {"study_key": key}
        assert run.state and run.state.is_completed()
        # linked as a subflow of the calling run
        assert run.parent_task_run_id is not None
        parent_task = client.read_task_run(run.parent_task_run_id)
        assert parent_task.flow_run_id == state.state_details.flow_run_id
        table = table_of(client, run.id)
    assert {row["query"] for row in table} == open_query_ids(served, key)


def test_run_deployment_timeout_fails_clearly(served: EmulatorServer) -> None:
    state = report_via_deployment(
        REPORT.study_key, timeout=0.5, poll_interval=0.1, return_state=True
    )
    assert state.is_failed()
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.5s.*has been cancelled"):
        state.result()
    with get_client(sync_client=True) as client:
        [child] = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(
                    any_=[state.state_details.flow_run_id]
                )
            )
        )
    ended = final_state(child.id, timeout=60)
    assert ended.state is not None and ended.state.is_cancelled(), ended.state


# --------------------------------------------------------------------------- (v) event trigger


def test_trigger_runs_report_after_sync_that_changed_queries(
    served: EmulatorServer, applied: dict[str, DeploymentResponse], tmp_path: Path
) -> None:
    """Three syncs with an event each (all changed / records only / queries added) and one
    idle sync with no event: exactly two report runs, each with the study from the event.
    Events reach the triggers service in order, so once the run for the last event exists
    the records-only event has been evaluated too."""
    key = TRIGGER.study_key
    emu = served.emulator
    deployment_id = applied[REPORT_DEPLOYMENT].id

    def sync() -> dict[str, bool]:
        result = run_incremental_sync(
            [key], cache_path=str(tmp_path / "c.sqlite"), snapshot_dir=str(tmp_path / "s")
        )
        return {name: c.changed for name, c in result.studies[key].collections.items()}

    with get_client(sync_client=True) as client:
        assert report_runs(client, deployment_id, key) == []
        assert sync()["queries"]  # the first download changes everything
        wait_for(lambda: report_runs(client, deployment_id, key), 60, "a report run")

        emu.mutate(key, "edit_records", n=3, seed=7)
        changed = sync()
        assert changed["records"] and not changed["queries"]
        assert not any(sync().values())  # idle: no event at all

        emu.mutate(key, "add_queries", n=2, seed=8)
        assert sync()["queries"]
        runs = wait_for(
            lambda: len(found := report_runs(client, deployment_id, key)) >= 2 and found,
            60,
            "a second report run",
        )
        events = wait_for(lambda: sync_events(client, key), 30, "three persisted events")
        time.sleep(1.0)  # a wrongly triggered run would have been created by now
        runs = report_runs(client, deployment_id, key)
    assert len(runs) == 2, [(r.name, r.created) for r in runs]
    assert [e["resource"]["imednet.changed.queries"] for e in events] == ["true", "false", "true"]
    assert [e["resource"]["imednet.changed.records"] for e in events] == ["true", "true", "false"]
    latest = max(runs, key=lambda r: r.created or 0)
    ended = final_state(latest.id, timeout=90)
    assert ended.state is not None and ended.state.is_completed(), ended.state
    with get_client(sync_client=True) as client:
        table = table_of(client, latest.id)
    assert {row["query"] for row in table} == open_query_ids(served, key)


def sync_events(client: SyncPrefectClient, key: str) -> list[dict[str, Any]]:
    """The persisted `imednet.sync.changed` events of one study, oldest first, once all
    three are there."""
    response = client.request(
        "POST",
        "/events/filter",
        json={
            "filter": {
                "event": {"name": [CHANGED_EVENT]},
                "resource": {"id": [f"imednet.study.{key}"]},
                "order": "ASC",
            },
            "limit": 50,
        },
    )
    events = response.json()["events"]
    return events if len(events) >= 3 else []
