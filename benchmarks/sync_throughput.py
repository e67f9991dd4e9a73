"""Cost of `incremental_sync` against its targets (issue 9), at 50k, 200k and 1M records.

Why this exists: the sync runs every 15 minutes for years, so what an ordinary cycle costs
matters more than the first run; a first run must still stay close to plain HTTP paging.
Every figure is a ratio to a baseline measured in the same run (the machine is shared and
noisy), and every target is printed with its verdict.

Definitions (each sync run below is one `run_incremental_sync(...)` call, the documented
entry point from synchronous code, with Prefect's default settings, heartbeats on):

* **floor**: raw httpx at size 500 over one keep-alive connection, `response.json()`,
  nothing stored, over every collection the sync fetches in the sync's order, with the
  sync's parameters (the SDK's `studyKey==K` filter where the sync sends it, users with
  `includeInactive=true`). Measured before and after the full sync; the mean is used.
* **flow's own seconds**: the flow call's wall time minus the median wall time of an empty
  `async` flow run called the same way in the same process (warm runs only). It is what
  the sync costs beyond the fixed cost of any flow run.
* **of which snapshot**: `SyncRunResult.snapshots[study].seconds`, the time
  `write_snapshot` took inside the run.
* **server seconds**: the emulator's own handler time for the run's requests, summed from
  its request log (`finished - started` per request; the emulator runs in another process).
* **client-side seconds** of a delta: flow's own seconds (snapshot included) less the
  server seconds of that run.
* **idle cycle**: a run with nothing changed; its whole wall time (Prefect's per-run
  overhead included) less its server seconds.
* **peak RSS growth**: the sync process's peak resident memory during the full sync over
  its resident memory after imports and the empty flow runs (the post-import baseline).
  The kernel's high-water mark is reset before the sync (`/proc/self/clear_refs` 5), so
  the peak is the sync's own. MB are 10^6 bytes.

Targets: full sync flow's own seconds less snapshot <= 1.5 x floor, including the snapshot
<= 2.5 x floor; a delta after 0.1 % uniformly random record edits (no deletes) <= 5 % of
the full sync's flow's own seconds, client side (the same delta with the newest 0.1 %
edited is reported beside it, with snapshot bytes written); recordRevisions GETs of a delta
with r new revisions <= ceil(r/500) + 1; idle cycle <= 1.0 x floor (at 50k); peak RSS growth
<= 100 MB at 200k, and the 1M figure within 1.2 x the 200k one. Hard deletes: the GETs
spent finding them and their server-side cost are reported (id-range counts make the server
scan the study; they are not free).

Each size gets its own emulator process (`imednet-flows emulator --records N`) and its own
sync process (this script with `--child`), so neither one's memory or CPU is the other's.
All sync processes talk to one Prefect API, `prefect_test_harness` in this process.
`--profile` replays a full and a delta run without Prefect under cProfile, in the sync
process, and prints where the time goes.

Run: `.venv/bin/python benchmarks/sync_throughput.py [--sizes 50000,200000,1000000]
[--profile] [--json]`. A benchmark, not a test: it exits 0 unless something broke.
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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
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
    read_memory_mib,
    run_main,
    table_row,
    verdict,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # `flows` and `tasks` are top-level packages
    sys.path.insert(1, str(PROJECT_ROOT))

from imednet_flows.cache.collections import COLLECTIONS  # noqa: E402
from imednet_flows.edc.paging import scoped_filter  # noqa: E402
from imednet_flows.emulator import (  # noqa: E402
    DEMO_API_KEY,
    DEMO_SECURITY_KEY,
    EmulatorClient,
    StudySpec,
)

PAGE_SIZE = 500
FULL_LESS_SNAPSHOT_TARGET = 1.5
FULL_TARGET = 2.5
DELTA_SHARE_TARGET = 0.05
IDLE_TARGET = 1.0
RSS_GROWTH_TARGET_MB = 100.0
RSS_SCALE_TARGET = 1.2
PROFILE_TOP = 18
_ID_FIELDS = "|".join(sorted({spec.id_field for spec in COLLECTIONS}))
_ID_RANGE = re.compile(rf"\b({_ID_FIELDS})\s*(>=|<=)")
_ID_AFTER = re.compile(rf"\b({_ID_FIELDS})\s*>(?!=)")


# ------------------------------------------------------------------------------ measures


def api_path(study: str, route: str) -> str:
    return f"/api/v1/edc/studies/{quote(study, safe='')}/{quote(route, safe='')}"


def raw_floor(base_url: str, study: str) -> dict[str, Any]:
    """Every collection the sync fetches, as plainly as httpx can page it (see docstring)."""
    per: dict[str, dict[str, Any]] = {}
    gc.collect()
    with httpx.Client(base_url=base_url, headers=AUTH_HEADERS, timeout=300.0) as client:
        started = time.perf_counter()
        for spec in COLLECTIONS:
            text = scoped_filter(spec.route, study, [[]]) if spec.filterable else None
            params = {**spec.params, **({"filter": text} if text else {})}
            t0, page, rows = time.perf_counter(), 0, 0
            while True:
                response = client.get(
                    api_path(study, spec.route), params={**params, "page": page, "size": PAGE_SIZE}
                )
                response.raise_for_status()
                payload = response.json()
                rows += len(payload["data"])
                page += 1
                if page >= payload["pagination"]["totalPages"]:
                    break
            if rows != payload["pagination"]["totalElements"]:
                raise RuntimeError(f"the floor saw {rows} {spec.name}, the API counts more")
            per[spec.name] = {"rows": rows, "pages": page, "seconds": time.perf_counter() - t0}
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": sum(p["rows"] for p in per.values()), "collections": per}


def _kind(entry: dict[str, Any]) -> str:
    """listing (pages of a full or delta listing), count (`size=1`, the delete check),
    reconcile (id-range counts and lists: finding hard deletes), keyset (the re-read pass)."""
    query = entry.get("query") or {}
    text = ";".join(query.get("filter", []))
    if _ID_RANGE.search(text):
        return "reconcile"
    if (query.get("size") or [""])[0] == "1":
        return "count"
    return "keyset" if _ID_AFTER.search(text) else "listing"


def classify_gets(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's GETs from the emulator's log: per collection and kind, with handler seconds."""
    by: dict[str, dict[str, Any]] = {}
    total, server_s = 0, 0.0
    for entry in entries:
        if entry["method"] != "GET":
            continue
        seconds = max(0.0, (entry.get("finished") or 0.0) - entry["started"])
        total += 1
        server_s += seconds
        name = entry["path"].rstrip("/").rsplit("/", 1)[-1]
        counts = by.setdefault(name, {"total": 0, "server_s": 0.0})
        kind = _kind(entry)
        counts["total"] += 1
        counts["server_s"] += seconds
        counts[kind] = counts.get(kind, 0) + 1
        counts[f"{kind}_server_s"] = counts.get(f"{kind}_server_s", 0.0) + seconds
    return {"total": total, "server_s": server_s, "by_collection": by}


