"""Tasks around the cache: one study's sync, and its Parquet snapshot.

A study's download runs concurrently with other studies' (each stages into
its own file); merges into the shared SQLite file take turns under a
process-wide lock, inside the FileLock the flow holds for the whole run.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from imednet_flows.cache.db import connect, write_transaction
from imednet_flows.cache.merge import merge_into
from imednet_flows.cache.results import StudyResult
from imednet_flows.cache.snapshots import SnapshotResult, write_snapshot
from imednet_flows.cache.studies import Discovery, list_studies, prune, record_listing
from imednet_flows.cache.sync import StudySync
from imednet_flows.edc.client import ImednetClient
from imednet_flows.timestamps import format_timestamp


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
) -> StudyResult:
    """Download what changed in one study and merge it in one transaction."""
    logger = get_run_logger()
    sync = StudySync(
        client,
        Path(cache_path),
        study_key,
        full_refresh=full_refresh,
        overlap_seconds=overlap_seconds,
        progress=_progress_reporter(study_key),
    )
    try:
        sync.run_fetch()
        result = merge_into(Path(cache_path), sync)
    finally:
        sync.close()
    for name, c in result.collections.items():
        if c.skipped:
            logger.warning("%s %s skipped: %s", study_key, name, c.skipped)
            continue
        logger.info(
            "%s %s: %d fetched, +%d new, %d updated, %d soft-deleted, %d hard-deleted"
            ", %d requests; watermark %s -> %s",
            study_key,
            name,
            c.fetched,
            c.inserted,
            c.updated,
            c.soft_deleted,
            c.hard_deleted,
            c.requests,
            c.watermark_before,
            c.watermark_after,
        )
    return result


@task(name="snapshot-study", task_run_name="snapshot-study[{study_key}]", cache_policy=NO_CACHE)
def snapshot_study(
    cache_path: str, study_key: str, snapshot_dir: str, retention: int
) -> SnapshotResult:
    conn = connect(cache_path, readonly=True)
    try:
        result = write_snapshot(conn, study_key, snapshot_dir, retention=retention)
    finally:
        conn.close()
    get_run_logger().info(
        "snapshot of %s at %s: %d file(s) written (%d bytes), %d reused",
        study_key,
        result.path,
        len(result.files_written),
        result.bytes_written,
        len(result.files_reused),
    )
    return result


@task(name="discover-studies", cache_policy=NO_CACHE)
def discover_studies(
    client: ImednetClient, cache_path: str, prune_missing: bool
) -> tuple[Discovery, list[str]]:
    """Every study the key can see, recorded in the cache; those gone from the listing are
    reported (and pruned from the cache only when asked). Returns (discovery, pruned)."""
    logger = get_run_logger()
    listed = list_studies(client)
    conn = connect(cache_path)
    try:
        with write_transaction(conn):
            found = record_listing(conn, listed, format_timestamp(datetime.now(UTC)))
            pruned = found.missing if prune_missing else []
            if pruned:
                prune(conn, pruned)
    finally:
        conn.close()
    logger.info("the key sees %d study(ies): %s", len(found.visible), ", ".join(found.visible))
    for key in found.missing:
        if key in pruned:
            logger.warning("study %s is no longer listed by the API: pruned from the cache", key)
        else:
            logger.warning(
                "study %s is no longer listed by the API; its cached rows are kept "
                "(prune_missing_studies=True removes them)",
                key,
            )
    return found, pruned
