"""The sync under real processes: SIGKILL at every crash point, concurrent runs, held locks,
uncommitted writers and hostile study keys.

In-process flow tests (test_flow_sync) cannot show what survives a process dying half-way:
an exception unwinds `finally` blocks and rolls transactions back, a SIGKILL does neither.
So every sync that crashes, races or meets a held lock here is `imednet-flows sync` in a
process of its own against an emulator in the test process, reporting to the session's
Prefect API (one server, not one per process). The processes are forked from a server that
imported the CLI once (`tests.forked_cli`), not started as new interpreters: that saves
about 2.5 s of imports per run. The one normal sync after each crash runs in-process: it
only has to find what the dead process left on disk.

Each crash test starts from a copy of one baseline cache built once per module (a first full
sync costs several seconds), mutates a fresh emulator seeded identically to the baseline's,
lets a sync SIGKILL itself at the named point (`imednet_flows.cache.crash`), and then checks
what a user would depend on: the cache is intact and holds exactly the last committed state,
the `latest` snapshot is the previous complete set, and one normal sync brings cache and
snapshots up to the API's truth.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from filelock import FileLock

from flows.incremental_sync import lock_path, run_incremental_sync
from imednet_flows.cache.crash import ENV as CRASH_ENV
from imednet_flows.cache.crash import MARKER_ENV
from imednet_flows.cache.reader import get_cached_records
from imednet_flows.cache.snapshots import (
    LATEST,
    LINK_TMP_PREFIX,
    TMP_PREFIX,
    latest_snapshot,
    read_manifest,
    study_path,
)
from imednet_flows.emulator import (
    DEMO_API_KEY,
    DEMO_SECURITY_KEY,
    EmulatorServer,
    StudySpec,
    running_emulator,
)
from tests.forked_cli import ForkedCli
from tests.sync_helpers import assert_cache_equals_truth, integrity_ok

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]
Env = Callable[[EmulatorServer], None]

#: Over 500 subjects, visits, records and queries, so listings and deltas can span pages;
#: two visits of two forms per subject keep it at that (runs and snapshots stay quick).
SPEC = StudySpec(
    study_key="REL-1",
    study_id=9,
    seed=3,
    subjects=510,
    intervals=2,
    forms_per_interval=2,
    query_rate=0.3,
)
KEY = SPEC.study_key
EXIT_SKIPPED = 75
SIGKILLED = -9
TOP_FILES = ("records", "subjects", "visits", "queries")

#: Every kind of `crash_point(...)` in the product, in the order a run reaches them: after
#: the fetch and after the merge of a collection of each sync mode (the first and last
#: collections, a set-up list, the watermarked records, the append-only audit trail).
SYNC_POINTS_BEFORE_COMMIT = (
    "sync.after-fetch-forms",
    "sync.after-fetch-users",
    "sync.mid-page",
    "sync.mid-reconcile",
    "sync.after-fetch-records",
    "sync.after-fetch-recordRevisions",
    "sync.after-fetch-codings",
    "sync.merge-forms",
    "sync.merge-records",
    "sync.merge-recordRevisions",
    "sync.merge-codings",
    "sync.before-commit",
)
#: Points after the merge committed: the cache already holds the new state.
POINTS_AFTER_COMMIT = (
    "sync.after-commit",
    "snapshot.mid-form",
    "snapshot.before-rename",
    "snapshot.before-latest",
)


class StaleSnapshot(AssertionError):
    """`latest` did not move past the pre-crash set although the cache's data is newer."""


def _crash_params() -> list[str]:
    return [*SYNC_POINTS_BEFORE_COMMIT, *POINTS_AFTER_COMMIT]


# --------------------------------------------------------------------------------------
# Running the CLI as a real process
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    """One cache with its lock, staging folder and snapshot folder, as the CLI lays them."""

    root: Path

    @property
    def cache(self) -> Path:
        return self.root / "cache.sqlite"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def staging(self) -> Path:
        return self.root / ".staging"

    def study_dir(self, key: str = KEY) -> Path:
        return study_path(self.snapshots, key)