def memory() -> dict[str, float]:
    return read_memory_mib(os.getpid())


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS, so the next peak is the sync's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def newest_ids(base_url: str, study: str, n: int) -> list[int]:
    """The n highest record ids, by the API's own sort (the rows a site edits most: its
    latest visits)."""
    ids: list[int] = []
    with httpx.Client(base_url=base_url, headers=AUTH_HEADERS, timeout=300.0) as client:
        page = 0
        while len(ids) < n:
            response = client.get(
                api_path(study, "records"),
                params={"sort": "recordId,desc", "page": page, "size": PAGE_SIZE},
            )
            response.raise_for_status()
            data = response.json()["data"]
            if not data:
                break
            ids += [row["recordId"] for row in data]
            page += 1
    return sorted(ids[:n])


# ---------------------------------------------------------------------------- sync side


class Child:
    """The sync process of one size: empty flow runs, then every phase, as a user runs it."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.base_url: str = config["base_url"]
        self.study: str = config["study"]
        self.admin = EmulatorClient(self.base_url)
        work = Path(config["workdir"])
        self.cache, self.snapshots = work / "cache" / "imednet.sqlite", work / "snapshots"

    def empty_runs(self, n: int) -> list[float]:
        from prefect import flow
        from prefect.utilities.asyncutils import run_coro_as_sync

        @flow(name="bench-empty-async-flow")
        async def empty() -> None:
            """Returns at once: its wall time is Prefect's fixed cost of one flow run."""

        seconds = []
        for _ in range(n):
            t0 = time.perf_counter()
            run_coro_as_sync(empty())
            seconds.append(time.perf_counter() - t0)
        return seconds

    def sync(self, label: str) -> dict[str, Any]:
        from flows.incremental_sync import run_incremental_sync

        log(f"[{self.study}] {label} ...")
        self.admin.reset_requests()
        gc.collect()
        t0 = time.perf_counter()
        result = run_incremental_sync(
            [self.study], cache_path=str(self.cache), snapshot_dir=str(self.snapshots)
        )
        wall = time.perf_counter() - t0
        gets = classify_gets(self.admin.requests())
        study = result.studies[self.study]
        snap = result.snapshots.get(self.study)
        return {
            "wall_s": wall,
            "gets": gets,
            "collections": {n: c.model_dump(mode="json") for n, c in study.collections.items()},
            "fetch_s": study.seconds,
            "snapshot_s": snap.seconds if snap else 0.0,
            "snapshot_bytes": snap.bytes_written if snap else 0,
            "snapshot_files": [len(snap.files_written), len(snap.files_reused)] if snap else [0, 0],
        }

    def edit(self, **kwargs: Any) -> int:
        return len(self.admin.mutate(self.study, "edit_records", **kwargs)["ids"])


