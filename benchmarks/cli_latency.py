"""How long `imednet-flows queries --study K` takes, against a plain SDK script doing the
same: list the study's queries and print the open ones.

A person runs this command and waits for it, so what counts is the whole process, start to
exit, as a shell sees it. Both are run as fresh processes, three times in a row each, against
the same emulator process, in the same run (this host is shared and noisy: only the ratio
of the medians is compared). Target: CLI / plain SDK <= 2.5 with no Prefect API configured.

    .venv/bin/python benchmarks/cli_latency.py                 # ~1 minute
    .venv/bin/python benchmarks/cli_latency.py --recorded      # also with a Prefect API
    .venv/bin/python benchmarks/cli_latency.py --json > cli.json
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _emulator_process import (
    EmulatorProcess,
    console_command,
    log,
    positive,
    run_main,
    table_row,
    verdict,
)

from imednet_flows.emulator import DEMO_API_KEY, DEMO_SECURITY_KEY

TARGET_RATIO = 2.5

#: What a user would write without this project: the SDK's own listing, the latest comment
#: (highest sequence) decides, queries without comments are neither open nor closed.
PLAIN_SDK_SCRIPT = """
import os, sys
from imednet import ImednetSDK

sdk = ImednetSDK(
    api_key=os.environ["IMEDNET_API_KEY"],
    security_key=os.environ["IMEDNET_SECURITY_KEY"],
    base_url=os.environ["IMEDNET_BASE_URL"],
)
queries = sdk.queries.list(sys.argv[1])
opened = 0
for q in queries:
    if q.query_comments and not max(q.query_comments, key=lambda c: c.sequence).closed:
        opened += 1
        print(f"{q.subject_key:<12} query {q.annotation_id:<10} {q.variable:<12} {q.description}")