def sync_args(ws: Workspace, *extra: str, key: str = KEY) -> list[str]:
    return [
        "sync",
        "--study",
        key,
        "--cache",
        str(ws.cache),
        "--snapshots",
        str(ws.snapshots),
        *extra,
    ]


def sync_env(
    server: EmulatorServer, crash_at: str | None = None, marker: Path | None = None
) -> dict[str, str]:
    """What an operator would export, plus the session's Prefect API so that a subprocess
    does not start a temporary Prefect server of its own (about 10 s each)."""
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    assert api_url, "the prefect_api fixture must be active"
    env = {k: v for k, v in os.environ.items() if k not in (CRASH_ENV, MARKER_ENV)}
    env.update(
        IMEDNET_BASE_URL=server.base_url,
        IMEDNET_API_KEY=DEMO_API_KEY,
        IMEDNET_SECURITY_KEY=DEMO_SECURITY_KEY,
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        IMEDNET_FLOWS_BACKOFF_BASE="0.01",
        IMEDNET_FLOWS_BACKOFF_MAX="0.05",
    )
    if crash_at is not None:
        assert marker is not None
        env[CRASH_ENV] = crash_at
        env[MARKER_ENV] = str(marker)
    return env


def run_sync(
    cli: ForkedCli,
    server: EmulatorServer,
    ws: Workspace,
    *extra: str,
    key: str = KEY,
    crash_at: str | None = None,
    marker: Path | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return cli.run(sync_args(ws, *extra, key=key), sync_env(server, crash_at, marker), cwd)


def run_all(
    cli: ForkedCli, server: EmulatorServer, commands: list[list[str]]
) -> list[subprocess.CompletedProcess[str]]:
    """Start all commands together, then wait for each (no sleeps: exit statuses decide)."""
    started = [cli.start(command, sync_env(server)) for command in commands]
    try:
        return [run.wait(240) for run in started]
    finally:  # a timeout must not leave the others running
        for run in started:
            run.stop()


def sync_in_process(env: Env, server: EmulatorServer, ws: Workspace) -> None:
    """A normal sync in the test process (the flow the CLI runs, same arguments)."""
    env(server)
    result = run_incremental_sync([KEY], cache_path=str(ws.cache), snapshot_dir=str(ws.snapshots))
    assert not result.skipped, result.reason


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
        f"--- stderr\n{proc.stderr[-3000:]}"
    )


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, describe(proc)


# --------------------------------------------------------------------------------------
# What the checks look at
# --------------------------------------------------------------------------------------


def cache_digest(cache: Path) -> str:
    """The cache's whole logical content (every table, row and watermark), so "nothing
    changed" and "exactly the last committed state" are checked, not sampled."""
    conn = sqlite3.connect(cache)
    try:
        digest = hashlib.sha256()
        for line in conn.iterdump():
            digest.update(line.encode())
        return digest.hexdigest()
    finally:
        conn.close()


def top_rows(manifest: dict) -> dict[str, int]:
    return {name: manifest["rows"][name] for name in TOP_FILES}


def cache_counts(cache: Path, key: str = KEY) -> dict[str, int]:
    conn = sqlite3.connect(f"{cache.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {
            t: conn.execute(f"SELECT COUNT(*) FROM {t} WHERE study_key=?", (key,)).fetchone()[0]
            for t in TOP_FILES
        }
    finally:
        conn.close()


def sync_runs(cache: Path) -> list[dict[str, object]]:
    conn = sqlite3.connect(f"{cache.resolve().as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM sync_runs ORDER BY run_id")]
    finally:
        conn.close()


