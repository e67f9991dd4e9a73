"""Throughput and footprint of the iMednet emulator at benchmark scale (default 200,000 records).

Why this exists: the emulator stands in for the hosted EDC in tests, demos and sync benchmarks,
so it has to be cheap enough not to distort what it measures. This script answers, in one run:

* how long a 200k-record emulator takes to come up in its own process, and how much memory it
  holds (target: RSS < 2 GiB), measured from outside via /proc so nothing in-process skews it;
* how fast the first page of `records` comes back, both from the emulator's query cache (the
  steady state of a paging client) and cold, right after a mutation invalidated that cache
  (what the first request of every sync run sees) (target: < 100 ms);
* raw HTTP paging throughput at the API maximum page size (500), i.e. the ceiling any client
  can reach against this emulator;
* how much of that ceiling the real SDK 0.5.0 reaches: `records.list()` at its default page
  size (100) vs the SDK's own Paginator + `Record.from_json` at size 500, so a sync can decide
  whether to page at 500 itself;
* how long the in-process pytest fixture (`running_emulator([BIG, SMALL])`) takes to enter.

Server-side handler time per request is taken from the emulator's own request log (admin
route), so every HTTP number can be split into "emulator" and "client + transport".

Run: `.venv/bin/python benchmarks/emulator_throughput.py [--records N] [--json]`.
It is a benchmark, not a test: it prints numbers and target verdicts and exits 0 unless
something broke.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import signal
import statistics
import sys
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
    log,
    positive,
    run_main,
    table_row,
    verdict,
)
from imednet import ImednetSDK
from imednet.core.paginator import Paginator
from imednet.models.records import Record
from imednet.utils.filters import build_filter_string

from imednet_flows.emulator import (
    DEMO_API_KEY,
    DEMO_SECURITY_KEY,
    EmulatorClient,
    StudySpec,
    running_emulator,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RSS_TARGET_MIB = 2048.0
FIRST_PAGE_TARGET_MS = 100.0
PAGE_SIZE = 500
#: Matches every row, so the filter is really evaluated on all of them (the emulator skips a
#: bare `studyKey==K` filter); this is the shape of a first incremental-sync request.
WATERMARK_FILTER = 'dateModified>"2000-01-01 00:00:00"'


# ----------------------------------------------------------------------------- measurements


def summarize_ms(samples_s: Sequence[float]) -> dict[str, float]:
    ms = sorted(s * 1000.0 for s in samples_s)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return {
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "p95_ms": p95,
        "min_ms": ms[0],
        "max_ms": ms[-1],
    }


def server_times_s(admin: EmulatorClient, path_suffix: str = "/records") -> list[float]:
    """Handler time per request (routing, list query, orjson.dumps) from the emulator's log."""
    return [
        e["finished"] - e["started"]
        for e in admin.requests()
        if e["path"].endswith(path_suffix) and e["finished"]
    ]


def timed_get(client: httpx.Client, path: str, params: dict[str, Any]) -> tuple[float, bytes]:
    """Wall time of one GET including reading the whole body, but not parsing it."""
    started = time.perf_counter()
    response = client.get(path, params=params)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"GET {path} {params} -> {response.status_code}: {response.text[:300]}")
    return elapsed, response.content


def first_page_latency(
    client: httpx.Client, admin: EmulatorClient, study: str, samples: int, cold_samples: int
) -> dict[str, Any]:
    """Warm (cached) and cold (after a cache-invalidating mutation) first-page latencies."""
    path = f"/api/v1/edc/studies/{quote(study, safe='')}/records"
    plain = {"filter": f"studyKey=={study}", "page": 0, "size": PAGE_SIZE}
    watermark = {**plain, "filter": f"studyKey=={study};{WATERMARK_FILTER}"}

    first_ever, body = timed_get(client, path, plain)  # also fills the query cache
    page_bytes = len(body)
    admin.reset_requests()
    warm = [timed_get(client, path, plain)[0] for _ in range(samples)]
    warm_server = server_times_s(admin)
    # The SDK's default page size: a ~57 KB body fits one loopback TCP segment, which is where
    # a Nagle / delayed-ACK stall would show up while 500-row pages stay fast.
    admin.reset_requests()
    small = [timed_get(client, path, {**plain, "size": 100})[0] for _ in range(samples)]
    small_server = server_times_s(admin)

    def cold(params: dict[str, Any]) -> tuple[list[float], list[float]]:
        client_s: list[float] = []
        admin.reset_requests()
        for i in range(cold_samples):
            admin.mutate(study, "edit_records", n=1, seed=i)  # bumps the table version
            client_s.append(timed_get(client, path, params)[0])
        return client_s, server_times_s(admin)

    cold_plain, cold_plain_server = cold(plain)
    cold_wm, cold_wm_server = cold(watermark)
    return {
        "page_bytes": page_bytes,
        "first_request_after_start_ms": first_ever * 1000.0,
        "warm": {**summarize_ms(warm), "server_median_ms": _median_ms(warm_server)},
        "warm_size_100": {**summarize_ms(small), "server_median_ms": _median_ms(small_server)},
        "cold": {**summarize_ms(cold_plain), "server_median_ms": _median_ms(cold_plain_server)},
        "cold_watermark_filter": {
            **summarize_ms(cold_wm),
            "server_median_ms": _median_ms(cold_wm_server),
            "filter": watermark["filter"],
        },
    }


