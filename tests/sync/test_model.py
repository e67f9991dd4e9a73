"""A model-based test of the incremental sync: Hypothesis drives a state machine through what
can happen to a study and to the caches that follow it, and checks after every step what a
user of the cache relies on.

A step is one round: what happens behind the API's back (the emulator's mutations: edits,
some stamped inside the newest watermark's own second; soft and hard deletes; new subjects,
visits and queries; query comments), faults on the next requests (429 with and without
Retry-After, 5xx, dropped connections, truncated bodies, latency), then one run of the sync:
in-process (sometimes full_refresh), a `python -m imednet_flows.cli sync` process SIGKILLed at
a named crash point, or a sync of a second cache file in the same folder (`c2.sqlite`, same
study) overlapping a sync of the first (`c1.sqlite`). Every step ends in a run, so every step
checks the sync; the printed sequence of a failure reads as the rounds that led to it.

What must hold:

* after a run that succeeds: the cache and its `latest` snapshot equal the emulator's truth;
* a run that fails (faults outlasting the retries) or dies before its commit leaves the cache
  exactly at its last commit and `latest` on the same complete set; a run with fewer faults
  pending than it has attempts per request does not fail at all;
* after every step: integrity_check is ok, `latest` is a complete set, the staging folder
  holds nothing but the file of a run killed before it closed it, and no watermark passes
  data that was not stored: every row the API has with dateModified <= the stored
  watermark, unchanged since the run that stored that watermark began, is in the cache
  exactly as the API has it.

Syncs run with `overlap_seconds=0`: the product's 30 s default would re-read everything a
short test changes on every run, and so hide a watermark that moved too far. Hard deletes
stay below what the sync refuses without full_refresh (an entity is never emptied, and no
cache is ever more than 50 rows ahead of the API), so a refusal here is a failure.

Two modes. `make test` runs a bounded, derandomized run (BOUNDED: 4 examples of at most 7
rounds after the first sync, at most one kill and one overlap each, since each starts a
Python process of a few seconds). `make soak` (IMEDNET_FLOWS_SOAK=1) runs more and longer
examples from a random seed it prints; `make soak SEED=<n>` replays one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from flows.incremental_sync import run_incremental_sync
from imednet_flows.cache.collections import COLLECTIONS, collection
from imednet_flows.cache.crash import ENV as CRASH_ENV
from imednet_flows.cache.crash import MARKER_ENV
from imednet_flows.cache.snapshots import latest_snapshot
from imednet_flows.emulator import EmulatorServer, StudySpec, running_emulator
from imednet_flows.timestamps import canonical_ts, to_datetime
from tests.forked_cli import ForkedCli
from tests.sync.test_reliability import (
    POINTS_AFTER_COMMIT,
    SIGKILLED,
    SYNC_POINTS_BEFORE_COMMIT,
    Env,
    cache_digest,
    check_complete_set,
    describe,
    sync_env,
)
from tests.sync_helpers import assert_cache_equals_truth, cache_rows, integrity_ok

pytestmark = pytest.mark.usefixtures("prefect_api")
Truth = dict[str, dict[int, dict[str, Any]]]

#: Small enough that a sync costs about a second, with every entity present: 16 subjects,
#: 32 visits, 64 records of 4 forms, about 20 queries.
SPEC = StudySpec(
    study_key="MODEL-1",
    study_id=31,
    seed=31,
    subjects=16,
    intervals=2,
    forms_per_interval=2,
    query_rate=0.3,
)
KEY = SPEC.study_key

#: Attempts per request (IMEDNET_FLOWS_MAX_ATTEMPTS): low, so a few faults can outlast them.
MAX_ATTEMPTS = 4
#: The sync refuses to delete more rows than this without full_refresh (see SuspiciousResponse).
DELETE_HEADROOM = 50
#: Latency on every request while two syncs overlap, so each one's staging phase lasts long
#: enough for the other to start inside it.
OVERLAP_LATENCY = 0.1
#: Crash points a run passes only in some situations: two pages of a delta, a count that
#: differs, a snapshot to write. Every other point is on every run's path.
CONDITIONAL_POINTS = frozenset(
    ["sync.mid-page", "sync.mid-reconcile", *(p for p in POINTS_AFTER_COMMIT if "snapshot." in p)]
)
#: What the product says when faults outlast the retries (imednet_flows.edc.errors).
TRANSIENT_FAILURE = re.compile(
    r"kept rate-limiting|kept failing|dropped the connection|incomplete \(truncated\)"
)
PROCESS_TIMEOUT = 180.0


@dataclass(frozen=True)
class Mode:
    """How much of the state space a run explores."""

    examples: int
    steps: int
    #: Kills, and overlapping syncs, per example (each starts a Python process: seconds).
    kills: int
    overlaps: int


BOUNDED = Mode(examples=4, steps=7, kills=1, overlaps=1)


#: The soak run's size, each overridable from the environment (a replay needs the same).
SOAK_SIZES = {
    "IMEDNET_FLOWS_SOAK_EXAMPLES": 20,
    "IMEDNET_FLOWS_SOAK_STEPS": 30,
    "IMEDNET_FLOWS_SOAK_KILLS": 3,
    "IMEDNET_FLOWS_SOAK_OVERLAPS": 2,
}


def soak_mode() -> Mode:
    examples, steps, kills, overlaps = (
        int(os.environ.get(name) or default) for name, default in SOAK_SIZES.items()
    )
    return Mode(examples, steps, kills, overlaps)


# --------------------------------------------------------------------------------------
# Steps, as values Hypothesis prints in a failing sequence
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One mutation behind the API's back. `n` is clamped to what the study allows."""

    op: str
    entity: str = "records"
    n: int = 1
    seed: int = 0
    flag: bool = False  # edit: stamp at the newest watermark; query ops: closed