def check_complete_set(set_dir: Path) -> dict:
    """Every table of a snapshot set opens with pyarrow and holds the rows its manifest says,
    and the set holds exactly the parts its manifest lists."""
    manifest = read_manifest(set_dir)
    for name in TOP_FILES:
        table = pq.read_table(set_dir / f"{name}.parquet")
        assert table.num_rows == manifest["rows"][name], (set_dir, name)
    entries = [*manifest["collections"].values(), *manifest["forms"].values()]
    listed = set()
    for entry in entries:
        table = pq.read_table(set_dir / entry["file"])
        assert table.num_rows == entry["rows"], (set_dir, entry["file"])
        listed |= {f"{entry['file']}/{part['file']}" for part in entry["parts"]}
    on_disk = {str(p.relative_to(set_dir)) for p in set_dir.rglob("part-*.parquet")}
    assert on_disk == listed, set_dir
    return manifest


def leftovers(study_dir: Path) -> list[str]:
    return sorted(
        p.name for p in study_dir.iterdir() if p.name.startswith((TMP_PREFIX, LINK_TMP_PREFIX))
    )


def workspace_files(ws: Workspace) -> list[str]:
    """Every path in the workspace but the lock file, which the lock holder may create."""
    lock = lock_path(ws.cache)
    return sorted(str(p.relative_to(ws.root)) for p in ws.root.rglob("*") if p != lock)


def staged_files(ws: Workspace) -> list[str]:
    return sorted(p.name for p in ws.staging.iterdir()) if ws.staging.exists() else []


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """A cache and snapshot folder after one full sync of SPEC, to be copied per test."""

    root: Path
    set_name: str
    digest: str
    manifest_rows: dict[str, int]