def _median_ms(samples_s: Sequence[float]) -> float:
    return statistics.median(samples_s) * 1000.0 if samples_s else float("nan")


def throughput(
    records: int, pages: int, seconds: float, server_s: Sequence[float]
) -> dict[str, float]:
    return {
        "records": records,
        "pages": pages,
        "seconds": seconds,
        "records_per_s": records / seconds,
        "pages_per_s": pages / seconds,
        "server_s": sum(server_s),
        "server_share": sum(server_s) / seconds,
        "server_median_ms_per_page": _median_ms(server_s),
    }


def raw_paging(client: httpx.Client, admin: EmulatorClient, study: str) -> dict[str, Any]:
    """Every record at size 500 over one keep-alive connection, bodies parsed with orjson."""
    path = f"/api/v1/edc/studies/{quote(study, safe='')}/records"
    admin.reset_requests()
    gc.collect()
    started = time.perf_counter()
    page, pages, count, total_bytes, total_elements = 0, 0, 0, 0, None
    while True:
        response = client.get(
            path, params={"filter": f"studyKey=={study}", "page": page, "size": PAGE_SIZE}
        )
        response.raise_for_status()
        total_bytes += len(response.content)
        payload = orjson.loads(response.content)
        count += len(payload["data"])
        pages += 1
        pagination = payload["pagination"]
        total_elements = pagination["totalElements"]
        page += 1
        if page >= pagination["totalPages"]:
            break
    elapsed = time.perf_counter() - started
    if count != total_elements:
        raise RuntimeError(f"raw paging saw {count} records, API says {total_elements}")
    result: dict[str, Any] = throughput(count, pages, elapsed, server_times_s(admin))
    result["json_parser"] = "orjson.loads"
    result["mib_per_s"] = total_bytes / 2**20 / elapsed
    result["total_mib"] = total_bytes / 2**20
    return result


def sdk_run(
    admin: EmulatorClient, fetch: Callable[[], list[Record]], expected: int
) -> dict[str, Any]:
    """Time one SDK listing end to end (HTTP, stdlib json, pydantic) and count its pages."""
    admin.reset_requests()
    gc.collect()
    started = time.perf_counter()
    rows = fetch()
    elapsed = time.perf_counter() - started
    count = len(rows)
    del rows
    gc.collect()
    if count != expected:
        raise RuntimeError(f"SDK listing returned {count} records, expected {expected}")
    server_s = server_times_s(admin)
    return throughput(count, len(server_s), elapsed, server_s)


def sdk_comparison(
    base_url: str, admin: EmulatorClient, study: str, expected: int
) -> dict[str, Any]:
    """`records.list()` (size 100) vs the SDK's own Paginator at size 500, same client/models."""
    with ImednetSDK(api_key=DEMO_API_KEY, security_key=DEMO_SECURITY_KEY, base_url=base_url) as sdk:
        default = sdk_run(admin, lambda: sdk.records.list(study), expected)
        path = f"/api/v1/edc/studies/{quote(study, safe='')}/records"
        params = {"filter": build_filter_string({"studyKey": study})}

        def at_500() -> list[Record]:
            paginator = Paginator(sdk._client, path, params=params, page_size=PAGE_SIZE)
            return [Record.from_json(item) for item in paginator]

        large = sdk_run(admin, at_500, expected)
    default["page_size"] = 100
    large["page_size"] = PAGE_SIZE
    return {
        "default": default,
        "size_500": large,
        "ratio_500_over_default": large["records_per_s"] / default["records_per_s"],
        "json_parser": "httpx Response.json() (stdlib json), as the SDK does",
    }


def fixture_specs() -> list[StudySpec]:
    """The specs tests/conftest.py starts its session emulator with (copied if not importable)."""
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    try:
        from tests.conftest import BIG, SMALL
    except ImportError as exc:
        log(f"tests.conftest not importable ({exc}); using a copy of its BIG/SMALL specs")
        return [
            StudySpec(study_key="PHX-101", study_id=1, seed=11, subjects=520),
            StudySpec(study_key="SMALL", study_id=2, seed=22, subjects=12, sites=2),
        ]
    return [BIG, SMALL]


