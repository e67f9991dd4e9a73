"""The incremental sync under a real Prefect API against the emulator (issue: sync)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

from flows.incremental_sync import lock_path, run_incremental_sync
from imednet_flows.cache.reader import sync_status
from imednet_flows.emulator import EmulatorServer, StudySpec, running_emulator
from tests.conftest import SMALL
from tests.sync_helpers import assert_cache_equals_truth, integrity_ok

pytestmark = pytest.mark.usefixtures("prefect_api")
Env = Callable[[EmulatorServer], None]
K = SMALL.study_key
#: Over 500 rows of every incremental entity, so deltas and reconciles cross pages.
PAGED = StudySpec(study_key="SYNC-1", study_id=7, seed=5, subjects=510)


def run(tmp: Path, *keys: str, **kwargs):
    return run_incremental_sync(
        list(keys or [K]),
        cache_path=str(tmp / "cache.sqlite"),
        snapshot_dir=str(tmp / "snapshots"),
        **kwargs,
    )


@pytest.fixture
def paged() -> EmulatorServer:
    with running_emulator([PAGED, SMALL]) as server:
        yield server


def gets(server: EmulatorServer) -> int:
    return sum(1 for e in server.emulator.requests() if e.method == "GET")


def test_full_then_delta_then_idle(paged: EmulatorServer, imednet_env: Env, tmp_path: Path) -> None:
    imednet_env(paged)
    key = PAGED.study_key
    counts = paged.emulator.counts(key)
    assert min(counts[r] for r in ("subjects", "visits", "records", "queries")) > 500
    first = run(tmp_path, key)
    assert_cache_equals_truth(paged, tmp_path / "cache.sqlite", key)
    assert first.studies[key].collections["records"].inserted == counts["records"]
    assert (tmp_path / "snapshots").exists()

    emu = paged.emulator
    emu.mutate(key, "edit_records", n=30, seed=1)
    emu.mutate(key, "soft_delete", n=4, seed=2)
    deleted = emu.mutate(key, "hard_delete", n=7, seed=3)["ids"]
    emu.mutate(key, "add_subjects", n=3)
    emu.mutate(key, "add_visits", n=2)
    emu.mutate(key, "add_queries", n=5, seed=4)
    emu.mutate(
        key,
        "add_query_comment",
        annotation_id=emu.rows(key, "queries")[0]["annotationId"],
        closed=True,
    )
    emu.reset_requests()
    second = run(tmp_path, key)
    assert_cache_equals_truth(paged, tmp_path / "cache.sqlite", key)
    records = second.studies[key].collections["records"]
    assert records.hard_deleted == 7 and records.soft_deleted == 4
    assert records.updated >= 30 - len(set(deleted))
    # 7 deletions among ~1,600 records: O(d log N) GETs, far from a re-download
    assert records.requests <= 1 + 1 + 7 * 11

    emu.reset_requests()
    idle = run(tmp_path, key)
    assert not any(s.changed for s in idle.studies.values())
    # one listing per set-up collection, one delta per changing one and one count each
    # for hard deletes, one delta of the audit trail
    assert gets(paged) <= 5 + 2 * 5 + 1, [e.query for e in emu.requests()]
    assert idle.snapshots == {}
    assert integrity_ok(tmp_path / "cache.sqlite")


def test_shared_second_across_pages_is_not_missed(
    paged: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    """After a sync, 1,200 records change within the watermark's own second."""
    imednet_env(paged)
    key = PAGED.study_key
    run(tmp_path, key)
    state = {s.entity: s for s in sync_status(tmp_path / "cache.sqlite", key)}
    watermark = state["records"].watermark
    edited = paged.emulator.mutate(key, "edit_records", n=1200, seed=8, at=watermark)
    assert len(edited["ids"]) == 1200
    run(tmp_path, key)
    assert_cache_equals_truth(paged, tmp_path / "cache.sqlite", key)