def _changes() -> st.SearchStrategy[Change]:
    n = st.integers(1, 4)
    seeds = st.integers(0, 2**16)
    return st.one_of(
        st.builds(Change, op=st.just("edit_records"), n=n, seed=seeds, flag=st.booleans()),
        st.builds(
            Change,
            op=st.just("soft_delete"),
            entity=st.sampled_from(["records", "subjects", "visits"]),
            n=st.integers(1, 2),
            seed=seeds,
        ),
        st.builds(
            Change,
            op=st.just("hard_delete"),
            entity=st.sampled_from(["records", "subjects", "visits", "queries"]),
            n=st.integers(1, 2),
            seed=seeds,
        ),
        st.builds(Change, op=st.just("add_subjects"), n=st.integers(1, 2)),
        st.builds(Change, op=st.just("add_visits"), n=st.integers(1, 2), seed=seeds),
        st.builds(
            Change, op=st.just("add_queries"), n=st.integers(1, 2), seed=seeds, flag=st.booleans()
        ),
        st.builds(Change, op=st.just("add_query_comment"), seed=seeds, flag=st.booleans()),
        # the collections beyond the clinical data: codings, users, set-up lists
        st.builds(Change, op=st.just("recode"), n=st.integers(1, 2), seed=seeds),
        st.builds(Change, op=st.just("hard_delete"), entity=st.just("codings"), seed=seeds),
        st.builds(Change, op=st.just("add_users"), n=st.integers(1, 2)),
        st.builds(Change, op=st.just("deactivate_users"), seed=seeds),
        st.builds(Change, op=st.just("add_variables"), seed=seeds),
        st.builds(Change, op=st.just("edit_forms"), seed=seeds),
    )


@dataclass(frozen=True)
class Fault:
    """A fault for the next `count` matching requests (see emulator.faults)."""

    kind: str
    route: str = "*"
    count: int = 1
    status: int = 503
    retry_after: float | None = None
    seconds: float = 0.0

    def rule(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"route": self.route, "method": "GET", "count": self.count}
        if self.kind == "status":
            kwargs.update(status=self.status, retry_after=self.retry_after)
        if self.kind == "latency":
            kwargs.update(seconds=self.seconds)
        return kwargs


