"""Three ways one flow starts another, shown on the project's own flows.

(a) As a subflow: call the flow like a function inside another flow.
    `weekly_review(study_key)` calls `incremental_sync` (through `run_incremental_sync`, as
    it is async) and then `get_open_queries`; both
    run in this process, as child runs of the review, and return their results directly.
    Use it when the parent needs the child's result and the child needs no other machine.

(b) Through a deployment: `run_deployment("get-open-queries/open-queries-report", ...)`
    from a flow. `report_via_deployment(study_key)` creates a run of the deployment, linked
    to the calling run as a subflow, which whatever serves the deployment executes (a worker
    of the `imednet-process` pool, or `imednet-flows serve`), then waits for it. It returns
    the child run's final state. A child that has not finished within `timeout` seconds
    fails this flow with a TimeoutError naming the child run and its state, and the child is
    cancelled so that a report nobody waits for does not appear later. Use it when the
    child should run where its deployment runs, with that deployment's defaults and limits.

(c) Through an event: the deployment trigger in prefect.yaml, with no code at all.
    `incremental_sync` emits `imednet.sync.changed` for every study whose data changed,
    with the resource `imednet.study.<key>` labelled `imednet.changed.<entity>` = "true" or
    "false". The `open-queries-report` deployment declares

        triggers:
          - type: event
            expect: ["imednet.sync.changed"]
            match:
              prefect.resource.id: "imednet.study.*"
              imednet.changed.queries: "true"
            parameters:
              study_key: "{{ event.resource['imednet.study-key'] }}"

    so Prefect's server (its triggers and actions services, which also run in the temporary
    server a process starts when no PREFECT_API_URL is set) creates a report run for that
    study after each sync that changed its queries, and none after a sync that changed only
    other entities or nothing. The run is executed by whatever serves the deployment.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.states import Cancelled, Cancelling
from pydantic import BaseModel, Field

from flows.common import StudyKey, documented
from flows.incremental_sync import run_incremental_sync
from flows.open_queries import get_open_queries

OPEN_QUERIES_DEPLOYMENT = "get-open-queries/open-queries-report"


class WeeklyReview(BaseModel):
    study_key: str
    #: Collections of the study whose rows changed in this sync (inserted, updated or deleted).
    changed: list[str]
    requests: int
    open_queries: int
    closed_queries: int
    total_queries: int


class ChildRun(BaseModel):
    """The child run a deployment ran for us, in its final state."""

    flow_run_id: str
    name: str
    deployment: str
    state_type: str
    state_name: str
    message: str | None = None


@flow(name="weekly-review")
@documented
def weekly_review(
    study_key: StudyKey,
    cache_path: Annotated[
        str, Field(description="SQLite cache file the sync updates (created if missing).")
    ] = "imednet-cache/imednet.sqlite",
    snapshot_dir: Annotated[
        str, Field(description="Where the sync publishes Parquet snapshots of the study.")
    ] = "imednet-cache/snapshots",
) -> WeeklyReview:
    """Sync one study, then report its open queries: two subflows, one after the other."""
    sync = run_incremental_sync([study_key], cache_path=cache_path, snapshot_dir=snapshot_dir)
    queries = get_open_queries(study_key)
    study = sync.studies.get(study_key)
    changed = study.changed_collections if study else []
    get_run_logger().info(
        "%s: changed %s; %d open queries",
        study_key,
        ", ".join(changed) or "nothing",
        len(queries.open),
    )
    return WeeklyReview(
        study_key=study_key,
        changed=changed,
        requests=sync.requests,
        open_queries=len(queries.open),
        closed_queries=queries.closed,
        total_queries=queries.total,
    )


@flow(name="report-via-deployment")
@documented
def report_via_deployment(
    study_key: StudyKey,
    timeout: Annotated[
        float,
        Field(
            gt=0,
            description="Seconds to wait for the report run to finish before this flow fails "
            "(and the report run is cancelled).",
        ),
    ] = 600,
    poll_interval: Annotated[
        float, Field(gt=0, description="Seconds between checks of the report run's state.")
    ] = 5,
    deployment: Annotated[
        str,
        Field(
            min_length=3,
            description='The open-queries deployment, as "flow name/deployment name".',
        ),
    ] = OPEN_QUERIES_DEPLOYMENT,
) -> ChildRun:
    """Have the open-queries deployment report on one study, and wait for its run."""
    child = run_deployment(
        deployment,
        parameters={"study_key": study_key},
        timeout=timeout,
        poll_interval=poll_interval,
        as_subflow=True,
    )
    state = child.state
    if state is None or not state.is_final():
        current = state.name if state else "no state"
        _cancel(child.id, state.type if state else None)
        raise TimeoutError(
            f"run {child.name!r} ({child.id}) of deployment {deployment} did not finish within "
            f"{timeout:g}s; it was {current} and has been cancelled. Is a worker of its work "
            "pool, or `imednet-flows serve`, running? Raise `timeout` for long reports."
        )
    result = ChildRun(
        flow_run_id=str(child.id),
        name=child.name,
        deployment=deployment,
        state_type=state.type.value,
        state_name=state.name,
        message=state.message,
    )
    if not state.is_completed():
        raise RuntimeError(
            f"run {child.name!r} ({child.id}) of deployment {deployment} ended "
            f"{state.name}: {state.message or 'no message'}"
        )
    get_run_logger().info("report run %s of %s: %s", child.name, deployment, state.name)
    return result


def _cancel(flow_run_id: UUID, state_type: StateType | None) -> None:
    """A run not started yet is cancelled outright; a running one is asked to stop (its
    worker or serve process then kills it and marks it Cancelled)."""
    not_started = state_type in (None, StateType.SCHEDULED, StateType.PENDING)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(
            flow_run_id,
            Cancelled(message="the caller stopped waiting")
            if not_started
            else Cancelling(message="the caller stopped waiting"),
            force=True,
        )
