"""Background Sync, as a scheduled flow instead of a thread loop.

incremental_sync --> acquire FileLock --> ["*"]? list the visible studies
--> per study, concurrently: every collection since its watermark
    --> reconcile hard deletes --> merge (one transaction)
--> Parquet snapshots of changed studies --> release FileLock
--> artifact + `imednet.sync.changed` event per changed study (then fail, if one did)

The flow is `async` so a run costs no more than its work: Prefect 3.9 ends every
synchronous flow run by joining its heartbeat thread, which sleeps in one-second steps.
Heartbeats stay on (they let the server spot crashed deployment runs). From synchronous
code, call `run_incremental_sync(...)`; from async code, `await incremental_sync(...)`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from filelock import Timeout
from prefect import Task, flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.context import SyncClientContext
from prefect.events import emit_event
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import BaseModel, Field, PrivateAttr

from flows.common import Concurrency, artifact_key, documented, param
from flows.connection import imednet_client
from imednet_flows.cache.db import connect
from imednet_flows.cache.lock import exclusive_writer, lock_path
from imednet_flows.cache.results import StudyResult
from imednet_flows.cache.snapshots import SnapshotResult, snapshot_is_current
from imednet_flows.cache.studies import Discovery, wants_discovery
from imednet_flows.credentials import aresolve_credentials
from imednet_flows.edc.client import Credentials, ImednetClient
from tasks.cache import list_visible_studies, record_studies, snapshot_study, sync_study

CHANGED_EVENT = "imednet.sync.changed"
R = TypeVar("R")
COUNTS = ("inserted", "updated", "soft_deleted", "hard_deleted")


def changed_resource(study: StudyResult) -> dict[str, str]:
    """The event's resource. Which collections changed are labels, because deployment
    triggers match labels, not payloads: the open-queries report can then fire only when
    queries changed."""
    key = study.study_key
    resource = {"prefect.resource.id": f"imednet.study.{key}", "imednet.study-key": key}
    for name, c in study.collections.items():
        resource[f"imednet.changed.{name}"] = "true" if c.changed else "false"
    return resource


class SyncRunResult(BaseModel):
    skipped: bool = False
    reason: str = ""
    studies: dict[str, StudyResult] = Field(default_factory=dict)
    snapshots: dict[str, SnapshotResult] = Field(default_factory=dict)
    #: Studies that failed, with what went wrong (the run fails after publishing the rest).
    failed: dict[str, str] = Field(default_factory=dict)
    #: With study_keys=["*"]: what the API listed, and what the cache knew that it no longer
    #: lists (kept in the cache unless pruned).
    discovered: list[str] | None = None
    missing_studies: list[str] = Field(default_factory=list)
    pruned_studies: list[str] = Field(default_factory=list)
    requests: int = 0
    seconds: float = 0.0
    #: The exceptions behind `failed`, kept for the error the run ends with (not serialised).
    _errors: dict[str, BaseException] = PrivateAttr(default_factory=dict)


class SyncFailed(RuntimeError):
    """Some studies failed; the others were saved and published."""


@flow(name="incremental-sync", task_runner=ThreadPoolTaskRunner(max_workers=8))
@documented
async def incremental_sync(
    study_keys: Annotated[
        list[Annotated[str, Field(min_length=1, pattern=r"\S")]],
        param(
            "Study keys",
            "Study keys to sync, e.g. PHX-101 (one per item; case-sensitive). The studies "
            "are synced concurrently. One item `*` syncs every study the API key can see, "
            "listed again on each run.",
            min_length=1,
        ),
    ],
    cache_path: Annotated[
        str,
        param(
            "Cache file",
            "SQLite cache file, created if missing; relative paths are taken from the folder "
            "the flow runs in. Readers never block; a sync takes the lock file next to it "
            "(`{cache file}.lock`, e.g. imednet.sqlite.lock).",
        ),
    ] = "imednet-cache/imednet.sqlite",
    snapshot_dir: Annotated[
        str,
        param(
            "Snapshot folder",
            "Where Parquet snapshots go: `{snapshot folder}/{study}/latest/` holds the newest "
            "complete set, e.g. imednet-cache/snapshots/PHX-101/latest/.",
        ),
    ] = "imednet-cache/snapshots",
    full_refresh: Annotated[
        bool,
        param(
            "Full refresh",
            "Re-download everything and drop what the API no longer lists. Needed to accept a "
            "study that shrank by more than half.",
        ),
    ] = False,
    lock_timeout: Annotated[
        float,
        param(
            "Lock wait (seconds)",
            "Seconds to wait for another sync holding the cache lock.",
            ge=0,
        ),
    ] = 600.0,
    on_lock_timeout: Annotated[
        Literal["skip", "fail"],
        param(
            "When the lock wait ends",
            "skip: end this run without changes (logged); fail: fail the run.",
        ),
    ] = "skip",
    overlap_seconds: Annotated[
        float,
        param(
            "Overlap (seconds)",
            "Re-read changes this many seconds before the watermark, for server-side commit "
            "delays.",
            ge=0,
            le=86400,
        ),
    ] = 30.0,
    snapshot_retention: Annotated[
        int,
        param("Snapshots kept", "Complete snapshot sets kept per study.", ge=1, le=100),
    ] = 5,
    prune_missing_studies: Annotated[
        bool,
        param(
            "Prune studies no longer listed",
            'With study keys ["*"]: delete from the cache the studies the API no longer lists. '
            "Off: they are kept and reported in the artifact and logs.",
        ),
    ] = False,
    max_concurrency: Concurrency = 0,
) -> SyncRunResult:
    """Bring the cache up to date with the API and publish Parquet snapshots."""
    discover = wants_discovery(study_keys)  # a bad selection fails before anything is written
    credentials = await aresolve_credentials()
    # The work is blocking (HTTP, SQLite, Parquet): a thread keeps it off the flow's event
    # loop; its tasks still run as task runs of this flow.
    result = await asyncio.to_thread(
        _sync_job,
        study_keys,
        discover,
        credentials,
        Path(cache_path),
        Path(snapshot_dir),
        full_refresh,
        lock_timeout,
        on_lock_timeout,
        overlap_seconds,
        snapshot_retention,
        prune_missing_studies,
        max_concurrency,
    )
    if result.skipped:
        return result
    # Studies that succeeded are published even when others failed: their changes are in
    # the cache and snapshots, and downstream triggers must fire for them.
    await _publish(result)
    if result.failed:
        summary = "; ".join(f"{k}: {e}" for k, e in result.failed.items())
        total = len(set(result.failed) | set(result.studies))
        raise SyncFailed(
            f"sync failed for {len(result.failed)} of {total} studies "
            f"({summary}). Studies that succeeded were saved and published."
        ) from next(iter(result._errors.values()), None)
    return result


def run_incremental_sync(*args: Any, **kwargs: Any) -> SyncRunResult:
    """`incremental_sync` from synchronous code: plain Python or a synchronous flow (where it
    runs as a subflow)."""
    return run_coro_as_sync(incremental_sync(*args, **kwargs))


def _sync_job(
    study_keys: list[str],
    discover: bool,
    credentials: Credentials,
    cache: Path,
    snapshot_dir: Path,
    full_refresh: bool,
    lock_timeout: float,
    on_lock_timeout: str,
    overlap: float,
    retention: int,
    prune_missing: bool,
    max_concurrency: int,
) -> SyncRunResult:
    started = time.perf_counter()
    # One Prefect client for every task this thread runs (each would open its own).
    with SyncClientContext.get_or_create(), imednet_client(max_concurrency, credentials) as client:
        # Studies are listed before the lock is taken: a key that sees none writes nothing.
        listed = list_visible_studies(client) if discover else None
        try:
            with exclusive_writer(cache, lock_timeout):
                result = _run(
                    client,
                    study_keys,
                    listed,
                    cache,
                    snapshot_dir,
                    full_refresh,
                    overlap,
                    retention,
                    prune_missing,
                )
        except Timeout:
            message = (
                f"another sync holds {lock_path(cache)} (waited {lock_timeout:g}s); "
                "this run changed nothing"
            )
            if on_lock_timeout == "fail":
                raise RuntimeError(
                    message + ". Raise lock_timeout or check for a stuck run."
                ) from None
            get_run_logger().warning("skipping: %s", message)
            return SyncRunResult(skipped=True, reason=message)
        result.requests = client.requests
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _run(
    client: ImednetClient,
    study_keys: list[str],
    listed: list[dict[str, Any]] | None,
    cache: Path,
    snapshot_dir: Path,
    full_refresh: bool,
    overlap: float,
    retention: int,
    prune_missing: bool,
) -> SyncRunResult:
    result = SyncRunResult()
    if cache.exists():
        _upgrade_schema(cache)
    if listed is not None:
        found, pruned = record_studies(str(cache), listed, prune_missing)
        study_keys = found.visible
        _record_discovery(result, found, pruned)
    done, errors = _per_study(
        sync_study,
        list(dict.fromkeys(study_keys)),
        client=client,
        cache_path=str(cache),
        full_refresh=full_refresh,
        overlap_seconds=overlap,
    )
    result.studies.update(done)
    for key, exc in errors.items():  # other studies still get merged and snapshotted
        result.failed[key] = str(exc)
        result._errors[key] = exc
    stale = _stale_snapshots(cache, snapshot_dir, list(result.studies))
    done, errors = _per_study(
        snapshot_study,
        stale,
        cache_path=str(cache),
        snapshot_dir=str(snapshot_dir),
        retention=retention,
    )
    result.snapshots.update(done)
    for key, exc in errors.items():  # the cache is saved; the next run publishes the snapshot
        result.failed[key] = f"its snapshot failed: {exc}"
        result._errors[key] = exc
    return result


def _per_study(
    study_task: Task[..., R], keys: list[str], **kwargs: Any
) -> tuple[dict[str, R], dict[str, Exception]]:
    """Run `study_task(study_key=key, **kwargs)` for each study: results and errors by study key.

    One study (the usual case) runs in this thread, which holds the run's Prefect client;
    several run concurrently as submitted task runs. A task run in a worker thread opens two
    Prefect API clients of its own, and each loads the CA bundle into a new TLS context
    (about 0.1 s on a small machine): on an ordinary 15-minute cycle that was most of the
    sync's own time."""
    done: dict[str, R] = {}
    errors: dict[str, Exception] = {}
    if len(keys) == 1:
        try:
            done[keys[0]] = study_task(study_key=keys[0], **kwargs)
        except Exception as exc:
            errors[keys[0]] = exc
        return done, errors
    futures = {key: study_task.submit(study_key=key, **kwargs) for key in keys}
    for key, future in futures.items():
        try:
            done[key] = future.result()
        except Exception as exc:
            errors[key] = exc
    return done, errors