def _faults() -> st.SearchStrategy[Fault]:
    routes = st.sampled_from(
        ["*", "forms", "variables", "subjects", "visits", "records", "queries"]
    )
    count = st.integers(1, 4)
    return st.one_of(
        st.builds(
            Fault,
            kind=st.just("status"),
            route=routes,
            count=count,
            status=st.just(429),
            retry_after=st.sampled_from([None, 0.0]),
        ),
        # a real wait: fewer of them, so a run stays within seconds
        st.builds(
            Fault,
            kind=st.just("status"),
            route=routes,
            count=st.integers(1, 2),
            status=st.just(429),
            retry_after=st.just(1.0),
        ),
        st.builds(
            Fault,
            kind=st.just("status"),
            route=routes,
            count=count,
            status=st.sampled_from([500, 502, 503]),
        ),
        st.builds(Fault, kind=st.sampled_from(["drop", "truncate"]), route=routes, count=count),
        st.builds(
            Fault,
            kind=st.just("latency"),
            route=routes,
            count=count,
            seconds=st.sampled_from([0.05, 0.2]),
        ),
    )


CHANGES = st.lists(_changes(), max_size=4)
FAULTS = st.lists(_faults(), max_size=2)


# --------------------------------------------------------------------------------------
# What a cache and its snapshots are compared with
# --------------------------------------------------------------------------------------


@dataclass
class Cache:
    """One cache file with its snapshot folder, and what the model knows about it."""

    path: Path
    snapshots: Path
    #: The API's rows when the sync that committed last began (None: never committed).
    base: Truth | None = None

    def watermark(self, entity: str) -> str | None:
        if not self.path.exists():
            return None
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute(
                "SELECT watermark FROM sync_state WHERE study_key=? AND entity=?", (KEY, entity)
            ).fetchone()
        finally:
            conn.close()
        return row[0] if row else None


@dataclass(frozen=True)
class Committed:
    """What must not change when a sync fails or dies before its commit."""

    cache: str | None
    latest: str | None
    latest_files: str | None