@pytest.fixture(scope="module")
def baseline(forked_cli: ForkedCli, tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    """One full sync per module: each test copies it instead of paying for its own."""
    ws = Workspace(tmp_path_factory.mktemp("baseline"))
    with running_emulator([SPEC]) as server:
        assert_ok(run_sync(forked_cli, server, ws))
        assert_cache_equals_truth(server, ws.cache, KEY)
    latest = latest_snapshot(ws.snapshots, KEY)
    assert latest is not None
    manifest = check_complete_set(latest)
    return Baseline(ws.root, latest.name, cache_digest(ws.cache), manifest["rows"])


@pytest.fixture
def workspace(baseline: Baseline, tmp_path: Path) -> Workspace:
    # symlinks=True keeps `latest` a symlink instead of copying the set it points to.
    shutil.copytree(baseline.root, tmp_path / "ws", symlinks=True)
    return Workspace(tmp_path / "ws")


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    """A fresh emulator seeded like the baseline's: same rows, so the copied cache is in sync
    with it, and mutations of one test never leak into another."""
    with running_emulator([SPEC]) as handle:
        yield handle


def mutate(server: EmulatorServer) -> None:
    """Work for every stage: a two-page records delta (600 edits), soft and hard deletes
    (so the reconcile finds differences), new subjects, visits and queries, a closed query."""
    emu = server.emulator
    emu.mutate(KEY, "edit_records", n=600, seed=1)
    emu.mutate(KEY, "soft_delete", n=5, seed=2)
    emu.mutate(KEY, "soft_delete", entity="subjects", n=1, seed=3)
    emu.mutate(KEY, "hard_delete", n=7, seed=4)
    emu.mutate(KEY, "hard_delete", entity="queries", n=2, seed=5)
    emu.mutate(KEY, "add_subjects", n=3)
    emu.mutate(KEY, "add_visits", n=2, seed=6)
    emu.mutate(KEY, "add_queries", n=5, seed=7)
    first_query = emu.rows(KEY, "queries")[0]["annotationId"]
    emu.mutate(KEY, "add_query_comment", annotation_id=first_query, closed=True)


# --------------------------------------------------------------------------------------
# SIGKILL at every crash point
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("point", _crash_params())
def test_crash_at_point_then_recover(
    point: str,
    baseline: Baseline,
    workspace: Workspace,
    server: EmulatorServer,
    imednet_env: Env,
    forked_cli: ForkedCli,
    tmp_path: Path,
) -> None:
    """A SIGKILL can land anywhere; whatever it interrupts, the cache must hold the last
    commit, readers the last complete snapshot, and one normal sync must reach the truth."""
    ws = workspace
    mutate(server)
    marker = tmp_path / "crash-marker"

    crashed = run_sync(forked_cli, server, ws, crash_at=point, marker=marker)
    assert crashed.returncode == SIGKILLED, describe(crashed)
    assert marker.read_text() == point  # the point was reached, not some other failure

    # The cache survived the kill intact and holds exactly the last committed state.
    assert integrity_ok(ws.cache)
    if point in SYNC_POINTS_BEFORE_COMMIT:
        assert cache_digest(ws.cache) == baseline.digest, "a partial merge is visible"
    else:
        assert_cache_equals_truth(server, ws.cache, KEY)
    # A killed sync leaves its staging file behind until the cache's next run.
    assert len(staged_files(ws)) == (1 if point.startswith("sync.") else 0), staged_files(ws)

    # Readers still get the previous complete snapshot set.
    previous = latest_snapshot(ws.snapshots, KEY)
    assert previous is not None and previous.name == baseline.set_name
    assert check_complete_set(previous)["rows"] == baseline.manifest_rows

    sync_in_process(imednet_env, server, ws)
    assert integrity_ok(ws.cache)
    assert_cache_equals_truth(server, ws.cache, KEY)
    assert staged_files(ws) == []
    study_dir = ws.study_dir()
    assert (study_dir / LATEST).is_symlink()
    current = latest_snapshot(ws.snapshots, KEY)
    assert current is not None
    check_complete_set(current)
    if leftovers(study_dir) or current.name == baseline.set_name:
        raise StaleSnapshot(
            f"after recovery `latest` -> {current.name} (pre-crash set: {baseline.set_name}), "
            f"leftovers {leftovers(study_dir)}"
        )
    assert top_rows(check_complete_set(current)) == cache_counts(ws.cache)


# --------------------------------------------------------------------------------------
# Concurrency, locks and readers
# --------------------------------------------------------------------------------------


def test_four_concurrent_syncs_are_serialised(
    baseline: Baseline, workspace: Workspace, server: EmulatorServer, forked_cli: ForkedCli
) -> None:
    """Four processes started together on one cache: the FileLock makes them take turns,
    so each run starts from the watermark the previous one committed."""
    ws = workspace
    before = len(sync_runs(ws.cache))
    base_watermark = json.loads(sync_runs(ws.cache)[-1]["summary"])["collections"]["records"][
        "watermark_after"
    ]
    mutate(server)
    results = run_all(forked_cli, server, [sync_args(ws, "--lock-timeout", "120")] * 4)
    for result in results:
        assert_ok(result)

    assert integrity_ok(ws.cache)
    assert_cache_equals_truth(server, ws.cache, KEY)
    runs = sync_runs(ws.cache)[before:]
    assert len(runs) == 4
    # Serialised runs chain: each one read the watermark its predecessor committed. Had two
    # overlapped, both would have started from the same (older) watermark.
    summaries = [json.loads(r["summary"])["collections"]["records"] for r in runs]
    assert summaries[0]["watermark_before"] == base_watermark
    assert summaries[0]["watermark_after"] > base_watermark  # so the chain can tell overlaps
    for prev, nxt in itertools.pairwise(summaries):
        assert nxt["watermark_before"] == prev["watermark_after"]
    for prev, nxt in itertools.pairwise(runs):
        assert str(prev["finished"]) <= str(nxt["started"])
    assert [r["changed"] for r in runs] == [1, 0, 0, 0]
    latest = latest_snapshot(ws.snapshots, KEY)
    assert latest is not None and latest.name != baseline.set_name
    assert top_rows(check_complete_set(latest)) == cache_counts(ws.cache)
    assert leftovers(ws.study_dir()) == [] and staged_files(ws) == []


def test_reader_not_blocked_by_uncommitted_writer(baseline: Baseline, workspace: Workspace) -> None:
    """WAL readers see the last commit at once, never a writer's uncommitted rows."""
    ws = workspace
    committed = get_cached_records(ws.cache, KEY, include_deleted=True, as_dataframe=False)
    live = len(get_cached_records(ws.cache, KEY))
    writer = sqlite3.connect(ws.cache, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        changed = writer.execute(
            "UPDATE records SET deleted=1, raw=json_set(raw, '$.recordStatus', 'UNCOMMITTED') "
            "WHERE study_key=?",
            (KEY,),
        ).rowcount
        assert changed == len(committed)
        assert writer.in_transaction
        for _ in range(2):
            started = time.perf_counter()
            rows = get_cached_records(ws.cache, KEY, include_deleted=True, as_dataframe=False)
            frame = get_cached_records(ws.cache, KEY)
            elapsed = time.perf_counter() - started
            assert elapsed < 2.0, f"reader took {elapsed:.2f}s behind an open write transaction"
            assert rows == committed
            assert len(frame) == live
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert cache_digest(ws.cache) == baseline.digest


def test_held_lock_skips_or_fails_and_changes_nothing(
    workspace: Workspace, server: EmulatorServer, forked_cli: ForkedCli
) -> None:
    """A scheduled run meeting a stuck or long sync must say so and touch nothing: exit 75
    (try later) by default, exit 1 with --fail-if-locked. Both run at once, to save time."""
    ws = workspace
    mutate(server)  # there is work to do, so "changed nothing" means something
    server.emulator.reset_requests()
    digest = cache_digest(ws.cache)
    files = workspace_files(ws)
    with FileLock(lock_path(ws.cache)):
        skipped, failed = run_all(
            forked_cli,
            server,
            [
                sync_args(ws, "--lock-timeout", "0.5"),
                sync_args(ws, "--lock-timeout", "0.5", "--fail-if-locked"),
            ],
        )
    assert skipped.returncode == EXIT_SKIPPED, describe(skipped)
    assert "skipped: another sync holds" in skipped.stdout
    assert str(lock_path(ws.cache)) in skipped.stdout
    assert "changed nothing" in skipped.stdout
    assert failed.returncode == 1, describe(failed)
    assert "error: another sync holds" in failed.stderr
    assert "lock_timeout" in failed.stderr
    assert server.emulator.requests() == []
    assert cache_digest(ws.cache) == digest
    assert workspace_files(ws) == files


def test_cli_sync_of_a_study_key_with_path_characters_writes_only_inside_its_folders(
    tmp_path: Path, forked_cli: ForkedCli
) -> None:
    """A study key is data from a config or a user: it must never become a path."""
    evil = "../../x/K"
    inner = Workspace(tmp_path / "inner")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    with running_emulator([StudySpec(study_key=evil, study_id=4, seed=4, subjects=5)]) as srv:
        proc = run_sync(forked_cli, srv, inner, key=evil, cwd=cwd)
        assert_ok(proc)
        assert_cache_equals_truth(srv, inner.cache, evil)
    outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(inner.root) and p != cwd]
    assert outside == []
    assert list(cwd.iterdir()) == []
    assert not (tmp_path.parent / "x").exists()
    allowed = {"cache.sqlite", "cache.sqlite.lock", "cache.sqlite-wal", "cache.sqlite-shm"}
    allowed |= {"snapshots", ".staging"}
    assert {p.name for p in inner.root.iterdir()} <= allowed
    study_dirs = list(inner.snapshots.iterdir())
    assert study_dirs == [inner.study_dir(evil)]
    latest = latest_snapshot(inner.snapshots, evil)
    assert latest is not None and latest.parent == study_dirs[0]
    check_complete_set(latest)
