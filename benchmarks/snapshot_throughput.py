"""Cost of Parquet snapshot sets: full builds at 50,000 and 200,000 records, deltas, reads,
and the Parquet settings they were chosen with.

Why this exists: every sync that changes a study publishes a snapshot set, so a delta of a
few hundred records must cost a small share of a full build, whatever records changed. This
script answers, in one run and as ratios (a shared machine is noisy, so baselines are
measured in the same run):

1. Full build of a set from a cache of N records (every collection and every form table):
   seconds, files, bytes.
2. Delta of 0.1 % of records edited uniformly at random vs the same number of the newest
   records (highest ids), each logged as a merge logs it: seconds as a share of the full
   build, parts written and reused (hard links), bytes written. Random edits touch most
   parts; edits of recent records touch the last few.
3. Reading the set back: pandas over ``records.parquet/`` and the largest form, DuckDB
   grouping ``records.parquet`` by form, Polars over ``records.parquet/``.
4. At the smallest size only: the writer's Parquet settings against one change of them at
   a time (dictionary pages, zstd level 3, lz4, snappy) and the row group size (rows typed
   per batch): write seconds, bytes, pandas read seconds.

No server and no Prefect: caches are filled straight from the emulator's seeded studies,
the way a merge fills them. Run: ``.venv/bin/python benchmarks/snapshot_throughput.py
[--records 50000 200000] [--json]``. It prints numbers and exits 0 unless something broke;
tests never time anything.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pandas as pd
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imednet_flows.cache import store  # noqa: E402
from imednet_flows.cache.collections import COLLECTIONS, RECORDS  # noqa: E402
from imednet_flows.cache.db import connect, write_transaction  # noqa: E402
from imednet_flows.cache.rows import row_builder  # noqa: E402
from imednet_flows.cache.snapshots import read_manifest, write_snapshot, writer  # noqa: E402
from imednet_flows.emulator.seed import StudySpec, generate_study  # noqa: E402
from tests.cache_helpers import upsert_sql  # noqa: E402

STUDY = "BENCH"
#: The writer's settings and alternatives that each change one thing of them (the codec
#: without a level where it has none), so a row's difference is that one setting's.
_CHOSEN = writer.PARQUET_OPTIONS
_LEVELLESS = {k: v for k, v in _CHOSEN.items() if k != "compression_level"}
CODECS: dict[str, dict[str, Any]] = {
    "chosen": dict(_CHOSEN),
    "+ dictionary pages": {**_CHOSEN, "use_dictionary": True},
    "zstd level 3": {**_CHOSEN, "compression_level": 3},
    "lz4": {**_LEVELLESS, "compression": "lz4"},
    "snappy": {**_LEVELLESS, "compression": "snappy"},
}
BATCHES = (4_096, 8_192, 32_768)
PART_SIZES = (8_192, 16_384, 32_768)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


#: Each measurement is taken this many times and the fastest kept (set by --repeat): on a
#: shared machine the minimum is the least disturbed run.
REPEAT = 3


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def fastest(fn: Callable[[], Any]) -> float:
    return min(timed(fn)[0] for _ in range(REPEAT))


# ------------------------------------------------------------------------------ caches


def build_cache(path: Path, records: int) -> int:
    """A cache holding one seeded study of about `records` records, as a first sync
    leaves it; returns its record count."""
    data = generate_study(StudySpec.for_records(records, study_key=STUDY, study_id=9, seed=3))
    conn = connect(path)
    with write_transaction(conn):
        for spec in COLLECTIONS:
            items = getattr(data, spec.table)
            conn.executemany(upsert_sql(spec), row_builder(spec)(STUDY, items))
        version = store.bump_study_version(conn, STUDY)
        for spec in COLLECTIONS:
            store.log_changes(conn, STUDY, version, spec, None)
    conn.close()
    return len(data.records)


def edit_records(path: Path, record_ids: list[int], tag: str) -> None:
    """One merge that changed these records: rows replaced, changes logged with form keys."""
    conn = connect(path)
    with write_transaction(conn):
        marks = ",".join("?" * len(record_ids))
        rows = conn.execute(
            f"SELECT raw FROM records WHERE study_key=? AND record_id IN ({marks})",
            (STUDY, *record_ids),
        ).fetchall()
        items = []
        for (raw,) in rows:
            item = orjson.loads(raw)
            item["recordStatus"] = f"Edited {tag}"
            item["dateModified"] = "2026-11-30 12:00:00"
            items.append(item)
        conn.executemany(upsert_sql(RECORDS), row_builder(RECORDS)(STUDY, items))
        version = store.bump_study_version(conn, STUDY)
        store.log_changes(
            conn, STUDY, version, RECORDS, [(i["recordId"], i["formKey"]) for i in items]
        )
    conn.close()


def record_ids(path: Path) -> list[int]:
    conn = connect(path, readonly=True)
    try:
        return [r[0] for r in conn.execute("SELECT record_id FROM records ORDER BY record_id")]
    finally:
        conn.close()


def full_build(path: Path, snap_dir: Path, **kwargs: Any) -> dict[str, Any]:
    """The fastest of REPEAT builds of a set with no earlier one (each in its own folder)."""
    runs = []
    for n in range(REPEAT):
        runs.append(snapshot(path, snap_dir / f"run-{n}", **kwargs))
        if n < REPEAT - 1:
            shutil.rmtree(snap_dir / f"run-{n}")
    best = min(runs, key=lambda r: r["seconds"])
    return {**runs[-1], "seconds": best["seconds"]}


def snapshot(path: Path, snap_dir: Path, **kwargs: Any) -> dict[str, Any]:
    conn = connect(path, readonly=True)
    try:
        seconds, result = timed(lambda: write_snapshot(conn, STUDY, snap_dir, **kwargs))
    finally:
        conn.close()
    total = sum(p.stat().st_size for p in result.path.rglob("part-*.parquet"))
    return {
        "seconds": seconds,
        "files_written": len(result.files_written),
        "files_reused": len(result.files_reused),
        "bytes_written": result.bytes_written,
        "set_bytes": total,
        "path": str(result.path),
    }


# ------------------------------------------------------------------------------ reads


def largest_form(set_dir: Path) -> str:
    forms = read_manifest(set_dir)["forms"]
    return max(forms.values(), key=lambda e: e["rows"])["file"]


def read_back(set_dir: Path) -> dict[str, float]:
    records = set_dir / "records.parquet"
    form = set_dir / largest_form(set_dir)
    return {
        "pandas_records_s": fastest(lambda: pd.read_parquet(records)),
        "pandas_records_no_raw_s": fastest(
            lambda: pd.read_parquet(records, columns=["recordId", "formKey", "dateModified"])
        ),
        "pandas_largest_form_s": fastest(lambda: pd.read_parquet(form)),
        "duckdb_group_by_form_s": fastest(
            lambda: duckdb.sql(f"SELECT formKey, count(*) FROM '{records}' GROUP BY 1").fetchall()
        ),
        "polars_records_s": fastest(lambda: pl.read_parquet(records)),
    }


# ------------------------------------------------------------------------------ settings


def compare_settings(path: Path, workdir: Path) -> dict[str, Any]:
    """Full builds of the same cache under each codec and batch size."""
    chosen = dict(writer.PARQUET_OPTIONS)
    out: dict[str, Any] = {"codecs": {}, "batches": {}}
    try:
        for name, options in CODECS.items():
            log(f"  codec {name}")
            writer.PARQUET_OPTIONS = options
            snap_dir = workdir / f"codec-{name}"
            built = full_build(path, snap_dir)
            reads = read_back(Path(built["path"]))
            out["codecs"][name] = {**built, **reads}
            shutil.rmtree(snap_dir)
        writer.PARQUET_OPTIONS = chosen
        for batch in BATCHES:
            log(f"  batch {batch}")
            snap_dir = workdir / f"batch-{batch}"
            built = full_build(path, snap_dir, batch_rows=batch)
            reads = read_back(Path(built["path"]))
            out["batches"][str(batch)] = {**built, **reads}
            shutil.rmtree(snap_dir)
    finally:
        writer.PARQUET_OPTIONS = chosen
    return out


def compare_part_size(path: Path, workdir: Path, part_rows: int) -> dict[str, Any]:
    """A set built with parts of `part_rows`, then deltas of 0.1 % random and newest edits."""
    ids = record_ids(path)
    changes = max(1, len(ids) // 1000)
    snap_dir = workdir / f"parts-{part_rows}"
    built = full_build(path, snap_dir, part_rows=part_rows)
    snap_dir = snap_dir / f"run-{REPEAT - 1}"
    rng = random.Random(part_rows)
    row: dict[str, Any] = {"full_s": built["seconds"], "files": built["files_written"]}
    for name, pick in (("random", lambda: rng.sample(ids, changes)), ("newest", None)):
        seconds = []
        for n in range(REPEAT):
            edit_records(path, pick() if pick else ids[-changes:], f"parts {n}")
            seconds.append(snapshot(path, snap_dir, part_rows=part_rows)["seconds"])
        row[f"delta_{name}_s"] = min(seconds)
    row["pandas_records_s"] = read_back(snap_dir / STUDY / "latest")["pandas_records_s"]
    shutil.rmtree(snap_dir.parent)
    return row


# ------------------------------------------------------------------------------ a size


def one_size(records: int, workdir: Path) -> dict[str, Any]:
    path = workdir / f"cache-{records}.sqlite"
    log(f"{records} records: filling the cache")
    count = build_cache(path, records)
    ids = record_ids(path)
    changes = max(1, count // 1000)
    snap_dir = workdir / f"snapshots-{records}"
    log("  full build")
    full = full_build(path, snap_dir)
    live = snap_dir / f"run-{REPEAT - 1}"
    out: dict[str, Any] = {"records": count, "changes": changes, "full": full}
    rng = random.Random(records)
    for name, pick in (
        ("delta_random", lambda: rng.sample(ids, changes)),
        ("delta_newest", lambda: ids[-changes:]),
    ):
        log(f"  {name}")
        runs = []
        for n in range(REPEAT):  # new edits each time, the same pattern
            edit_records(path, pick(), f"{name} {n}")
            runs.append(snapshot(path, live))
        best = min(runs, key=lambda r: r["seconds"])
        out[name] = {**best, "share_of_full": best["seconds"] / full["seconds"]}
    log("  reading back")
    out["reads"] = read_back(Path(out["delta_newest"]["path"]))
    shutil.rmtree(snap_dir)
    out["parts"] = {}
    for part_rows in PART_SIZES:
        log(f"  parts of {part_rows}")
        out["parts"][str(part_rows)] = compare_part_size(path, workdir, part_rows)
    out["path"] = path
    return out


def report(results: dict[str, Any]) -> None:
    print(f"snapshot sets ({results['config']})")
    for size in results["sizes"]:
        full = size["full"]
        print(f"\n{size['records']:,} records ({size['changes']} edited per delta)")
        print(
            f"  full build          {full['seconds']:7.2f} s  {full['files_written']:4d} files"
            f"  {full['set_bytes'] / 2**20:8.1f} MiB"
        )
        for name in ("delta_random", "delta_newest"):
            d = size[name]
            print(
                f"  {name:<19} {d['seconds']:7.2f} s  {d['share_of_full']:6.1%} of full;"
                f" {d['files_written']} written, {d['files_reused']} reused,"
                f" {d['bytes_written'] / 2**20:.1f} MiB written"
            )
        for name, seconds in size["reads"].items():
            print(f"  read {name:<28} {seconds:7.3f} s")
        print(f"  {'parts of':<10} {'full s':>8} {'files':>6} {'random s':>9} {'newest s':>9}")
        for name, row in size["parts"].items():
            print(
                f"  {name:<10} {row['full_s']:8.2f} {row['files']:6d}"
                f" {row['delta_random_s']:9.3f} {row['delta_newest_s']:9.3f}"
            )
    settings = results.get("settings")
    if settings:
        print(f"\nParquet settings at {results['sizes'][0]['records']:,} records")
        print(f"  {'':<20} {'write s':>8} {'MiB':>8} {'pandas s':>9} {'duckdb s':>9}")
        for group in ("codecs", "batches"):
            for name, row in settings[group].items():
                label = name if group == "codecs" else f"batch {name}"
                print(
                    f"  {label:<20} {row['seconds']:8.2f} {row['set_bytes'] / 2**20:8.1f}"
                    f" {row['pandas_records_s']:9.3f} {row['duckdb_group_by_form_s']:9.3f}"
                )


def main() -> int:
    global REPEAT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--no-settings", action="store_true", help="skip the codec table")
    parser.add_argument("--repeat", type=int, default=REPEAT, help="runs per measurement")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    REPEAT = max(1, args.repeat)
    results: dict[str, Any] = {
        "config": {
            "repeat": REPEAT,
            "part_rows": writer.PART_ROWS,
            "batch_rows": writer.BATCH_ROWS,
            "parquet": writer.PARQUET_OPTIONS,
        },
        "sizes": [],
    }
    with tempfile.TemporaryDirectory(prefix="snapshot-bench-") as tmp:
        workdir = Path(tmp)
        for records in args.records:
            size = one_size(records, workdir)
            if not args.no_settings and not results.get("settings"):
                log("  Parquet settings")
                results["settings"] = compare_settings(size["path"], workdir)
            size.pop("path")
            size["path_note"] = "temporary, removed"
            results["sizes"].append(size)
            (workdir / f"cache-{records}.sqlite").unlink()
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