def set_digest(set_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in set_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(set_dir)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def committed_state(cache: Cache) -> Committed:
    latest = latest_snapshot(cache.snapshots, KEY)
    return Committed(
        cache_digest(cache.path) if cache.path.exists() else None,
        latest.name if latest else None,
        set_digest(latest) if latest else None,
    )


def read_truth(server: EmulatorServer) -> Truth:
    return {
        spec.name: {r[spec.id_field]: r for r in server.emulator.rows(KEY, spec.route)}
        for spec in COLLECTIONS
    }


def assert_snapshot_equals_truth(snapshots: Path, truth: Truth) -> None:
    """`latest` holds exactly the API's rows: ids and content (`raw`) of every collection's
    table, typed columns that agree with it, and the record ids of every form's table."""
    latest = latest_snapshot(snapshots, KEY)
    assert latest is not None, f"no `latest` snapshot under {snapshots}"
    manifest = check_complete_set(latest)
    for spec in COLLECTIONS:
        table = pq.read_table(latest / f"{spec.name}.parquet").to_pylist()
        rows = {r[spec.id_field]: json.loads(r["raw"]) for r in table}
        expected = truth[spec.name]
        assert rows.keys() == expected.keys(), (
            f"{latest.name}/{spec.name}.parquet: missing "
            f"{sorted(expected.keys() - rows.keys())[:10]}, extra "
            f"{sorted(rows.keys() - expected.keys())[:10]}"
        )
        stale = [i for i, row in rows.items() if row != expected[i]]
        assert not stale, f"{latest.name}/{spec.name}.parquet: stale rows {stale[:10]}"
    records = truth["records"]
    typed = {r["recordId"]: r for r in pq.read_table(latest / "records.parquet").to_pylist()}
    stale = [
        i
        for i, r in typed.items()
        if r["deleted"] != bool(records[i]["deleted"])
        or r["dateModified"] != to_datetime(records[i]["dateModified"])
        or (r["formKey"], r["subjectKey"], r["recordStatus"])
        != (records[i]["formKey"], records[i]["subjectKey"], records[i]["recordStatus"])
    ]
    assert not stale, f"{latest.name}/records.parquet: typed columns disagree {stale[:10]}"
    by_form: dict[str, set[int]] = {}
    for record_id, record in records.items():
        by_form.setdefault(record["formKey"], set()).add(record_id)
    assert by_form.keys() <= manifest["forms"].keys()
    for form_key, entry in manifest["forms"].items():
        form = pq.read_table(latest / entry["file"], columns=["recordId"])
        ids = set(form["recordId"].to_pylist())
        assert ids == by_form.get(form_key, set()), f"{latest.name}/{entry['file']}: wrong records"


def assert_watermarks_hold(cache: Cache, truth: Truth) -> None:
    """No watermark passes data that was not stored. A row changed after the committing
    sync began may share the watermark's second: the next run re-reads that second."""
    if cache.base is None:
        return
    for spec in COLLECTIONS:
        watermark = cache.watermark(spec.name)
        if watermark is None or spec.since_field is None:
            continue
        cached = cache_rows(cache.path, KEY, spec.name)
        base = cache.base[spec.name]
        for row_id, row in truth[spec.name].items():
            stamp = canonical_ts(row.get(spec.since_field))
            if stamp is None or stamp > watermark or base.get(row_id) != row:
                continue
            assert cached.get(row_id) == row, (
                f"{cache.path.name}: {spec.name} {row_id} ({spec.since_field} {stamp}) is at or "
                f"before the watermark {watermark} but the cache has "
                f"{'no such row' if row_id not in cached else 'an older version'}"
            )


# --------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------


@dataclass
class Context:
    """What the pytest test hands every example: a folder, the env switch, the budget."""

    root: Path
    point_at: Env
    mode: Mode
    counter: Iterator[int]
    cli: ForkedCli


def sync_args(cache: Cache) -> list[str]:
    return [
        "sync",
        "--study",
        KEY,
        "--cache",
        str(cache.path),
        "--snapshots",
        str(cache.snapshots),
        "--overlap",
        "0",
    ]


class SyncModel(RuleBasedStateMachine):
    """One emulator and two caches of its study in one folder (only c1 is killed)."""

    def __init__(self, ctx: Context) -> None:
        super().__init__()
        self.ctx = ctx
        self.stack = ExitStack()
        self.server = self.stack.enter_context(running_emulator([SPEC]))
        self.emu = self.server.emulator
        ctx.point_at(self.server)
        self.folder = ctx.root / f"example-{next(ctx.counter)}"
        self.folder.mkdir(parents=True)
        self.c1 = Cache(self.folder / "c1.sqlite", self.folder / "snapshots-1")
        self.c2 = Cache(self.folder / "c2.sqlite", self.folder / "snapshots-2")
        self.kills_left, self.overlaps_left = ctx.mode.kills, ctx.mode.overlaps
        #: A sync of c1 died before closing its staging file; c1's next run removes it.
        self.leftover = False
        self.kills = itertools.count()

    def teardown(self) -> None:
        self.stack.close()

    # -- helpers ------------------------------------------------------------------------
    def caches(self) -> list[Cache]:
        return [c for c in (self.c1, self.c2) if c.path.exists()]

    def pending_faults(self) -> float:
        """Requests the pending faults can still fail; latency never fails one."""
        return sum(
            float("inf") if r["count"] is None else r["count"]
            for r in self.emu.faults.rules()
            if r["kind"] != "latency"
        )

    def outset(self, cache: Cache) -> tuple[Committed, Truth, float]:
        """What a sync step compares its outcome with."""
        return committed_state(cache), read_truth(self.server), self.pending_faults()

    def sync_in_process(self, cache: Cache, full_refresh: bool = False) -> str | None:
        """Run the flow; None when it succeeded, else its error message."""
        try:
            result = run_incremental_sync(
                [KEY],
                cache_path=str(cache.path),
                snapshot_dir=str(cache.snapshots),
                full_refresh=full_refresh,
                overlap_seconds=0,
                lock_timeout=60,
            )
        except RuntimeError as exc:
            return str(exc)
        assert not result.skipped, result.reason
        return None

    def staged(self) -> list[str]:
        staging = self.folder / ".staging"
        return sorted(p.name for p in staging.iterdir()) if staging.exists() else []

    def succeeded(self, cache: Cache, truth: Truth) -> None:
        assert integrity_ok(cache.path)
        assert_cache_equals_truth(self.server, cache.path, KEY)
        assert_snapshot_equals_truth(cache.snapshots, truth)
        cache.base = truth

    def failed(self, cache: Cache, before: Committed, message: str, pending: float) -> None:
        assert pending >= MAX_ATTEMPTS, (
            f"a sync of {cache.path.name} failed with {pending:g} fault(s) pending, fewer than "
            f"the {MAX_ATTEMPTS} attempts each request gets: {message[-2000:]}"
        )
        assert TRANSIENT_FAILURE.search(message), f"unclear failure: {message[-2000:]}"
        assert committed_state(cache) == before, (
            f"a failed sync changed {cache.path.name} or its latest snapshot"
        )

    def clamp_hard_delete(self, entity: str, n: int) -> int:
        """Never empty an entity and never let a cache get more than DELETE_HEADROOM rows
        ahead of the API: beyond that the sync refuses (by design) without full_refresh."""
        spec = collection(entity)
        live = {r[spec.id_field] for r in self.emu.rows(KEY, spec.route)}
        ahead = max(
            (len(cache_rows(c.path, KEY, entity).keys() - live) for c in self.caches()),
            default=0,
        )
        return max(0, min(n, len(live) - 1, DELETE_HEADROOM - ahead))

    @contextmanager
    def slowed(self) -> Iterator[None]:
        """Latency on every request for the block only; the model's own faults stay."""
        self.emu.add_fault("latency", seconds=OVERLAP_LATENCY, count=None)
        try:
            yield
        finally:
            kept = [r for r in self.emu.faults.rules() if r["count"] is not None]
            self.emu.clear_faults()
            for r in kept:
                self.emu.add_fault(r.pop("kind"), **r)

    def apply(self, change: Change) -> None:
        """One mutation, with `n` clamped to what the study allows."""
        emu, n = self.emu, change.n
        if change.op == "edit_records":
            live = [r for r in emu.rows(KEY, "records") if not r.get("deleted")]
            kwargs: dict[str, Any] = {"n": min(n, len(live)), "seed": change.seed}
            marks = [m for m in (c.watermark("records") for c in self.caches()) if m]
            if change.flag and marks:
                kwargs["at"] = max(marks)  # inside the newest watermark's own second
            emu.mutate(KEY, "edit_records", **kwargs)
        elif change.op == "soft_delete":
            live = [r for r in emu.rows(KEY, change.entity) if not r.get("deleted")]
            if min(n, len(live)):
                emu.mutate(
                    KEY, "soft_delete", entity=change.entity, n=min(n, len(live)), seed=change.seed
                )
        elif change.op == "hard_delete":
            n = self.clamp_hard_delete(change.entity, n)
            if n:
                emu.mutate(KEY, "hard_delete", entity=change.entity, n=n, seed=change.seed)
        elif change.op == "add_subjects":
            emu.mutate(KEY, "add_subjects", n=n)
        elif change.op == "add_visits":
            live = [r for r in emu.rows(KEY, "subjects") if not r.get("deleted")]
            if min(n, len(live)):
                emu.mutate(KEY, "add_visits", n=min(n, len(live)), seed=change.seed)
        elif change.op == "add_queries":
            live = [r for r in emu.rows(KEY, "records") if not r.get("deleted")]
            if min(n, len(live)):
                emu.mutate(
                    KEY, "add_queries", n=min(n, len(live)), seed=change.seed, closed=change.flag
                )
        elif change.op == "add_query_comment":
            queries = emu.rows(KEY, "queries")
            if queries:
                target = random.Random(change.seed).choice(queries)["annotationId"]
                emu.mutate(KEY, "add_query_comment", annotation_id=target, closed=change.flag)
        elif change.op == "recode":
            codings = emu.rows(KEY, "codings")
            if codings:
                emu.mutate(KEY, "recode", n=min(n, len(codings)), seed=change.seed)
        elif change.op == "add_users":
            emu.mutate(KEY, "add_users", n=n)
        elif change.op == "deactivate_users":
            if sum(1 for u in emu.rows(KEY, "users") if u.get("userActiveInStudy")) > 1:
                emu.mutate(KEY, "deactivate_users", seed=change.seed)
        elif change.op == "add_variables":
            form = random.Random(change.seed).choice(emu.rows(KEY, "forms"))["formKey"]
            emu.mutate(KEY, "add_variables", form_key=form)
        elif change.op == "edit_forms":  # a new revision; a rename would leave copies stale
            emu.mutate(KEY, "edit_forms", seed=change.seed)
        else:  # pragma: no cover - the strategy names every op above
            raise AssertionError(change.op)

    def before_run(self, changes: list[Change], faults: list[Fault]) -> None:
        """What happens behind the API's back between two runs."""
        for change in changes:
            self.apply(change)
        for fault in faults:
            self.emu.add_fault(fault.kind, **fault.rule())

    # -- rules ------------------------------------------------------------------------------
    @initialize()
    def first_sync(self) -> None:
        truth = read_truth(self.server)
        error = self.sync_in_process(self.c1)
        assert error is None, error
        self.succeeded(self.c1, truth)

    @rule(changes=CHANGES, faults=FAULTS, full_refresh=st.sampled_from([False, False, False, True]))
    def sync(self, changes: list[Change], faults: list[Fault], full_refresh: bool) -> None:
        self.before_run(changes, faults)
        before, truth, pending = self.outset(self.c1)
        error = self.sync_in_process(self.c1, full_refresh)
        self.leftover = False
        if error is None:
            self.succeeded(self.c1, truth)
        else:
            self.failed(self.c1, before, error, pending)

    @precondition(lambda self: self.kills_left > 0)
    @rule(
        changes=CHANGES,
        faults=FAULTS,
        point=st.sampled_from([*SYNC_POINTS_BEFORE_COMMIT, *POINTS_AFTER_COMMIT]),
    )
    def kill(self, changes: list[Change], faults: list[Fault], point: str) -> None:
        """SIGKILL a sync of c1 at `point` (a run that never reaches it just finishes)."""
        self.before_run(changes, faults)
        self.kills_left -= 1
        before, truth, pending = self.outset(self.c1)
        marker = self.folder / f"crash-{next(self.kills)}"
        env = sync_env(self.server)
        env.update({CRASH_ENV: point, MARKER_ENV: str(marker)})
        proc = self.ctx.cli.run(sync_args(self.c1), env, timeout=PROCESS_TIMEOUT)
        self.leftover = proc.returncode == SIGKILLED and point.startswith("sync.")
        if proc.returncode == SIGKILLED:
            assert marker.read_text() == point, describe(proc)
            assert integrity_ok(self.c1.path)
            after = committed_state(self.c1)
            assert (after.latest, after.latest_files) == (before.latest, before.latest_files), (
                "a killed sync changed the latest snapshot"
            )
            if point in SYNC_POINTS_BEFORE_COMMIT:
                assert after.cache == before.cache, f"a partial merge is visible after {point}"
            else:
                assert_cache_equals_truth(self.server, self.c1.path, KEY)
                self.c1.base = truth
        elif proc.returncode == 0:
            assert point in CONDITIONAL_POINTS, f"the run finished without passing {point}"
            self.succeeded(self.c1, truth)
        else:
            assert proc.returncode == 1, describe(proc)
            self.failed(self.c1, before, proc.stderr, pending)

    @precondition(lambda self: self.overlaps_left > 0)
    @rule(changes=CHANGES, faults=FAULTS)
    def overlap(self, changes: list[Change], faults: list[Fault]) -> None:
        """Sync c2 (a process) and c1 (in-process) of the same study at once: two caches in
        one folder must not share anything a run writes."""
        self.before_run(changes, faults)
        self.overlaps_left -= 1
        before = {c.path.name: committed_state(c) for c in (self.c1, self.c2)}
        truth, pending = read_truth(self.server), self.pending_faults()
        seen = len(self.emu.requests())
        with self.slowed():
            run = self.ctx.cli.start(sync_args(self.c2), sync_env(self.server))
            try:
                deadline = time.monotonic() + PROCESS_TIMEOUT
                # c2 stages from its first request on: start c1 inside that window.
                while len(self.emu.requests()) == seen and run.process.exitcode is None:
                    assert time.monotonic() < deadline, "the c2 sync never reached the API"
                    time.sleep(0.02)
                error = self.sync_in_process(self.c1)
                self.leftover = False
                done = run.wait(PROCESS_TIMEOUT)
            finally:
                run.stop()
        outcomes = [(self.c1, error), (self.c2, None if done.returncode == 0 else describe(done))]
        problems = []
        for cache, failure in outcomes:
            try:
                if failure is None:
                    self.succeeded(cache, truth)
                else:
                    self.failed(cache, before[cache.path.name], failure, pending)
            except AssertionError as exc:  # report both caches: which one lost is timing
                problems.append(f"{cache.path.name}: {exc}")
        assert not problems, "\n".join(problems)

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def caches_hold(self) -> None:
        staged = self.staged()
        assert len(staged) == int(self.leftover), f"staging files: {staged}"
        truth = read_truth(self.server)
        for cache in self.caches():
            assert integrity_ok(cache.path)
            assert_watermarks_hold(cache, truth)
            latest = latest_snapshot(cache.snapshots, KEY)
            if latest is not None:
                check_complete_set(latest)


# --------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------


def run_model(ctx: Context, config: settings, replay_seed: int | None = None) -> None:
    def factory() -> SyncModel:
        return SyncModel(ctx)

    if replay_seed is not None:
        factory = seed(replay_seed)(factory)
    run_state_machine_as_test(factory, settings=config)


@pytest.fixture
def model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Few attempts per request, so faults can outlast them; subprocesses inherit it."""
    monkeypatch.setenv("IMEDNET_FLOWS_MAX_ATTEMPTS", str(MAX_ATTEMPTS))
    monkeypatch.delenv(CRASH_ENV, raising=False)


@pytest.mark.usefixtures("model_env")
@pytest.mark.skipif(os.environ.get("IMEDNET_FLOWS_SOAK") == "1", reason="the soak run replaces it")
def test_sync_model_bounded(imednet_env: Env, tmp_path: Path, forked_cli: ForkedCli) -> None:
    """Derandomized, so CI sees the same sequences on every run."""
    ctx = Context(tmp_path, imednet_env, BOUNDED, itertools.count(), forked_cli)
    run_model(
        ctx,
        settings(
            max_examples=BOUNDED.examples,
            stateful_step_count=BOUNDED.steps,
            derandomize=True,
            database=None,
            deadline=None,
            # no shrinking: a failure prints its (deterministic) sequence at once
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        ),
    )


@pytest.mark.slow
@pytest.mark.usefixtures("model_env")
@pytest.mark.skipif(os.environ.get("IMEDNET_FLOWS_SOAK") != "1", reason="make soak runs it")
def test_sync_model_soak(imednet_env: Env, tmp_path: Path, forked_cli: ForkedCli) -> None:
    """Long run from a printed seed; `make soak SEED=<n>` replays it."""
    mode = soak_mode()
    chosen = os.environ.get("IMEDNET_FLOWS_SOAK_SEED") or str(random.SystemRandom().getrandbits(32))
    replay = " ".join(
        [
            *(f"{k}={v}" for k, v in sorted(os.environ.items()) if k in SOAK_SIZES),
            f"make soak SEED={chosen}",
        ]
    )
    print(f"\nsync model soak: {mode}; replay: {replay}", flush=True)
    ctx = Context(tmp_path, imednet_env, mode, itertools.count(), forked_cli)
    try:
        run_model(
            ctx,
            settings(
                max_examples=mode.examples,
                stateful_step_count=mode.steps,
                database=None,
                deadline=None,
                print_blob=True,
                suppress_health_check=list(HealthCheck),
            ),
            replay_seed=int(chosen),
        )
    except BaseException as exc:
        exc.add_note(f"replay: {replay}")
        raise
