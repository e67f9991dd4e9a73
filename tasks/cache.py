"""Tasks around the cache: one study's sync, and its Parquet snapshot.

A study's download runs concurrently with other studies' (each stages into
its own file); merges into the shared SQLite file take turns under a
process-wide lock, inside the FileLock the flow holds for the whole run.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from imednet_flows.progress import study_pages
from imednet_flows.timestamps import format_timestamp


class ProgressReporter:
    """Page progress of one study's sync as a Prefect progress artifact, updated at most
    twice a second, and ended with what was done (or where it failed): the artifact is what
    a person sees of a run in progress, and what stays when it is over."""

    def __init__(self, study_key: str, min_interval: float = 0.5) -> None:
        self.study_key = study_key
        self.min_interval = min_interval
        self.pages = 0
        self.where = "starting"
        self._last = 0.0
        try:
            self.artifact_id = create_progress_artifact(
                progress=0.0, description=f"Sync of {study_key}: pages fetched"
            )
        except Exception:  # progress is a nicety; a failure here must not fail the sync
            self.artifact_id = None

    def __call__(self, entity: str, page: int, total_pages: int) -> None:
        self.pages += 1
        self.where = f"{entity} page {page}/{total_pages}"
        now = time.monotonic()
        if total_pages and (now - self._last > self.min_interval or page == total_pages):
            self._last = now
            self._update(100.0 * page / total_pages, f"Sync of {self.study_key}: {self.where}")

    def done(self, result: StudyResult) -> None:
        collections = result.collections.values()
        changed = sum(c.inserted + c.updated + c.soft_deleted + c.hard_deleted for c in collections)
        skipped = len(result.skipped_collections)
        self._update(
            100.0,
            f"Sync of {self.study_key} done: {len(result.collections) - skipped} collections"
            f"{f' ({skipped} skipped)' if skipped else ''}, {self.pages} pages, "
            f"{result.requests} requests, {changed} rows changed",
        )

    def failed(self, exc: BaseException) -> None:
        self._update(
            100.0,
            f"Sync of {self.study_key} failed at {self.where} ({type(exc).__name__}); "
            "nothing of this study was merged",
        )

    def _update(self, progress: float, description: str) -> None:
        if self.artifact_id is None:
            return
        with contextlib.suppress(Exception):  # never fail a sync over its progress display
            update_progress_artifact(self.artifact_id, progress=progress, description=description)


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
    progress = ProgressReporter(study_key)
    sync = StudySync(
        client,
        Path(cache_path),
        study_key,
        full_refresh=full_refresh,
        overlap_seconds=overlap_seconds,
        progress=study_pages(study_key, progress),
    )
    try:
        sync.run_fetch()
        result = merge_into(Path(cache_path), sync.staged())
    except BaseException as exc:
        progress.failed(exc)
        raise
    finally:
        sync.close()
    progress.done(result)
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


@task(name="list-studies", cache_policy=NO_CACHE)
def list_visible_studies(client: ImednetClient) -> list[dict[str, Any]]:
    """GET /studies: every study the key can see (none is an error)."""
    return list_studies(client)


@task(name="record-studies", cache_policy=NO_CACHE)
def record_studies(
    cache_path: str, listed: list[dict[str, Any]], prune_missing: bool
) -> tuple[Discovery, list[str]]:
    """Keep the listing in the cache; studies gone from it are reported (and pruned from
    the cache only when asked). Returns (discovery, pruned)."""
    logger = get_run_logger()
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