def fixture_startup() -> dict[str, Any]:
    """Time `running_emulator([BIG, SMALL])` entry and exit, as the session fixture pays it."""
    specs = fixture_specs()
    gc.collect()
    started = time.perf_counter()
    with running_emulator(specs):
        entered = time.perf_counter()
    stopped = time.perf_counter()
    return {
        "studies": [s.study_key for s in specs],
        "records": sum(s.record_count for s in specs),
        "enter_s": entered - started,
        "exit_s": stopped - entered,
    }


# ----------------------------------------------------------------------------------- report


def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = StudySpec.for_records(
        args.records,
        study_key=args.study,
        intervals=args.intervals,
        forms_per_interval=args.forms_per_interval,
    )
    results: dict[str, Any] = {
        "config": {
            "records_requested": args.records,
            "records_seeded": spec.record_count,
            "study": args.study,
            "intervals": args.intervals,
            "forms_per_interval": args.forms_per_interval,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        }
    }
    emulator = EmulatorProcess(args.records, args.study, args.intervals, args.forms_per_interval)
    try:
        log(f"starting emulator with {spec.record_count:,} records ...")
        emulator.start(timeout=args.start_timeout)
        results["startup"] = {**emulator.timings, "pid": emulator.pid}
        results["memory_after_seed"] = emulator.memory()
        log(f"ready at {emulator.base_url} in {emulator.timings['to_ready_s']:.2f}s")

        admin = EmulatorClient(emulator.base_url)
        with httpx.Client(
            base_url=emulator.base_url, headers=AUTH_HEADERS, timeout=120.0
        ) as client:
            log("first-page latency ...")
            results["first_page"] = first_page_latency(
                client, admin, args.study, args.samples, args.cold_samples
            )
            log("raw paging at size 500 ...")
            results["raw_paging"] = raw_paging(client, admin, args.study)
        expected = results["raw_paging"]["records"]
        log("SDK records.list() vs SDK Paginator at 500 ...")
        results["sdk"] = sdk_comparison(emulator.base_url, admin, args.study, expected)
        admin.reset_requests()  # the log is ours; do not count it as emulator footprint
        admin.close()
        results["memory_at_end"] = emulator.memory()
    finally:
        shutdown_started = time.perf_counter()
        code = emulator.stop()
        if emulator.proc is not None:
            results["shutdown"] = {
                "exit_code": code,
                "seconds": time.perf_counter() - shutdown_started,
            }
    if not args.skip_fixture:
        log("in-process fixture start-up ...")
        results["fixture"] = fixture_startup()
    return results


