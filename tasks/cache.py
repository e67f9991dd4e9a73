"""Tasks around the cache: one study's sync, and its Parquet snapshot.

A study's download runs concurrently with other studies' (each stages into
its own file); merges into the shared SQLite file take turns under a
process-wide lock, inside the FileLock the flow holds for the whole run.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from imednet_flows.cache.schema import connect
from imednet_flows.cache.snapshots import write_snapshot
from imednet_flows.cache.sync import StudySync, merge_into
from imednet_flows.edc.client import ImednetClient
from imednet_flows.progress import study_pages


def _progress_reporter(study_key: str):
    """Page progress as a Prefect progress artifact, updated at most twice a second."""
    try:
        artifact_id = create_progress_artifact(
            progress=0.0, description=f"Sync of {study_key}: pages fetched"
        )
    except Exception:  # progress is a nicety; a failure here must not fail the sync
        return None
    last = [0.0]

    def report(entity: str, page: int, total_pages: int) -> None:
        now = time.monotonic()
        if total_pages and (now - last[0] > 0.5 or page == total_pages):
            last[0] = now
            update_progress_artifact(
                artifact_id,
                progress=100.0 * page / total_pages,
                description=f"Sync of {study_key}: {entity} page {page}/{total_pages}",
            )

    return report


@task(name="sync-study", task_run_name="sync-study[{study_key}]", cache_policy=NO_CACHE)
def sync_study(
    client: ImednetClient,
    cache_path: str,
    study_key: str,
    full_refresh: bool = False,
    overlap_seconds: float = 30.0,
) -> dict:
    """Download what changed in one study and merge it in one transaction."""
    logger = get_run_logger()
    sync = StudySync(
        client,
        Path(cache_path),
        study_key,
        full_refresh=full_refresh,
        overlap_seconds=overlap_seconds,
        progress=study_pages(study_key, _progress_reporter(study_key)),
    )
    try:
        sync.run_fetch()
        result = merge_into(Path(cache_path), sync)
    finally:
        sync.close()
    for name, e in result.entities.items():
        logger.info(
            "%s %s: %d fetched, +%d new, %d updated, %d soft-deleted, %d hard-deleted"
            ", %d requests; watermark %s -> %s",
            study_key,
            name,
            e.fetched,
            e.inserted,
            e.updated,
            e.soft_deleted,
            e.hard_deleted,
            e.requests,
            e.watermark_before,
            e.watermark_after,
        )
    return result.as_dict()


@task(name="snapshot-study", task_run_name="snapshot-study[{study_key}]", cache_policy=NO_CACHE)
def snapshot_study(cache_path: str, study_key: str, snapshot_dir: str, retention: int) -> dict:
    conn = connect(cache_path, readonly=True)
    try:
        result = write_snapshot(conn, study_key, snapshot_dir, retention=retention)
    finally:
        conn.close()
    get_run_logger().info(
        "snapshot of %s at %s: %d file(s) written, %d reused",
        study_key,
        result.path,
        len(result.files_written),
        len(result.files_reused),
    )
    return {
        "path": str(result.path),
        "files_written": len(result.files_written),
        "files_reused": len(result.files_reused),
        "rows": result.rows,
        "seconds": round(result.seconds, 3),
    }