def test_changes_while_paging_are_caught(
    paged: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(paged)
    key = PAGED.study_key
    run(tmp_path, key)
    emu = paged.emulator
    emu.mutate(key, "edit_records", n=600, seed=9)  # a delta of two pages
    emu.add_fault("latency", route="records", seconds=0.1, count=None)
    stop = threading.Event()

    def churn() -> None:
        seed = 100
        while not stop.is_set():
            emu.mutate(key, "edit_records", n=5, seed=seed)
            emu.mutate(key, "hard_delete", n=1, seed=seed)
            seed += 1
            time.sleep(0.1)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        run(tmp_path, key)
    finally:
        stop.set()
        thread.join()
    emu.clear_faults()
    run(tmp_path, key)
    assert_cache_equals_truth(paged, tmp_path / "cache.sqlite", key)


def test_suspicious_empty_answer_never_wipes(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    run(tmp_path)
    before = len(fresh_emulator.emulator.rows(K, "records"))
    ids = [r["recordId"] for r in fresh_emulator.emulator.rows(K, "records")]
    fresh_emulator.emulator.mutate(K, "hard_delete", ids=ids)
    with pytest.raises(RuntimeError, match="full_refresh"):
        run(tmp_path)
    from tests.sync_helpers import cache_rows

    assert len(cache_rows(tmp_path / "cache.sqlite", K, "records")) == before
    run(tmp_path, full_refresh=True)
    assert cache_rows(tmp_path / "cache.sqlite", K, "records") == {}


def test_wrong_credentials_write_nothing(
    fresh_emulator: EmulatorServer,
    imednet_env: Env,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    imednet_env(fresh_emulator)
    monkeypatch.setenv("IMEDNET_SECURITY_KEY", "wrong")
    with pytest.raises(RuntimeError, match="401"):
        run(tmp_path)
    assert len(fresh_emulator.emulator.requests()) == 1
    assert not (tmp_path / "cache.sqlite").exists()
    assert not (tmp_path / "snapshots").exists()


def test_storm_of_429_and_503_ends_exact(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    emu = fresh_emulator.emulator
    emu.add_fault("status", status=429, count=5)
    emu.add_fault("status", status=503, route="records", count=3)
    emu.add_fault("drop", route="visits", count=2)
    run(tmp_path)
    assert_cache_equals_truth(fresh_emulator, tmp_path / "cache.sqlite", K)


def test_persistent_failure_leaves_watermark_unmoved(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    run(tmp_path)
    before = sync_status(tmp_path / "cache.sqlite", K)
    fresh_emulator.emulator.mutate(K, "edit_records", n=3)
    fresh_emulator.emulator.add_fault("status", status=503, route="queries", count=None)
    with pytest.raises(RuntimeError, match="503"):
        run(tmp_path)
    after = sync_status(tmp_path / "cache.sqlite", K)
    assert [(s.entity, s.watermark) for s in after] == [(s.entity, s.watermark) for s in before]


def test_lock_held_skips_or_fails(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    (tmp_path).mkdir(exist_ok=True)
    holder = FileLock(lock_path(tmp_path / "cache.sqlite"))
    with holder:
        skipped = run(tmp_path, lock_timeout=0.2)
        assert skipped.skipped and "another sync holds" in skipped.reason
        with pytest.raises(RuntimeError, match="another sync holds"):
            run(tmp_path, lock_timeout=0.2, on_lock_timeout="fail")
    assert fresh_emulator.emulator.requests() == []


def test_study_key_with_path_characters_stays_inside(imednet_env: Env, tmp_path: Path) -> None:
    evil = "../../evil/K"
    with running_emulator([StudySpec(study_key=evil, subjects=5)]) as server:
        imednet_env(server)
        run(tmp_path / "inner", evil)
        assert_cache_equals_truth(server, tmp_path / "inner" / "cache.sqlite", evil)
    outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "inner")]
    assert outside == []


def test_event_and_artifact(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    imednet_env(fresh_emulator)
    result = run(tmp_path)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["incremental-sync"]))
        )
    assert artifacts
    assert result.studies[K].changed


def test_unknown_study_fails_clearly_others_saved(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    with pytest.raises(RuntimeError, match=r"NOPE.*study key is unknown"):
        run(tmp_path, K, "NOPE")
    assert_cache_equals_truth(fresh_emulator, tmp_path / "cache.sqlite", K)


def test_not_loopback_guard_for_tests() -> None:
    from tests.conftest import is_loopback_url

    assert not is_loopback_url("https://edc.prod.imednetapi.com")
    assert is_loopback_url("http://127.0.0.1:8080") and is_loopback_url("http://[::1]:1")