def child_phases(child: Child, config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"empty_flow_s": child.empty_runs(config["empty_runs"])}
    out["floor_before"] = raw_floor(child.base_url, child.study)
    gc.collect()
    baseline = memory()
    out["peak_reset"] = reset_peak()
    out["full"] = child.sync("full sync")
    peak = memory()
    out["memory"] = {"baseline": baseline, "after_full": peak}
    out["floor_after"] = raw_floor(child.base_url, child.study)
    n = max(1, math.ceil(config["records"] * config["delta_share"]))
    out["edits"] = child.edit(n=n, seed=101)
    out["delta"] = child.sync("delta, random edits")
    child.edit(ids=newest_ids(child.base_url, child.study, n))
    out["delta_newest"] = child.sync("delta, newest edited")
    deleted = child.admin.mutate(child.study, "hard_delete", n=config["hard_deletes"], seed=303)
    out["deleted"] = len(deleted["ids"])
    out["deletes"] = child.sync("hard deletes")
    out["idle"] = child.sync("idle cycle")
    out["memory"]["end"] = memory()
    out["cache_bytes"] = child.cache.stat().st_size
    if config["profile"]:
        out["profile"] = profile_replay(child, n, Path(config["workdir"]) / "profile")
    return out


def child_main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    started = time.perf_counter()
    import flows.incremental_sync  # noqa: F401  (import cost is not the sync's)

    child = Child(config)
    try:
        out = {"import_s": time.perf_counter() - started, **child_phases(child, config)}
    finally:
        child.admin.close()
    Path(config["out"]).write_bytes(orjson.dumps(out))
    return 0


# ------------------------------------------------------------------------------ profile


