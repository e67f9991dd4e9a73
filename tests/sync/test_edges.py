"""The sync and the cache commands at the edges a user reaches: two caches in one folder,
one failing study among several, odd characters in paths, damaged or misplaced caches,
empty study keys. Each case is driven through the flow or the CLI against the emulator."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterName,
)
from prefect.utilities.asyncutils import run_coro_as_sync
from typer.testing import CliRunner

from flows.incremental_sync import CHANGED_EVENT, incremental_sync, run_incremental_sync
from imednet_flows.cache import staging
from imednet_flows.cache.merge import merge_into
from imednet_flows.cache.reader import get_cached_records, sync_status
from imednet_flows.cache.snapshots import latest_snapshot
from imednet_flows.cache.sync import StudySync
from imednet_flows.cli import app
from imednet_flows.edc.client import Credentials, ImednetClient
from imednet_flows.emulator import DEMO_API_KEY, DEMO_SECURITY_KEY, EmulatorServer
from tests.cli_helpers import one_line
from tests.conftest import SMALL
from tests.project.test_secrets import read_events
from tests.sync_helpers import assert_cache_equals_truth, cache_rows, integrity_ok

pytestmark = pytest.mark.usefixtures("prefect_api")
Env = Callable[[EmulatorServer], None]
K = SMALL.study_key
runner = CliRunner()


def sync(cache: Path, *keys: str, **kwargs: Any):
    return run_incremental_sync(
        list(keys or [K]),
        cache_path=str(cache),
        snapshot_dir=str(cache.parent / f"{cache.stem}-snapshots"),
        **kwargs,
    )


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# --------------------------------------------------------------------------------------
# Two caches in one folder
# --------------------------------------------------------------------------------------


def test_two_caches_in_one_folder_keep_their_own_changes(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    """Sync A is slow on its last entity while sync B of another cache in the same folder
    starts: A must still merge exactly its own download (here: 40 edits)."""
    imednet_env(fresh_emulator)
    emu = fresh_emulator.emulator
    c1, c2 = tmp_path / "c1.sqlite", tmp_path / "c2.sqlite"
    sync(c1)
    sync(c2)
    emu.mutate(K, "edit_records", n=40, seed=4)
    emu.reset_requests()
    # A's queries request waits 3 s; B starts meanwhile and stages into the same folder.
    emu.add_fault("latency", route="queries", seconds=3, count=1)
    outcome: dict[str, Any] = {}

    def sync_a() -> None:
        try:
            outcome["a"] = sync(c1)
        except Exception as exc:  # reported by the assertion below
            outcome["a"] = exc

    a = threading.Thread(target=sync_a)
    a.start()
    wait_until(lambda: any(e.path.endswith("/queries") for e in emu.requests()), 30, "A's queries")
    b = sync(c2)
    a.join(60)
    assert not isinstance(outcome.get("a"), Exception), outcome.get("a")
    assert outcome["a"].studies[K].collections["records"].updated == 40
    assert b.studies[K].collections["records"].updated == 40
    for cache in (c1, c2):
        assert_cache_equals_truth(fresh_emulator, cache, K)
        assert integrity_ok(cache)
    assert list((tmp_path / staging.STAGING_DIR).iterdir()) == []


def test_merge_refuses_a_staging_file_it_did_not_write(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    cache = tmp_path / "c.sqlite"
    sync(cache)
    fresh_emulator.emulator.mutate(K, "edit_records", n=5, seed=1)
    before = cache_rows(cache, K, "records")
    watermarks = [(s.entity, s.watermark) for s in sync_status(cache, K)]
    credentials = Credentials(fresh_emulator.base_url, DEMO_API_KEY, DEMO_SECURITY_KEY)
    with ImednetClient(credentials) as client:
        mine, other = StudySync(client, cache, K), StudySync(client, cache, K)
        try:
            assert mine.stage_path != other.stage_path
            mine.run_fetch()
            other.run_fetch()
            other.stage.close()
            mine.stage.close()
            other.stage_path.replace(mine.stage_path)  # another run's file in its place
            with pytest.raises(staging.StagingMismatch, match="nothing was merged"):
                merge_into(cache, mine.staged())
        finally:
            mine.close()
            other.close()
    assert cache_rows(cache, K, "records") == before
    assert [(s.entity, s.watermark) for s in sync_status(cache, K)] == watermarks


def test_a_crashed_runs_staging_file_is_cleared_by_the_next_run_of_its_cache_only(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    c1, c2 = tmp_path / "c1.sqlite", tmp_path / "c2.sqlite"
    left_by_c1 = staging.staging_file(c1, K, staging.new_token())
    left_by_c2 = staging.staging_file(c2, K, staging.new_token())
    for path, cache in ((left_by_c1, c1), (left_by_c2, c2)):
        staging.create(path, cache, K, "dead-run").close()
    sync(c1)
    assert not left_by_c1.exists()
    assert left_by_c2.exists()  # another cache's file is none of c1's business


# --------------------------------------------------------------------------------------
# One failing study among several
# --------------------------------------------------------------------------------------


def test_a_failing_study_does_not_hide_the_others_changes(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    cache = tmp_path / "cache.sqlite"
    started = time.time()
    name = f"edge-{time.monotonic_ns()}"
    with pytest.raises(RuntimeError, match=r"NOPE.*403.*saved and published"):
        run_coro_as_sync(
            incremental_sync.with_options(flow_run_name=name)(
                [K, "NOPE"], cache_path=str(cache), snapshot_dir=str(tmp_path / "snap")
            )
        )
    assert_cache_equals_truth(fresh_emulator, cache, K)
    assert latest_snapshot(tmp_path / "snap", K) is not None
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
        assert run.state is not None and run.state.is_failed()
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
                key=ArtifactFilterKey(any_=["incremental-sync"]),
            )
        )
        table = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
        assert {row["study"] for row in table} == {K}
        assert "FAILED NOPE" in (artifact.description or "")

        def changed_events() -> list[dict[str, Any]]:
            return [
                e
                for e in read_events(
                    client,
                    {
                        "event": {"name": [CHANGED_EVENT]},
                        "related": {"id": [f"prefect.flow-run.{run.id}"]},
                        "occurred": {
                            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started - 5))
                        },
                    },
                )
            ]

        wait_until(lambda: bool(changed_events()), 30, "the change event of study SMALL")
        (event,) = changed_events()
    assert event["resource"]["imednet.study-key"] == K


def test_cli_sync_with_an_unknown_study_exits_1_with_one_clear_line(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    cache, snap = tmp_path / "cache.sqlite", str(tmp_path / "snap")
    result = runner.invoke(
        app,
        ["sync", "--study", K, "--study", "NOPE", "--cache", str(cache), "--snapshots", snap],
    )
    assert result.exit_code == 1
    assert "NOPE" in result.output and "case-sensitive" in result.output
    assert "Traceback" not in result.output
    assert_cache_equals_truth(fresh_emulator, cache, K)


# --------------------------------------------------------------------------------------
# Paths and caches a user may hand over
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["d/cache#1.sqlite", "d/q?x/c.sqlite", "d/100%/c 1.sqlite"])
def test_cache_paths_with_uri_characters(
    name: str, fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    root = tmp_path / "root"
    cache = root / name
    args = ["--cache", str(cache)]
    synced = runner.invoke(app, ["sync", "--study", K, *args, "--snapshots", str(root / "s")])
    assert synced.exit_code == 0, synced.output
    assert_cache_equals_truth(fresh_emulator, cache, K)
    status = runner.invoke(app, ["cache", "status", *args])
    assert status.exit_code == 0, status.output
    assert f"{K:<16}records" in status.output
    out = tmp_path / "export.parquet"
    exported = runner.invoke(app, ["cache", "export", "--study", K, *args, "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    live = [r for r in fresh_emulator.emulator.rows(K, "records") if not r["deleted"]]
    assert f"{len(live)} records" in exported.output
    assert len(get_cached_records(cache, K)) == len(live)
    # Nothing outside the cache's own folder, no stray files from URI parsing.
    expected = {cache, cache.with_name(cache.name + "-wal"), cache.with_name(cache.name + "-shm")}
    beside = {p for p in cache.parent.iterdir() if p.is_file() and "lock" not in p.name}
    assert beside <= expected
    strays = [
        p
        for p in root.rglob("*")
        if p.is_file() and not p.is_relative_to(cache.parent) and not p.is_relative_to(root / "s")
    ]
    assert strays == []


def test_cache_status_on_a_real_cache(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    cache = tmp_path / "cache.sqlite"
    sync(cache)
    result = runner.invoke(app, ["cache", "status", "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines()[1:]}
    counts = fresh_emulator.emulator.counts(K)
    for entity in ("subjects", "visits", "records", "queries"):
        assert rows[entity].split()[0] == K
        assert int(rows[entity].split()[2]) == counts[entity]
    one = runner.invoke(app, ["cache", "status", "--cache", str(cache), "--study", "NOPE"])
    assert one.exit_code == 0 and "no synced data for study NOPE" in one.output


@pytest.mark.parametrize("command", ["status", "export"])
def test_a_damaged_cache_file_is_named_and_explained(command: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache.sqlite"
    cache.write_bytes(b"this is not a database at all\n" * 200)
    args = ["cache", command, "--cache", str(cache)]
    if command == "export":
        args += ["--study", K, "--out", str(tmp_path / "x.parquet")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert str(cache) in result.output and "move it aside" in result.output
    assert "Traceback" not in result.output


def test_sync_into_a_damaged_cache_changes_nothing(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    cache = tmp_path / "cache.sqlite"
    damaged = b"this is not a database at all\n" * 200
    cache.write_bytes(damaged)
    result = runner.invoke(app, ["sync", "--study", K, "--cache", str(cache)])
    assert result.exit_code == 1
    assert str(cache) in result.output and "move it aside" in result.output
    assert "Traceback" not in result.output
    assert cache.read_bytes() == damaged


def test_a_database_of_something_else_is_never_migrated(tmp_path: Path) -> None:
    other = tmp_path / "app.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE patients (id INTEGER)")
    conn.commit()
    conn.close()
    result = runner.invoke(app, ["cache", "status", "--cache", str(other)])
    assert result.exit_code == 1 and "something else" in result.output
    from imednet_flows.cache.db import CacheError, connect

    with pytest.raises(CacheError, match="patients"):
        connect(other)
    conn = sqlite3.connect(other)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert tables == {"patients"}


@pytest.mark.parametrize("command", ["sync", "status", "export"])
def test_empty_or_folder_cache_paths_are_usage_errors(
    command: str, fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    base = ["sync", "--study", K] if command == "sync" else ["cache", command]
    if command == "export":
        base += ["--study", K, "--out", str(tmp_path / "x.parquet")]
    empty = runner.invoke(app, [*base, "--cache", ""])
    assert empty.exit_code == 2 and "cache path is empty" in empty.output
    folder = runner.invoke(app, [*base, "--cache", str(tmp_path)])
    assert folder.exit_code == 2 and "is a folder" in one_line(folder.output), folder.output
    assert fresh_emulator.emulator.requests() == []


def test_an_empty_study_key_requests_nothing(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    for args in (["sync", "--study", K, "--study", " "], ["queries", "--study", ""]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "study key is empty" in result.output
    with pytest.raises(Exception, match="study_keys"):
        sync(tmp_path / "c.sqlite", "")
    assert fresh_emulator.emulator.requests() == []


def test_debug_shows_the_traceback(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    cache = tmp_path / "cache.sqlite"
    cache.write_bytes(b"garbage" * 100)
    result = runner.invoke(app, ["--debug", "cache", "status", "--cache", str(cache)])
    assert result.exit_code == 1 and "Traceback" in result.output
