"""Background Sync, as a scheduled flow instead of a thread loop.

incremental_sync --> acquire FileLock --> per study, concurrently:
    delta since watermark --> reconcile hard deletes --> merge (one transaction)
--> Parquet snapshots of changed studies --> release FileLock
--> artifact + `imednet.sync.changed` event per changed study
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

from filelock import Timeout
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from flows.common import Concurrency, artifact_key, documented, param
from imednet_flows.cache.lock import exclusive_writer, lock_path
from imednet_flows.cache.schema import connect
from imednet_flows.cache.snapshots import snapshot_is_current
from tasks.cache import snapshot_study, sync_study
from tasks.client import imednet_client

CHANGED_EVENT = "imednet.sync.changed"
COUNTS = ("inserted", "updated", "soft_deleted", "hard_deleted")


def changed_resource(study_key: str, entities: dict[str, dict]) -> dict[str, str]:
    """The event's resource. Which entities changed are labels, because deployment triggers
    match labels, not payloads: the open-queries report can then fire only when queries
    changed."""
    resource = {"prefect.resource.id": f"imednet.study.{study_key}", "imednet.study-key": study_key}
    for name, e in entities.items():
        changed = any(e[k] for k in COUNTS)
        resource[f"imednet.changed.{name}"] = "true" if changed else "false"
    return resource


class SyncRunResult(BaseModel):
    skipped: bool = False
    reason: str = ""
    studies: dict[str, dict] = Field(default_factory=dict)
    snapshots: dict[str, dict] = Field(default_factory=dict)
    requests: int = 0
    seconds: float = 0.0


@flow(name="incremental-sync", task_runner=ThreadPoolTaskRunner(max_workers=8))
@documented
def incremental_sync(
    study_keys: Annotated[
        list[Annotated[str, Field(min_length=1, pattern=r"\S")]],
        param(
            "Study keys",
            "Study keys to sync, e.g. PHX-101 (one per item; case-sensitive). The studies "
            "are synced concurrently.",
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
    max_concurrency: Concurrency = 4,
) -> SyncRunResult:
    """Bring the cache up to date with the API and publish Parquet snapshots."""
    logger = get_run_logger()
    started = time.perf_counter()
    cache = Path(cache_path)
    try:
        with exclusive_writer(cache, lock_timeout):
            result, failures = _run(
                study_keys,
                cache,
                Path(snapshot_dir),
                full_refresh,
                overlap_seconds,
                snapshot_retention,
                max_concurrency,
            )
    except Timeout:
        message = (
            f"another sync holds {lock_path(cache)} (waited {lock_timeout:g}s); "
            "this run changed nothing"
        )
        if on_lock_timeout == "fail":
            raise RuntimeError(message + ". Raise lock_timeout or check for a stuck run.") from None
        logger.warning("skipping: %s", message)
        return SyncRunResult(skipped=True, reason=message)
    result.seconds = round(time.perf_counter() - started, 3)
    # Studies that succeeded are published even when others failed: their changes are in
    # the cache and snapshots, and downstream triggers must fire for them.
    _publish(result, failures)
    if failures:
        summary = "; ".join(f"{k}: {e}" for k, e in failures.items())
        total = len(set(failures) | set(result.studies))
        raise RuntimeError(
            f"sync failed for {len(failures)} of {total} studies "
            f"({summary}). Studies that succeeded were saved and published."
        ) from next(iter(failures.values()))
    return result


def _run(
    study_keys: list[str],
    cache: Path,
    snapshot_dir: Path,
    full_refresh: bool,
    overlap: float,
    retention: int,
    max_concurrency: int,
) -> tuple[SyncRunResult, dict[str, Exception]]:
    result = SyncRunResult()
    failures: dict[str, Exception] = {}
    with imednet_client(max_concurrency) as client:
        futures = {
            key: sync_study.submit(client, str(cache), key, full_refresh, overlap)
            for key in dict.fromkeys(study_keys)
        }
        for key, future in futures.items():
            try:
                result.studies[key] = future.result()
            except Exception as exc:  # other studies still get merged and snapshotted
                failures[key] = exc
        result.requests = client.requests
    stale = _stale_snapshots(cache, snapshot_dir, list(result.studies))
    snapshots = {
        key: snapshot_study.submit(str(cache), key, str(snapshot_dir), retention) for key in stale
    }
    for key, future in snapshots.items():
        try:
            result.snapshots[key] = future.result()
        except Exception as exc:  # the cache is saved; the next run publishes the snapshot
            failures[key] = exc
    return result, failures


def _stale_snapshots(cache: Path, snapshot_dir: Path, study_keys: list[str]) -> list[str]:
    """Studies whose `latest` set is older than their cached data (or missing)."""
    if not study_keys or not cache.exists():
        return []
    conn = connect(cache, readonly=True)
    try:
        return [k for k in study_keys if not snapshot_is_current(conn, snapshot_dir, k)]
    finally:
        conn.close()


def _publish(result: SyncRunResult, failures: dict[str, Exception]) -> None:
    rows: list[dict[str, object]] = []
    for key, study in result.studies.items():
        for name, e in study["entities"].items():
            rows.append(
                {
                    "study": key,
                    "entity": name,
                    "inserted": e["inserted"],
                    "updated": e["updated"],
                    "soft-deleted": e["soft_deleted"],
                    "hard-deleted": e["hard_deleted"],
                    "unchanged": e["unchanged"],
                    "requests": e["requests"],
                    "watermark before": e["watermark_before"] or "",
                    "watermark after": e["watermark_after"] or "",
                }
            )
        if study["changed"]:
            emit_event(
                CHANGED_EVENT,
                resource=changed_resource(key, study["entities"]),
                payload={name: {k: e[k] for k in COUNTS} for name, e in study["entities"].items()},
            )
    failed = "".join(f" FAILED {key}: {exc}." for key, exc in failures.items())
    create_table_artifact(
        key=artifact_key("incremental-sync"),
        table=rows,
        description=(
            f"Sync of {len(result.studies)} study(ies): {result.requests} API "
            f"requests in {result.seconds:.1f}s; snapshots: "
            f"{', '.join(result.snapshots) or 'none (nothing changed)'}.{failed}"
        ),
    )