def _short(filename: str) -> str:
    for marker in ("site-packages/", str(PROJECT_ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _profile_rows(profile: cProfile.Profile) -> list[dict[str, Any]]:
    stats = pstats.Stats(profile, stream=io.StringIO())
    rows = [
        {"function": f"{_short(f)}:{line}({name})", "calls": calls, "own_s": own, "cum_s": cum}
        for (f, line, name), (_, calls, own, cum, _) in stats.stats.items()  # type: ignore[attr-defined]
    ]
    return sorted(rows, key=lambda r: r["own_s"], reverse=True)[:PROFILE_TOP]


def profile_replay(child: Child, edits: int, root: Path) -> dict[str, Any]:
    """A full and a delta run of the sync's work without Prefect, each phase profiled (the
    sync's own thread only: the page prefetch runs beside it)."""
    from imednet_flows.cache.db import connect
    from imednet_flows.cache.merge import merge_into
    from imednet_flows.cache.snapshots import write_snapshot
    from imednet_flows.cache.sync import StudySync
    from imednet_flows.credentials import resolve_credentials
    from imednet_flows.edc.client import ImednetClient

    cache, phases = root / "imednet.sqlite", {}

    def measured(name: str, fn: Callable[[], Any]) -> Any:
        profile = cProfile.Profile()
        t0 = time.perf_counter()
        value = profile.runcall(fn)
        phases[name] = {"seconds": time.perf_counter() - t0, "top": _profile_rows(profile)}
        return value

    for run in ("full", "delta"):
        if run == "delta":
            child.edit(n=edits, seed=909)
        with ImednetClient(resolve_credentials()) as client:
            sync = StudySync(client, cache, child.study)
            try:
                measured(f"{run} fetch", sync.run_fetch)
                measured(f"{run} merge", lambda s=sync: merge_into(cache, s.staged()))
            finally:
                sync.close()
        conn = connect(cache, readonly=True)
        try:
            measured(f"{run} snapshot", lambda c=conn: write_snapshot(c, child.study, root / "s"))
        finally:
            conn.close()
    return phases


# --------------------------------------------------------------------------- parent side


def run_child(config: dict[str, Any], env: dict[str, str], timeout: float) -> dict[str, Any]:
    workdir = Path(config["workdir"])
    config_path, log_path = workdir / "config.json", workdir / "child.log"
    config_path.write_text(json.dumps(config))
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(config_path)]
    with open(log_path, "wb") as out:
        done = subprocess.run(
            argv, env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
        )
    if done.returncode != 0 or not Path(config["out"]).exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"the sync process exited {done.returncode}:\n{tail}")
    return orjson.loads(Path(config["out"]).read_bytes())