def render(results: dict[str, Any]) -> str:
    """A compact table: one line per number, with the target and verdict where there is one."""
    cfg, start = results["config"], results["startup"]
    m0, m1 = results["memory_after_seed"], results["memory_at_end"]
    fp, raw, sdk = results["first_page"], results["raw_paging"], results["sdk"]
    peak = max(m0["VmHWM"], m1["VmHWM"])
    warm, cold, cold_wm = fp["warm"], fp["cold"], fp["cold_watermark_filter"]
    small = fp["warm_size_100"]
    rows: list[tuple[str, str, str, str]] = [
        ("emulator start-up, spawn -> ready", f"{start['to_ready_s']:.2f} s", "", ""),
        ("  seeding (self-reported)", f"{start['seeded_in_s']:.1f} s", "", ""),
        ("  spawn -> 'listening' line", f"{start['to_listening_line_s']:.2f} s", "", ""),
        (
            "RSS after seed (VmRSS / VmHWM)",
            f"{m0['VmRSS']:,.0f} / {m0['VmHWM']:,.0f} MiB",
            "< 2048 MiB",
            verdict(m0["VmHWM"] < RSS_TARGET_MIB),
        ),
        (
            "RSS at end (VmRSS / VmHWM)",
            f"{m1['VmRSS']:,.0f} / {m1['VmHWM']:,.0f} MiB",
            "< 2048 MiB",
            verdict(peak < RSS_TARGET_MIB),
        ),
        (
            "first request after start (cold cache)",
            f"{fp['first_request_after_start_ms']:.1f} ms",
            "",
            "",
        ),
        (
            f"first page warm, median of {warm['n']} (p95)",
            f"{warm['median_ms']:.1f} ms ({warm['p95_ms']:.1f})",
            "< 100 ms",
            verdict(warm["median_ms"] < FIRST_PAGE_TARGET_MS),
        ),
        ("  server handler, median", f"{warm['server_median_ms']:.1f} ms", "", ""),
        (
            f"first page warm at size 100, median of {small['n']} (p95)",
            f"{small['median_ms']:.1f} ms ({small['p95_ms']:.1f})",
            "",
            "",
        ),
        ("  server handler, median", f"{small['server_median_ms']:.1f} ms", "", ""),
        (
            f"first page cold after mutation, median of {cold['n']} (max)",
            f"{cold['median_ms']:.1f} ms ({cold['max_ms']:.1f})",
            "< 100 ms",
            verdict(cold["median_ms"] < FIRST_PAGE_TARGET_MS),
        ),
        ("  server handler, median", f"{cold['server_median_ms']:.1f} ms", "", ""),
        (
            f"  same, dateModified filter, median of {cold_wm['n']} (max)",
            f"{cold_wm['median_ms']:.1f} ms ({cold_wm['max_ms']:.1f})",
            "< 100 ms",
            verdict(cold_wm["median_ms"] < FIRST_PAGE_TARGET_MS),
        ),
        ("  server handler, median", f"{cold_wm['server_median_ms']:.1f} ms", "", ""),
        ("page body at size 500", f"{fp['page_bytes'] / 1024:,.0f} KiB", "", ""),
        (
            f"raw httpx paging @500 ({raw['json_parser']})",
            f"{raw['records_per_s']:,.0f} rec/s",
            "",
            "",
        ),
        (
            "  pages/s, MiB/s, total",
            f"{raw['pages_per_s']:.1f} p/s, {raw['mib_per_s']:.0f} MiB/s, {raw['seconds']:.2f} s",
            "",
            "",
        ),
        (
            "  server share of wall time",
            f"{raw['server_share']:.0%} ({raw['server_median_ms_per_page']:.1f} ms/page)",
            "",
            "",
        ),
    ]
    for key, label in (("default", "SDK records.list() @100"), ("size_500", "SDK Paginator @500")):
        s = sdk[key]
        rows.append(
            (
                f"{label} + Record.from_json",
                f"{s['records_per_s']:,.0f} rec/s ({s['seconds']:.2f} s, {s['pages']} pages)",
                "",
                "",
            )
        )
        rows.append(
            (
                "  server share of wall time",
                f"{s['server_share']:.0%} ({s['server_median_ms_per_page']:.1f} ms/page)",
                "",
                "",
            )
        )
    rows.append(("SDK ratio @500 / @100", f"{sdk['ratio_500_over_default']:.2f}x", "", ""))
    if "fixture" in results:
        fx = results["fixture"]
        rows.append(
            (
                f"pytest fixture enter ({'+'.join(fx['studies'])}, {fx['records']:,} rec)",
                f"{fx['enter_s']:.2f} s (exit {fx['exit_s']:.2f} s)",
                "",
                "",
            )
        )
    if "shutdown" in results:
        sd = results["shutdown"]
        rows.append(
            ("emulator SIGTERM -> exit", f"{sd['seconds']:.2f} s (code {sd['exit_code']})", "", "")
        )

    header = ("metric", "value", "target", "")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(4)]
    title = (
        f"iMednet emulator throughput: {cfg['records_seeded']:,} records "
        f"({cfg['intervals']} intervals x {cfg['forms_per_interval']} forms), "
        f"Python {cfg['python']}, {cfg['cpus']} CPUs"
    )
    rule = "-" * (sum(widths) + 6)
    lines = [title, rule, table_row(header, widths), rule]
    lines += [table_row(r, widths) for r in rows]
    lines.append(rule)
    lines += notes(results)
    return "\n".join(lines)


def notes(results: dict[str, Any]) -> list[str]:
    """Plain-language hints for the patterns this benchmark has caught before."""
    fp = results["first_page"]
    small, warm = fp["warm_size_100"], fp["warm"]
    out: list[str] = []
    if small["median_ms"] > 20.0 and small["median_ms"] > 3 * warm["median_ms"]:
        out.append(
            f"note: a 100-row page takes {small['median_ms']:.0f} ms but a 500-row page "
            f"{warm['median_ms']:.0f} ms, while the server spends "
            f"{small['server_median_ms']:.1f} ms on it: the ~40 ms stall of Nagle + delayed "
            "ACK on responses that fit one TCP segment (server sockets without TCP_NODELAY). "
            "It also dominates the SDK default-page-size numbers."
        )
    if results.get("shutdown", {}).get("exit_code") == -signal.SIGTERM:
        out.append("note: exit code -15 is uvicorn re-raising SIGTERM after a graceful shutdown.")
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--records", type=positive, default=200_000, help="records in the study (default 200000)"
    )
    parser.add_argument("--study", default="BENCH", help="study key to seed")
    parser.add_argument("--intervals", type=int, default=8, help="visits per subject")
    parser.add_argument("--forms-per-interval", type=int, default=5, help="records per visit")
    parser.add_argument("--samples", type=int, default=20, help="warm first-page requests")
    parser.add_argument("--cold-samples", type=int, default=5, help="cold first-page requests")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait")
    parser.add_argument("--skip-fixture", action="store_true", help="skip the fixture timing")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: run(args), render, args.json)


if __name__ == "__main__":
    sys.exit(main())