print(f"{opened} open of {len(queries)}")
"""
_CLI_COUNT = re.compile(r"^(\d+) open, .* of (\d+)$", re.MULTILINE)
_PLAIN_COUNT = re.compile(r"^(\d+) open of (\d+)$", re.MULTILINE)


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{cmd[:3]} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, done.stdout, done.stderr


def consecutive(
    cmd: list[str], env: dict[str, str], cwd: Path, repeat: int, what: str
) -> dict[str, Any]:
    """`repeat` calls in a row after one untimed call (which warms the page cache for the
    imports, as any second call of a day finds it)."""
    log(f"{what}: 1 warm-up + {repeat} timed calls ...")
    timed(cmd, env, cwd)
    runs = [timed(cmd, env, cwd) for _ in range(repeat)]
    seconds = [r[0] for r in runs]
    return {
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "stdout": runs[-1][1],
        "stderr": runs[-1][2],
    }


def import_seconds(module: str, env: dict[str, str], cwd: Path, repeat: int) -> float:
    """Median wall time of `python -c "import <module>"`: what a process pays before work."""
    cmd = [sys.executable, "-c", f"import {module}"]
    timed(cmd, env, cwd)
    return statistics.median(timed(cmd, env, cwd)[0] for _ in range(repeat))


def open_count(pattern: re.Pattern[str], stdout: str) -> tuple[int, int]:
    found = pattern.search(stdout)
    if found is None:
        raise RuntimeError(f"no count line in the output:\n{stdout[-500:]}")
    return int(found.group(1)), int(found.group(2))


@contextmanager
def prefect_api(home: Path) -> Iterator[str]:
    """A temporary Prefect API in this process, for the recorded calls."""
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    script = work / "plain_sdk_open_queries.py"
    script.write_text(PLAIN_SDK_SCRIPT, encoding="utf-8")
    emulator = EmulatorProcess(args.records, args.study, args.intervals, args.forms_per_interval)
    results: dict[str, Any] = {
        "config": {
            "records": args.records,
            "study": args.study,
            "repeat": args.repeat,
            "cpus": os.cpu_count(),
        }
    }
    try:
        log(f"starting emulator with ~{args.records:,} records ...")
        emulator.start(timeout=args.start_timeout)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            IMEDNET_BASE_URL=emulator.base_url,
            IMEDNET_API_KEY=DEMO_API_KEY,
            IMEDNET_SECURITY_KEY=DEMO_SECURITY_KEY,
            # an empty home: no profile, so no Prefect API is configured
            PREFECT_HOME=str(work / "prefect-home"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        cli = [console_command(), "queries", "--study", args.study]
        plain = [sys.executable, str(script), args.study]
        results["plain_sdk"] = consecutive(plain, env, work, args.repeat, "plain SDK script")
        results["cli"] = consecutive(cli, env, work, args.repeat, "imednet-flows queries")
        if "not recorded in Prefect" not in results["cli"]["stderr"]:
            raise RuntimeError("the CLI did not run directly:\n" + results["cli"]["stderr"][-800:])
        cli_counts = open_count(_CLI_COUNT, results["cli"]["stdout"])
        plain_counts = open_count(_PLAIN_COUNT, results["plain_sdk"]["stdout"])
        if cli_counts != plain_counts:
            raise RuntimeError(f"CLI says {cli_counts}, plain SDK {plain_counts} (open, total)")
        results["open_queries"] = {"open": cli_counts[0], "total": cli_counts[1]}
        log("imports alone ...")
        results["imports"] = {
            m: import_seconds(m, env, work, args.repeat) for m in ("imednet", "prefect")
        }
        ratio = results["cli"]["median_s"] / results["plain_sdk"]["median_s"]
        results["ratio"] = {"value": ratio, "target": TARGET_RATIO, "ok": ratio <= TARGET_RATIO}
        if args.recorded:
            log("starting a temporary Prefect API for the recorded calls ...")
            with prefect_api(work / "prefect-api-home") as url:
                recorded_env = {**env, "PREFECT_API_URL": url}
                results["cli_recorded"] = consecutive(
                    cli, recorded_env, work, args.repeat, "imednet-flows queries, recorded"
                )
    finally:
        emulator.stop()
        shutil.rmtree(work, ignore_errors=True)
    for run_ in ("plain_sdk", "cli", "cli_recorded"):
        if run_ in results:
            del results[run_]["stdout"], results[run_]["stderr"]
    return results


def render(results: dict[str, Any]) -> str:
    widths = (46, 22, 8, 6)
    plain, cli, ratio = results["plain_sdk"], results["cli"], results["ratio"]
    n = results["config"]["repeat"]

    def runs(r: dict[str, Any]) -> str:
        return ", ".join(f"{s:.2f}" for s in r["seconds"])

    rows = [
        ("what", "seconds", "target", ""),
        (
            f"open queries: {results['open_queries']['open']} of "
            f"{results['open_queries']['total']}",
            "",
            "",
            "",
        ),
        (f"plain SDK script, median of {n}", f"{plain['median_s']:.2f}", "", ""),
        ("  each call", runs(plain), "", ""),
        (f"imednet-flows queries (direct), median of {n}", f"{cli['median_s']:.2f}", "", ""),
        ("  each call", runs(cli), "", ""),
        (
            "CLI / plain SDK",
            f"{ratio['value']:.2f}",
            f"<= {ratio['target']:g}",
            verdict(ratio["ok"]),
        ),
        ("python -c 'import imednet', median", f"{results['imports']['imednet']:.2f}", "", ""),
        ("python -c 'import prefect', median", f"{results['imports']['prefect']:.2f}", "", ""),
    ]
    if "cli_recorded" in results:
        rec = results["cli_recorded"]
        rows += [
            (f"recorded in a Prefect API, median of {n}", f"{rec['median_s']:.2f}", "", ""),
            ("  each call", runs(rec), "", ""),
            ("  recorded / plain SDK", f"{rec['median_s'] / plain['median_s']:.2f}", "", ""),
        ]
    return "\n".join(table_row(r, widths) for r in rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=positive, default=20_000, help="records in the study")
    parser.add_argument("--study", default="BENCH-CLI")
    parser.add_argument("--intervals", type=positive, default=8)
    parser.add_argument("--forms-per-interval", type=positive, default=5)
    parser.add_argument("--repeat", type=positive, default=3, help="timed calls of each")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument(
        "--recorded", action="store_true", help="also time the CLI with a Prefect API"
    )
    parser.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: run(args), render, args.json)


if __name__ == "__main__":
    sys.exit(main())