def bench_size(n: int, args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> dict:
    study = f"BENCH-{n // 1000}K"
    spec = StudySpec.for_records(n, study_key=study, intervals=8, forms_per_interval=5)
    records = spec.record_count
    size_dir = workdir / study
    size_dir.mkdir()
    emulator = EmulatorProcess(records, study, 8, 5)
    try:
        log(f"[{study}] seeding {records:,} records ...")
        emulator.start(timeout=args.start_timeout)
        config = {
            "base_url": emulator.base_url,
            "study": study,
            "records": records,
            "workdir": str(size_dir),
            "out": str(size_dir / "out.json"),
            "empty_runs": args.empty_runs,
            "delta_share": args.delta_share,
            "hard_deletes": args.hard_deletes,
            "profile": args.profile,
        }
        child_env = {
            **env,
            "IMEDNET_BASE_URL": emulator.base_url,
            "IMEDNET_API_KEY": DEMO_API_KEY,
            "IMEDNET_SECURITY_KEY": DEMO_SECURITY_KEY,
            "PYTHONUNBUFFERED": "1",
        }
        out = run_child(config, child_env, args.child_timeout)
        out["emulator_memory_mib"] = emulator.memory()
    finally:
        emulator.stop()
    out.update(study=study, records=records)
    out["figures"] = figures(out)
    return out


def figures(s: dict[str, Any]) -> dict[str, Any]:
    """The measured quantities the targets are about (see the module docstring)."""
    warm = s["empty_flow_s"][1:] or s["empty_flow_s"]
    empty = sorted(warm)[len(warm) // 2]
    floor = (s["floor_before"]["seconds"] + s["floor_after"]["seconds"]) / 2
    full = s["full"]
    full_own = full["wall_s"] - empty

    def client(run: dict[str, Any]) -> float:
        return run["wall_s"] - empty - run["gets"]["server_s"]

    revisions = s["delta"]["collections"]["recordRevisions"]
    rev_gets = s["delta"]["gets"]["by_collection"].get("recordRevisions", {}).get("total", 0)
    growth_mib = s["memory"]["after_full"]["VmHWM"] - s["memory"]["baseline"]["VmRSS"]
    deletes = s["deletes"]["gets"]["by_collection"].get("records", {})
    return {
        "empty_flow_s": empty,
        "floor_s": floor,
        "full_own_s": full_own,
        "full_less_snapshot_ratio": (full_own - full["snapshot_s"]) / floor,
        "full_ratio": full_own / floor,
        "delta_client_s": client(s["delta"]),
        "delta_share": client(s["delta"]) / full_own,
        "delta_newest_client_s": client(s["delta_newest"]),
        "delta_newest_share": client(s["delta_newest"]) / full_own,
        "revisions_new": revisions["inserted"],
        "revisions_gets": rev_gets,
        "revisions_gets_target": math.ceil(revisions["inserted"] / PAGE_SIZE) + 1,
        "idle_s": s["idle"]["wall_s"] - s["idle"]["gets"]["server_s"],
        "idle_ratio": (s["idle"]["wall_s"] - s["idle"]["gets"]["server_s"]) / floor,
        "rss_growth_mb": growth_mib * 1024 * 1024 / 1e6,
        "delete_gets": deletes.get("reconcile", 0) + deletes.get("count", 0),
        "delete_server_s": deletes.get("reconcile_server_s", 0.0)
        + deletes.get("count_server_s", 0.0),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "config": {
            "sizes": args.sizes,
            "delta_share": args.delta_share,
            "hard_deletes": args.hard_deletes,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_before": os.getloadavg(),
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

            with prefect_test_harness(server_startup_timeout=120):
                api_url = str(prefect.settings.PREFECT_API_URL.value())
                env = {**os.environ, **prefect_env, "PREFECT_API_URL": api_url}
                for n in args.sizes:
                    results["sizes"][str(n)] = bench_size(n, args, workdir, env)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["config"]["load_after"] = os.getloadavg()
    return results


# -------------------------------------------------------------------------------- report


def _n(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1000:g}k"


def _rows_timing(s: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    f, full = s["figures"], s["full"]
    gets = full["gets"]
    return [
        (f"[{_n(s['records'])}] {s['records']:,} records, study {s['study']}", "", "", ""),
        ("  floor: raw httpx @500, every collection", f"{f['floor_s']:.2f} s", "", ""),
        ("  empty async flow run (warm median)", f"{f['empty_flow_s']:.3f} s", "", ""),
        (
            "  full sync: flow's own s (of which snapshot)",
            f"{f['full_own_s']:.2f} ({full['snapshot_s']:.2f})",
            "",
            "",
        ),
        ("    GETs / server s", f"{gets['total']} / {gets['server_s']:.2f}", "", ""),
        (
            "  full less snapshot / floor",
            f"{f['full_less_snapshot_ratio']:.2f}",
            f"<= {FULL_LESS_SNAPSHOT_TARGET}",
            verdict(f["full_less_snapshot_ratio"] <= FULL_LESS_SNAPSHOT_TARGET),
        ),
        (
            "  full / floor",
            f"{f['full_ratio']:.2f}",
            f"<= {FULL_TARGET}",
            verdict(f["full_ratio"] <= FULL_TARGET),
        ),
    ]


def _delta_rows(s: dict[str, Any], key: str, title: str) -> list[tuple[str, str, str, str]]:
    f, run = s["figures"], s[key]
    share = f[f"{key}_share"]
    written, reused = run["snapshot_files"]
    return [
        (
            f"  {title}: client s (snapshot s, server s)",
            f"{f[f'{key}_client_s']:.3f} ({run['snapshot_s']:.3f}, {run['gets']['server_s']:.3f})",
            "",
            "",
        ),
        (
            "    snapshot: bytes written, parts written / linked",
            f"{run['snapshot_bytes'] / 1e6:.2f} MB, {written} / {reused}",
            "",
            "",
        ),
        (
            f"    {title} / full's own",
            f"{share:.3f}",
            f"<= {DELTA_SHARE_TARGET}",
            verdict(share <= DELTA_SHARE_TARGET),
        ),
    ]


def _rows_steady(s: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    f = s["figures"]
    rows = _delta_rows(s, "delta", f"delta, {s['edits']} random edits")
    rows += _delta_rows(s, "delta_newest", f"delta, {s['edits']} newest edited")
    d = s["deleted"]
    rows += [
        (
            f"  delta: recordRevisions GETs ({f['revisions_new']} new)",
            str(f["revisions_gets"]),
            f"<= {f['revisions_gets_target']}",
            verdict(f["revisions_gets"] <= f["revisions_gets_target"]),
        ),
        (
            f"  {d} hard deletes: GETs finding them (server s)",
            f"{f['delete_gets']} ({f['delete_server_s']:.2f} s)",
            f"reported; d*log2 N = {d * math.ceil(math.log2(s['records']))}",
            "",
        ),
        (
            "  idle cycle: wall less server s / floor",
            f"{f['idle_ratio']:.2f} ({f['idle_s']:.2f} s)",
            f"<= {IDLE_TARGET}",
            verdict(f["idle_ratio"] <= IDLE_TARGET),
        ),
        (
            "  peak RSS growth, full sync",
            f"{f['rss_growth_mb']:.0f} MB",
            f"<= {RSS_GROWTH_TARGET_MB:.0f} MB" if s["records"] <= 200_000 else "",
            verdict(f["rss_growth_mb"] <= RSS_GROWTH_TARGET_MB) if s["records"] <= 200_000 else "",
        ),
    ]
    return rows


def _scale_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    sizes = {s["records"]: s for s in results["sizes"].values()}
    mid = min(sizes, key=lambda n: abs(n - 200_000))
    rows = []
    for n, s in sizes.items():
        if n >= 5 * mid:
            ratio = s["figures"]["rss_growth_mb"] / sizes[mid]["figures"]["rss_growth_mb"]
            rows.append(
                (
                    f"peak RSS growth {_n(n)} / {_n(mid)}",
                    f"{ratio:.2f}",
                    f"<= {RSS_SCALE_TARGET}",
                    verdict(ratio <= RSS_SCALE_TARGET),
                )
            )
    return rows


def render(results: dict[str, Any]) -> str:
    cfg = results["config"]
    rows: list[tuple[str, str, str, str]] = []
    for s in results["sizes"].values():
        rows += _rows_timing(s) + _rows_steady(s)
    rows += _scale_rows(results)
    header = ("metric", "value", "target", "")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(4)]
    load = "/".join(f"{x:.2f}" for x in cfg["load_before"])
    title = (
        f"incremental_sync, Python {cfg['python']}, {cfg['cpus']} CPUs, load average "
        f"{load} before, {'/'.join(f'{x:.2f}' for x in cfg['load_after'])} after"
    )
    rule = "-" * (sum(widths) + 6)
    lines = [title, rule, table_row(header, widths), rule]
    lines += [table_row(r, widths) for r in rows] + [rule]
    for s in results["sizes"].values():
        lines += _profile_lines(s)
    return "\n".join(lines)


def _profile_lines(s: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, phase in (s.get("profile") or {}).items():
        out += ["", f"[{_n(s['records'])}] {name}: {phase['seconds']:.2f} s, by own time"]
        out += [
            f"{r['own_s']:8.3f} {r['cum_s']:8.3f} {r['calls']:9,}  {r['function']}"
            for r in phase["top"]
        ]
    return out


# ---------------------------------------------------------------------------------- main


def _sizes(text: str) -> list[int]:
    sizes = [int(x) for x in text.split(",") if x.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes are record counts >= 1, comma-separated")
    return sizes


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", type=_sizes, default=[50_000, 200_000, 1_000_000])
    parser.add_argument("--delta-share", type=_share, default=0.001, help="records per delta")
    parser.add_argument("--hard-deletes", type=int, default=10, help="records hard-deleted")
    parser.add_argument("--empty-runs", type=int, default=4, help="empty flow runs (1st cold)")
    parser.add_argument("--start-timeout", type=float, default=1800.0, help="emulator start, s")
    parser.add_argument("--child-timeout", type=float, default=3600.0, help="per size, s")
    parser.add_argument("--profile", action="store_true", help="profile a replay without Prefect")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child)
    return run_main(lambda: run(args), render, args.json)


if __name__ == "__main__":
    sys.exit(main())