def _upgrade_schema(cache: Path) -> None:
    """Bring an existing cache of an older schema up to date before any study reads it.

    Study syncs open the cache read-only while they fetch, and a reader refuses an old
    schema; the upgrade happens once, here, under the writer lock, so concurrent studies
    never race to migrate the same file."""
    connect(cache).close()


def _record_discovery(result: SyncRunResult, found: Discovery, pruned: list[str]) -> None:
    result.discovered = found.visible
    result.missing_studies = found.missing
    result.pruned_studies = pruned


def _stale_snapshots(cache: Path, snapshot_dir: Path, study_keys: list[str]) -> list[str]:
    """Studies whose `latest` set is older than their cached data (or missing)."""
    if not study_keys or not cache.exists():
        return []
    conn = connect(cache, readonly=True)
    try:
        return [k for k in study_keys if not snapshot_is_current(conn, snapshot_dir, k)]
    finally:
        conn.close()


async def _publish(result: SyncRunResult) -> None:
    rows: list[dict[str, object]] = []
    for key, study in result.studies.items():
        for name, c in study.collections.items():
            rows.append(
                {
                    "study": key,
                    "collection": name,
                    "inserted": c.inserted,
                    "updated": c.updated,
                    "soft-deleted": c.soft_deleted,
                    "hard-deleted": c.hard_deleted,
                    "unchanged": c.unchanged,
                    "requests": c.requests,
                    "watermark before": c.watermark_before or "",
                    "watermark after": c.watermark_after or "",
                    "note": f"SKIPPED: {c.skipped}" if c.skipped else "",
                }
            )
        if study.changed:
            emit_event(
                CHANGED_EVENT,
                resource=changed_resource(study),
                payload={
                    name: {k: getattr(c, k) for k in COUNTS}
                    for name, c in study.collections.items()
                },
            )
    notes = "".join(f" FAILED {key}: {why}." for key, why in result.failed.items())
    if result.missing_studies:
        gone = ", ".join(result.missing_studies)
        kept = "pruned from the cache" if result.pruned_studies else "kept in the cache"
        notes += f" No longer listed by the API: {gone} ({kept})."
    await acreate_table_artifact(
        key=artifact_key("incremental-sync"),
        table=rows,
        description=(
            f"Sync of {len(result.studies)} study(ies): {result.requests} API "
            f"requests in {result.seconds:.1f}s; snapshots: "
            f"{', '.join(result.snapshots) or 'none (nothing changed)'}.{notes}"
        ),
    )
