"""Cost of `incremental_sync` at 50,000 and 200,000 records: full, delta, deletes, idle, memory.

Why this exists: the sync is the scheduled job every other reader depends on, so its cost has
to stay close to plain HTTP paging on a first run and close to nothing on later runs. This
script answers, in one run and as ratios (baselines are measured in the same run, because a
shared machine is noisy):

1. Full sync (first run into an empty cache) vs raw httpx paging at size 500 with
   `response.json()` over the same entities, same filters, same order (the floor). Ratio:
   (flow wall - flow start-up - snapshot) / raw, target <= 1.5. Flow start-up (an empty
   flow run in the same process) and the Parquet snapshot (`snapshots[...]['seconds']` of
   the flow result) are reported on their own rows.
2. Delta with 0.1 % of records edited and no deletes: GETs per entity from the emulator's
   request log vs `ceil(changes/500) + 1` for the delta listing plus <= 1 for the delete
   check; time (flow wall - snapshot) <= 5 % of the full sync's (same measure).
3. The same with 10 hard deletes too: GETs spent finding them (id-range counts and lists)
   vs 10 * ceil(log2 N).
4. Idle cycle (nothing changed): total GETs, target <= 12.
5. Peak RSS of the sync process at both sizes: < 400 MiB each, large / small <= 1.2.

Every sync run is its own subprocess (this script with `--child`, which calls the flow
exactly as `imednet-flows sync` does, after a few empty flow runs that measure start-up) so
each size's peak RSS is its own. The peak is read twice: the child's own VmHWM from
/proc/self/status at exit, and `ru_maxrss` from `os.wait4`. The children are spawned by a
tiny launcher process started before this script imports anything heavy, because Linux
carries the *spawning* process's high-water mark into the child's `ru_maxrss` across
vfork + exec: spawned from this (large) process directly, `ru_maxrss` would report our peak,
not the child's. All children talk to one Prefect API for the whole benchmark
(`prefect_test_harness` here, its URL passed as PREFECT_API_URL; PREFECT_HOME is a temporary
directory). Each size gets its own emulator process (`imednet-flows emulator --records N`).

When a time target is missed, or with `--profile`, the sync's work is replayed in this
process without Prefect (`StudySync(...).run_fetch()`, `merge`, `write_snapshot`, for a full
and a delta run) under cProfile, and the report lists where the time goes.

Run: `.venv/bin/python benchmarks/sync_throughput.py [--records-small 50000]
[--records-large 200000] [--profile] [--json]`. It is a benchmark, not a test: it prints
numbers and target verdicts and exits 0 unless something broke.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import math
import os
import platform
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from _emulator_process import (
    AUTH_HEADERS,
    EmulatorProcess,
    environment,
    log,
    positive,
    read_memory_mib,
    run_main,
    table_row,
    verdict,
)

from imednet_flows.cache.schema import ENTITIES, INCREMENTAL, STRUCTURE
from imednet_flows.emulator import DEMO_API_KEY, DEMO_SECURITY_KEY, EmulatorClient, StudySpec

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PAGE_SIZE = 500
FULL_RATIO_TARGET = 1.5
DELTA_SHARE_TARGET = 0.05
IDLE_GETS_TARGET = 12
RSS_TARGET_MIB = 400.0
RSS_SCALE_TARGET = 1.2
PROFILE_TOP = 14
#: The order the sync fetches in: structure first, then the incremental entities.
SYNC_ORDER = (*STRUCTURE, *INCREMENTAL)
_ID_FIELDS = "|".join(sorted({spec.id_field for spec in ENTITIES.values()}))
_ID_RANGE = re.compile(rf"\b({_ID_FIELDS})\s*(>=|<=)")
_ID_AFTER = re.compile(rf"\b({_ID_FIELDS})\s*>(?!=)")

#: Spawns one child at a time and reports its exit status and `ru_maxrss` (KiB on Linux).
#: Started while this process is still small, so the high-water mark the kernel carries
#: across exec into each child's `ru_maxrss` is the launcher's (~35 MiB), not ours.
LAUNCHER_CODE = r"""
import json, os, subprocess, sys
for line in sys.stdin:
    job = json.loads(line)
    with open(job["log"], "ab") as out:
        child = subprocess.Popen(
            job["argv"], env=job["env"], cwd=job["cwd"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    print(json.dumps({"pid": child.pid}), flush=True)
    _, status, usage = os.wait4(child.pid, 0)
    print(json.dumps({
        "returncode": os.waitstatus_to_exitcode(status), "ru_maxrss_kib": usage.ru_maxrss,
    }), flush=True)
"""


# ------------------------------------------------------------------------------- helpers


def _ensure_project_importable() -> None:
    """`flows` and `tasks` are top-level packages of the project; make them importable even
    when the project is not installed in the venv (the script runs from benchmarks/)."""
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(1, str(PROJECT_ROOT))


def records_path(study: str, route: str) -> str:
    return f"/api/v1/edc/studies/{quote(study, safe='')}/{quote(route, safe='')}"


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _log2_ceil(n: int) -> int:
    return max(1, math.ceil(math.log2(max(2, n))))


class Launcher:
    """The small process that spawns each sync child and reaps it with `os.wait4`."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.child_pid: int | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the launcher process died (exit {self.proc.poll()})")
        return json.loads(line)

    def run(self, argv: list[str], env: dict[str, str], log_path: Path) -> dict[str, Any]:
        """Run one child to completion; returns its exit code, `ru_maxrss` and wall time."""
        assert self.proc is not None and self.proc.stdin is not None
        job = {"argv": argv, "env": env, "cwd": str(PROJECT_ROOT), "log": str(log_path)}
        started = time.perf_counter()
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        self.child_pid = int(self._read()["pid"])
        done = self._read()
        self.child_pid = None
        return {**done, "process_wall_s": time.perf_counter() - started}

    def close(self) -> None:
        """Stop a child still running (error or Ctrl-C), then the launcher itself."""
        if self.child_pid is not None:
            with suppress(ProcessLookupError):
                os.kill(self.child_pid, signal.SIGTERM)
        if self.proc is None:
            return
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            if self.child_pid is not None:
                with suppress(ProcessLookupError):
                    os.kill(self.child_pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------- child side


def child_main(config_path: str) -> int:
    """One sync run in its own process: empty flow runs (start-up), then the flow itself."""
    config = json.loads(Path(config_path).read_text())
    _ensure_project_importable()
    started = time.perf_counter()
    from prefect import flow
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.incremental_sync import incremental_sync

    import_s = time.perf_counter() - started

    @flow(name="bench-empty-flow", log_prints=False)
    def empty_flow() -> None:
        """Returns at once: its run time is Prefect's fixed cost per flow run."""
        return None

    def timed_empty_runs(n: int) -> list[float]:
        seconds = []
        for _ in range(n):
            t0 = time.perf_counter()
            empty_flow()
            seconds.append(time.perf_counter() - t0)
        return seconds

    empty = timed_empty_runs(config["empty_runs"])
    # Prefect 3.9 joins its flow-run heartbeat thread at exit, and that thread sleeps in
    # whole seconds: most of an empty run is that wait. Measured apart, for the report only;
    # the sync itself runs with the default settings, as a user runs it.
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        no_heartbeat = timed_empty_runs(2)
    before = read_memory_mib(os.getpid())
    gc.collect()
    t0 = time.perf_counter()
    result = incremental_sync(
        [config["study"]],
        cache_path=config["cache"],
        snapshot_dir=config["snapshots"],
        full_refresh=config["full_refresh"],
    )
    wall = time.perf_counter() - t0
    after = read_memory_mib(os.getpid())
    out = {
        "import_s": import_s,
        "empty_flow_s": empty,
        "empty_flow_no_heartbeat_s": no_heartbeat,
        "flow_wall_s": wall,
        "result": result.model_dump(mode="json"),
        "vm_hwm_before_sync_mib": before["VmHWM"],
        "vm_rss_before_sync_mib": before["VmRSS"],
        "vm_hwm_mib": after["VmHWM"],
        "vm_rss_end_mib": after["VmRSS"],
    }
    Path(config["out"]).write_bytes(orjson.dumps(out))
    return 0


# --------------------------------------------------------------------------- parent side


class SyncRunner:
    """Runs `incremental_sync` for one study in a child process, always against the same
    cache, and reads the emulator's request log of that run."""

    def __init__(
        self,
        launcher: Launcher,
        workdir: Path,
        env: dict[str, str],
        study: str,
        admin: EmulatorClient,
        empty_runs: int,
    ) -> None:
        self.launcher = launcher
        self.workdir = workdir
        self.env = env
        self.study = study
        self.admin = admin
        self.empty_runs = empty_runs
        self.cache = workdir / "cache" / "imednet.sqlite"
        self.snapshots = workdir / "snapshots"
        self.runs = 0

    def run(self, label: str) -> dict[str, Any]:
        self.runs += 1
        stem = self.workdir / f"run{self.runs}-{label}"
        config = {
            "study": self.study,
            "cache": str(self.cache),
            "snapshots": str(self.snapshots),
            "full_refresh": False,
            "empty_runs": self.empty_runs,
            "out": f"{stem}.json",
        }
        Path(f"{stem}.config.json").write_text(json.dumps(config))
        self.admin.reset_requests()
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", f"{stem}.config.json"]
        outcome = self.launcher.run(argv, self.env, Path(f"{stem}.log"))
        out_path = Path(config["out"])
        if outcome["returncode"] != 0 or not out_path.exists():
            tail = "\n".join(Path(f"{stem}.log").read_text(errors="replace").splitlines()[-40:])
            raise RuntimeError(f"sync child {label!r} exited {outcome['returncode']}:\n{tail}")
        data: dict[str, Any] = orjson.loads(out_path.read_bytes())
        data.update(outcome)
        data["ru_maxrss_mib"] = outcome["ru_maxrss_kib"] / 1024.0
        data["gets"] = classify_gets(self.admin.requests())
        warm = data["empty_flow_s"][1:] or data["empty_flow_s"]
        data["startup_s"] = _median(warm)
        study = data["result"]["studies"][self.study]
        snapshot = data["result"]["snapshots"].get(self.study)
        data["snapshot_s"] = snapshot["seconds"] if snapshot else 0.0
        data["fetch_s"] = study["seconds"]
        data["no_snapshot_s"] = data["flow_wall_s"] - data["snapshot_s"]
        data["work_s"] = data["no_snapshot_s"] - data["startup_s"]
        return data


def classify_gets(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """GETs of one run by entity (last path segment) and kind, from the emulator's log.

    listing: pages of the delta / full listing; count: `size=1` total count (the delete
    check); reconcile: id-range counts and id-range lists (finding hard deletes); keyset:
    the re-read pass after pages shrank under the pager.
    """
    by_entity: dict[str, dict[str, int]] = {}
    server_s = 0.0
    total = 0
    for e in entries:
        if e["method"] != "GET":
            continue
        total += 1
        server_s += max(0.0, (e.get("finished") or 0.0) - e["started"])
        entity = e["path"].rstrip("/").rsplit("/", 1)[-1]
        query = e.get("query") or {}
        text = ";".join(query.get("filter", []))
        size = (query.get("size") or [""])[0]
        if _ID_RANGE.search(text):
            kind = "reconcile"
        elif size == "1":
            kind = "count"
        elif _ID_AFTER.search(text):
            kind = "keyset"
        else:
            kind = "listing"
        counts = by_entity.setdefault(entity, {"total": 0})
        counts["total"] += 1
        counts[kind] = counts.get(kind, 0) + 1
    return {"total": total, "server_s": server_s, "by_entity": by_entity}


def raw_paging(base_url: str, study: str) -> dict[str, Any]:
    """The floor: every entity the sync lists, in its order and with its filters, at size
    500 over one keep-alive connection, `response.json()` and nothing built from it."""
    from imednet_flows.edc.paging import scoped_filter

    per_entity: dict[str, dict[str, Any]] = {}
    gc.collect()
    with httpx.Client(base_url=base_url, headers=AUTH_HEADERS, timeout=120.0) as client:
        started = time.perf_counter()
        for spec in SYNC_ORDER:
            text = scoped_filter(spec.route, study, [[]])
            params: dict[str, Any] = {"filter": text} if text else {}
            t0 = time.perf_counter()
            page, pages, count, total = 0, 0, 0, 0
            while True:
                response = client.get(
                    records_path(study, spec.route),
                    params={**params, "page": page, "size": PAGE_SIZE},
                )
                response.raise_for_status()
                payload = response.json()
                count += len(payload["data"])
                pages += 1
                pagination = payload["pagination"]
                total = pagination["totalElements"]
                page += 1
                if page >= pagination["totalPages"]:
                    break
            if count != total:
                raise RuntimeError(f"raw paging saw {count} {spec.name}, the API says {total}")
            per_entity[spec.name] = {
                "rows": count,
                "pages": pages,
                "seconds": time.perf_counter() - t0,
            }
        elapsed = time.perf_counter() - started
    return {
        "seconds": elapsed,
        "rows": sum(e["rows"] for e in per_entity.values()),
        "pages": sum(e["pages"] for e in per_entity.values()),
        "entities": per_entity,
    }


def delta_targets(changes: dict[str, int], gets: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per entity: GETs seen vs ceil(changes/500) + 1 (delta) + 1 (delete check)."""
    out: dict[str, dict[str, Any]] = {}
    for spec in SYNC_ORDER:
        seen = gets["by_entity"].get(spec.route, {}).get("total", 0)
        n = changes.get(spec.name, 0)
        target = math.ceil(n / PAGE_SIZE) + 1 + 1
        out[spec.name] = {"gets": seen, "changes": n, "target": target, "ok": seen <= target}
    others = {
        k: v["total"]
        for k, v in gets["by_entity"].items()
        if k not in {s.route for s in SYNC_ORDER}
    }
    if others:
        out["other"] = {"gets": sum(others.values()), "paths": others, "target": 0, "ok": False}
    return out


def bench_size(
    label: str,
    records: int,
    args: argparse.Namespace,
    launcher: Launcher,
    workdir: Path,
    prefect_env: dict[str, str],
) -> dict[str, Any]:
    """Every phase at one size, against its own emulator process and cache."""
    study = f"BENCH-{label.upper()}"
    spec = StudySpec.for_records(
        records,
        study_key=study,
        intervals=args.intervals,
        forms_per_interval=args.forms_per_interval,
    )
    n_seeded = spec.record_count
    out: dict[str, Any] = {"study": study, "records_requested": records, "records": n_seeded}
    size_dir = workdir / label
    size_dir.mkdir()
    emulator = EmulatorProcess(records, study, args.intervals, args.forms_per_interval)
    admin: EmulatorClient | None = None
    try:
        log(f"[{label}] starting emulator with {n_seeded:,} records ...")
        emulator.start(timeout=args.start_timeout)
        out["emulator_startup"] = emulator.timings
        log(f"[{label}] ready at {emulator.base_url} in {emulator.timings['to_ready_s']:.1f}s")
        admin = EmulatorClient(emulator.base_url)
        env = {
            **os.environ,
            **prefect_env,
            "IMEDNET_BASE_URL": emulator.base_url,
            "IMEDNET_API_KEY": DEMO_API_KEY,
            "IMEDNET_SECURITY_KEY": DEMO_SECURITY_KEY,
            "PYTHONUNBUFFERED": "1",
        }
        runner = SyncRunner(launcher, size_dir, env, study, admin, args.empty_runs)

        log(f"[{label}] raw paging @500 (before the full sync; also warms the emulator) ...")
        raw_before = raw_paging(emulator.base_url, study)
        log(f"[{label}] full sync (child process) ...")
        full = runner.run("full")
        log(f"[{label}] full sync: {full['flow_wall_s']:.1f}s; raw paging again ...")
        raw_after = raw_paging(emulator.base_url, study)
        raw_s = (raw_before["seconds"] + raw_after["seconds"]) / 2.0
        out["raw"] = {"before": raw_before, "after": raw_after, "mean_s": raw_s}
        out["full"] = full
        fetched = full["result"]["studies"][study]["entities"]["records"]["fetched"]
        if fetched != n_seeded:
            raise RuntimeError(f"full sync fetched {fetched} records, the study has {n_seeded}")

        n_changes = max(1, math.ceil(n_seeded * args.delta_share))
        log(f"[{label}] delta: editing {n_changes} records, then syncing ...")
        admin.mutate(study, "edit_records", n=n_changes, seed=101)
        delta = runner.run("delta")
        delta["changes"] = {"records": n_changes}
        delta["targets"] = delta_targets(delta["changes"], delta["gets"])
        out["delta"] = delta

        log(f"[{label}] delta + {args.hard_deletes} hard deletes ...")
        admin.mutate(study, "edit_records", n=n_changes, seed=202)
        deleted = admin.mutate(study, "hard_delete", n=args.hard_deletes, seed=303)
        deletes = runner.run("deletes")
        deletes["changes"] = {"records": n_changes}
        deletes["deleted_ids"] = deleted["ids"]
        deletes["targets"] = delta_targets(deletes["changes"], deletes["gets"])
        rec = deletes["gets"]["by_entity"].get("records", {})
        deletes["reconcile_gets"] = rec.get("reconcile", 0)
        deletes["extra_vs_delta_run"] = rec.get("total", 0) - delta["gets"]["by_entity"].get(
            "records", {}
        ).get("total", 0)
        deletes["cached_before"] = n_seeded
        deletes["extra_target"] = args.hard_deletes * _log2_ceil(n_seeded)
        hard = deletes["result"]["studies"][study]["entities"]["records"]["hard_deleted"]
        if hard != args.hard_deletes:
            raise RuntimeError(f"sync applied {hard} hard deletes, expected {args.hard_deletes}")
        out["deletes"] = deletes

        log(f"[{label}] idle cycle ...")
        out["idle"] = runner.run("idle")
        out["emulator_memory_end"] = emulator.memory()
        out["cache_bytes"] = runner.cache.stat().st_size

        out["verdicts"] = size_verdicts(out)
        time_missed = not (
            out["verdicts"]["full_ratio"]["ok"] and out["verdicts"]["delta_share"]["ok"]
        )
        if args.profile or (time_missed and not args.no_profile):
            log(f"[{label}] profiling StudySync + merge + snapshot in-process ...")
            out["profile"] = profile_in_process(
                emulator.base_url, study, n_changes, size_dir / "profile", admin
            )
    finally:
        if admin is not None:
            admin.close()
        code = emulator.stop()
        out["emulator_exit_code"] = code
    return out


def size_verdicts(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    full, delta, deletes, idle = s["full"], s["delta"], s["deletes"], s["idle"]
    ratio = full["work_s"] / s["raw"]["mean_s"]
    share = delta["no_snapshot_s"] / full["no_snapshot_s"]
    peak = max(full["vm_hwm_mib"], full["ru_maxrss_mib"])
    return {
        "full_ratio": {"value": ratio, "ok": ratio <= FULL_RATIO_TARGET},
        "delta_gets": {"ok": all(t["ok"] for t in delta["targets"].values())},
        "delta_share": {"value": share, "ok": share <= DELTA_SHARE_TARGET},
        "delete_gets": {
            "value": deletes["reconcile_gets"],
            "ok": deletes["reconcile_gets"] <= deletes["extra_target"],
        },
        "idle_gets": {
            "value": idle["gets"]["total"],
            "ok": idle["gets"]["total"] <= IDLE_GETS_TARGET,
        },
        "peak_rss": {"value": peak, "ok": peak < RSS_TARGET_MIB},
    }


# ------------------------------------------------------------------------------- profile


def _short(filename: str) -> str:
    """Paths relative to site-packages or the project, so the table stays readable."""
    for marker in ("site-packages/", str(PROJECT_ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _profile_rows(profile: cProfile.Profile, top: int) -> dict[str, Any]:
    """Top functions by own time, and the project's own functions by cumulative time."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    rows = []
    for (filename, line, name), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{_short(filename)}:{line}({name})",
                "project": str(PROJECT_ROOT) in filename,
                "calls": calls,
                "tottime_s": tottime,
                "cumtime_s": cumtime,
            }
        )
    own = sorted(rows, key=lambda r: r["tottime_s"], reverse=True)[:top]
    project = [r for r in rows if r["project"]]
    project.sort(key=lambda r: r["cumtime_s"], reverse=True)
    return {
        "total_s": stats.total_tt,  # type: ignore[attr-defined]
        "by_own_time": own,
        "project_by_cumulative": project[:top],
    }


def _measured(fn: Callable[[], Any], profiled: bool) -> tuple[float, Any]:
    """Wall time of fn, and its profile rows when profiled (else None)."""
    gc.collect()
    profile = cProfile.Profile() if profiled else None
    started = time.perf_counter()
    if profile is None:
        fn()
    else:
        profile.runcall(fn)
    seconds = time.perf_counter() - started
    return seconds, (_profile_rows(profile, PROFILE_TOP) if profile is not None else None)


def profile_in_process(
    base_url: str, study: str, n_changes: int, workdir: Path, admin: EmulatorClient
) -> dict[str, Any]:
    """Replay the sync's work without Prefect: a full run (fetch, merge, snapshot) into a
    fresh cache, then a delta run after editing n_changes records. Done twice: plainly
    timed, then in a second fresh cache under cProfile (whose overhead inflates pure-Python
    code), with this process's VmRSS / VmHWM after each profiled phase."""
    from imednet_flows.cache.schema import connect
    from imednet_flows.cache.snapshots import write_snapshot
    from imednet_flows.cache.sync import StudySync, merge
    from imednet_flows.edc.client import Credentials, ImednetClient

    credentials = Credentials(base_url, DEMO_API_KEY, DEMO_SECURITY_KEY)
    phases: dict[str, Any] = {}

    def one_run(root: Path, name: str, profiled: bool) -> None:
        cache = root / "imednet.sqlite"

        def record(phase: str, seconds: float, rows: dict[str, Any] | None) -> None:
            entry = phases.setdefault(f"{name}_{phase}", {})
            if rows is None:
                entry["plain_s"] = seconds
            else:
                entry.update(seconds=seconds, memory=read_memory_mib(os.getpid()), **rows)

        with ImednetClient(credentials, max_concurrency=4) as client:
            sync = StudySync(client, cache, study)
            try:
                record("fetch", *_measured(sync.run_fetch, profiled))
                conn = connect(cache)
                try:
                    record("merge", *_measured(lambda: merge(conn, sync), profiled))
                finally:
                    conn.close()
            finally:
                sync.close()
        if not sync.result.changed and name != "full":
            return
        conn = connect(cache, readonly=True)
        try:
            snap = _measured(lambda: write_snapshot(conn, study, root / "snapshots"), profiled)
            record("snapshot", *snap)
        finally:
            conn.close()

    phases["memory_before"] = read_memory_mib(os.getpid())
    for seed, profiled in ((404, False), (505, True)):
        root = workdir / ("profiled" if profiled else "plain")
        root.mkdir(parents=True, exist_ok=True)
        one_run(root, "full", profiled)
        admin.mutate(study, "edit_records", n=n_changes, seed=seed)
        one_run(root, "delta", profiled)
    return phases


# ----------------------------------------------------------------------------------- run


def run(args: argparse.Namespace, launcher: Launcher) -> dict[str, Any]:
    results: dict[str, Any] = {
        "config": {
            "records_small": args.records_small,
            "records_large": args.records_large,
            "intervals": args.intervals,
            "forms_per_interval": args.forms_per_interval,
            "delta_share": args.delta_share,
            "hard_deletes": args.hard_deletes,
            "empty_runs": args.empty_runs,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "sizes": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    prefect_env = {
        "PREFECT_HOME": str(workdir / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    try:
        with environment(prefect_env):
            import prefect.settings
            from prefect.testing.utilities import prefect_test_harness

            started = time.perf_counter()
            with prefect_test_harness(server_startup_timeout=120):
                results["prefect_harness_startup_s"] = time.perf_counter() - started
                api_url = str(prefect.settings.PREFECT_API_URL.value())
                log(f"Prefect API at {api_url} in {results['prefect_harness_startup_s']:.1f}s")
                child_env = {**prefect_env, "PREFECT_API_URL": api_url}
                for label, n in (("small", args.records_small), ("large", args.records_large)):
                    results["sizes"][label] = bench_size(
                        label, n, args, launcher, workdir, child_env
                    )
                    results["parent_memory"] = read_memory_mib(os.getpid())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    small, large = results["sizes"]["small"], results["sizes"]["large"]
    scale = large["verdicts"]["peak_rss"]["value"] / small["verdicts"]["peak_rss"]["value"]
    results["rss_scale"] = {"value": scale, "ok": scale <= RSS_SCALE_TARGET}
    return results


# -------------------------------------------------------------------------------- report


def _short_n(n: int) -> str:
    return f"{n / 1000:g}k" if n >= 1000 else str(n)


def _size_rows(s: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    n, v = s["records"], s["verdicts"]
    full, delta, deletes, idle, raw = s["full"], s["delta"], s["deletes"], s["idle"], s["raw"]
    tag = _short_n(n)
    empty = full["empty_flow_s"]
    rows: list[tuple[str, str, str, str]] = [
        (f"[{tag}] {n:,} records, study {s['study']}", "", "", ""),
        ("  emulator spawn -> ready", f"{s['emulator_startup']['to_ready_s']:.1f} s", "", ""),
        (
            "  raw httpx @500, all 6 entities (mean)",
            f"{raw['mean_s']:.2f} s ({raw['before']['seconds']:.2f} / "
            f"{raw['after']['seconds']:.2f})",
            "",
            "",
        ),
        (
            "    of which records (1st pass)",
            f"{raw['before']['entities']['records']['seconds']:.2f} s "
            f"({raw['before']['entities']['records']['pages']} pages)",
            "",
            "",
        ),
        ("  full sync, flow wall", f"{full['flow_wall_s']:.2f} s", "", ""),
        (
            "    flow start-up (empty run, warm median)",
            f"{full['startup_s']:.3f} s (cold {empty[0]:.2f})",
            "",
            "",
        ),
        (
            "    empty run without heartbeat thread",
            f"{min(full['empty_flow_no_heartbeat_s']):.3f} s",
            "",
            "",
        ),
        ("    snapshot", f"{full['snapshot_s']:.2f} s", "", ""),
        ("    StudySync.run_fetch", f"{full['fetch_s']:.2f} s", "", ""),
        (
            "    rest (merge, orchestration, artifact)",
            f"{full['work_s'] - full['fetch_s']:.2f} s",
            "",
            "",
        ),
        (
            "    GETs / emulator handler time",
            f"{full['gets']['total']} / {full['gets']['server_s']:.2f} s",
            "",
            "",
        ),
        (
            "  full: (wall - start-up - snapshot) / raw",
            f"{v['full_ratio']['value']:.2f}",
            f"<= {FULL_RATIO_TARGET}",
            verdict(v["full_ratio"]["ok"]),
        ),
    ]
    ch = delta["changes"]["records"]
    for name, t in delta["targets"].items():
        rows.append(
            (
                f"  delta ({ch} edits): GETs {name}",
                f"{t['gets']}" + (f" {t['paths']}" if "paths" in t else ""),
                f"<= {t['target']}",
                verdict(t["ok"]),
            )
        )
    rec_fetched = delta["result"]["studies"][s["study"]]["entities"]["records"]["fetched"]
    rows += [
        (
            "  delta: flow wall (snapshot) [records fetched]",
            f"{delta['flow_wall_s']:.2f} s ({delta['snapshot_s']:.2f}) [{rec_fetched}]",
            "",
            "",
        ),
        (
            "  delta: (wall - snapshot) / full's",
            f"{v['delta_share']['value']:.3f}",
            f"<= {DELTA_SHARE_TARGET}",
            verdict(v["delta_share"]["ok"]),
        ),
        (
            "    same without start-up (fetch only)",
            f"{delta['work_s'] / full['work_s']:.3f} ({delta['fetch_s']:.2f} s)",
            "",
            "",
        ),
        (
            f"  + {len(deletes['deleted_ids'])} hard deletes: GETs finding them",
            f"{deletes['reconcile_gets']} (run +{deletes['extra_vs_delta_run']} vs delta)",
            f"<= {deletes['extra_target']}",
            verdict(v["delete_gets"]["ok"]),
        ),
        (
            "    flow wall (snapshot)",
            f"{deletes['flow_wall_s']:.2f} s ({deletes['snapshot_s']:.2f})",
            "",
            "",
        ),
        (
            "  idle cycle: GETs (flow wall)",
            f"{idle['gets']['total']} ({idle['flow_wall_s']:.2f} s)",
            f"<= {IDLE_GETS_TARGET}",
            verdict(v["idle_gets"]["ok"]),
        ),
        (
            "  full sync peak RSS: VmHWM / ru_maxrss",
            f"{full['vm_hwm_mib']:.0f} / {full['ru_maxrss_mib']:.0f} MiB",
            f"< {RSS_TARGET_MIB:.0f} MiB",
            verdict(v["peak_rss"]["ok"]),
        ),
        (
            "    VmHWM before the sync (after empty runs)",
            f"{full['vm_hwm_before_sync_mib']:.0f} MiB",
            "",
            "",
        ),
    ]
    return rows


def render(results: dict[str, Any]) -> str:
    cfg = results["config"]
    small, large = results["sizes"]["small"], results["sizes"]["large"]
    rows: list[tuple[str, str, str, str]] = [
        ("Prefect test API start-up", f"{results['prefect_harness_startup_s']:.1f} s", "", "")
    ]
    rows += _size_rows(small)
    rows += _size_rows(large)
    rows.append(
        (
            f"peak RSS {_short_n(large['records'])} / {_short_n(small['records'])}",
            f"{results['rss_scale']['value']:.2f}",
            f"<= {RSS_SCALE_TARGET}",
            verdict(results["rss_scale"]["ok"]),
        )
    )
    header = ("metric", "value", "target", "")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(4)]
    title = (
        f"incremental_sync throughput ({cfg['intervals']} intervals x "
        f"{cfg['forms_per_interval']} forms), Python {cfg['python']}, {cfg['cpus']} CPUs"
    )
    rule = "-" * (sum(widths) + 6)
    lines = [
        title,
        rule,
        table_row(header, widths),
        rule,
        *(table_row(r, widths) for r in rows),
        rule,
    ]
    for s in (small, large):
        if "profile" in s:
            lines += _profile_lines(s)
    return "\n".join(lines)


def _profile_lines(s: dict[str, Any]) -> list[str]:
    out: list[str] = ["", f"In-process replay at {s['records']:,} records, no Prefect:"]
    phases = {k: v for k, v in s["profile"].items() if isinstance(v, dict) and "seconds" in v}
    out.append(f"  {'phase':<15} {'plain':>8}  {'profiled':>8}")
    for name, p in phases.items():
        mem = p["memory"]
        out.append(
            f"  {name:<15} {p.get('plain_s', float('nan')):6.2f} s  {p['seconds']:6.2f} s"
            f"   VmRSS {mem['VmRSS']:.0f} MiB, VmHWM {mem['VmHWM']:.0f} MiB"
        )
    for name, p in phases.items():
        if p["seconds"] < 0.2:
            continue
        out += ["", f"{name}: by own time", f"{'own s':>8}  {'cum s':>8}  {'calls':>10}  function"]
        out += [
            f"{r['tottime_s']:8.3f}  {r['cumtime_s']:8.3f}  {r['calls']:10,}  {r['function']}"
            for r in p["by_own_time"]
        ]
        out += [f"{name}: project functions by cumulative time"]
        out += [
            f"{r['tottime_s']:8.3f}  {r['cumtime_s']:8.3f}  {r['calls']:10,}  {r['function']}"
            for r in p["project_by_cumulative"][:8]
        ]
    return out


# ---------------------------------------------------------------------------------- main


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--records-small", type=positive, default=50_000, help="default 50000")
    parser.add_argument("--records-large", type=positive, default=200_000, help="default 200000")
    parser.add_argument("--intervals", type=positive, default=8, help="visits per subject")
    parser.add_argument("--forms-per-interval", type=positive, default=5, help="records/visit")
    parser.add_argument(
        "--delta-share", type=_share, default=0.001, help="records edited per delta (0.001)"
    )
    parser.add_argument("--hard-deletes", type=positive, default=10, help="records deleted")
    parser.add_argument(
        "--empty-runs", type=positive, default=4, help="empty flow runs per child (1st cold)"
    )
    parser.add_argument("--start-timeout", type=float, default=900.0, help="emulator start, s")
    parser.add_argument("--profile", action="store_true", help="profile even if targets are met")
    parser.add_argument("--no-profile", action="store_true", help="never profile")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    launcher = Launcher()
    launcher.start()  # first, while this process is still small (see LAUNCHER_CODE)
    try:
        return run_main(lambda: run(args, launcher), render, args.json)
    finally:
        launcher.close()


if __name__ == "__main__":
    sys.exit(main())
