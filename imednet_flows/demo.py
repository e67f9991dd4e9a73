"""The main job, end to end, against an embedded emulator: what `make demo` runs.

Every step is a real Prefect flow run through the real SDK over real HTTP; only
the API server is local. The report at the end says where the results are.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from imednet_flows.emulator import StudySpec, running_emulator
from imednet_flows.emulator.handle import DEMO_API_KEY, DEMO_SECURITY_KEY
from imednet_flows.settings import settings


def _step(title: str) -> None:
    typer.secho(f"\n== {title}", bold=True)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    return fn(), time.perf_counter() - started


def _sync_line(result: Any) -> str:
    parts = []
    for name, c in next(iter(result.studies.values())).collections.items():
        parts.append(
            f"{name}: +{c.inserted} new, {c.updated} updated, "
            f"{c.soft_deleted} soft-deleted, {c.hard_deleted} hard-deleted"
        )
    return "\n".join(f"   {p}" for p in parts)


def run_demo(subjects: int = 60, output: str = "demo-output") -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    out = Path(output).resolve()
    cache, snapshots = out / "imednet.sqlite", out / "snapshots"
    spec = StudySpec(study_key="DEMO", subjects=subjects)
    started = time.perf_counter()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    # The demo's runs are in-process and watched live: heartbeats (which let a server spot
    # crashed deployment runs) would only add a second of shutdown wait to every run.
    with (
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        running_emulator([spec]) as server,
    ):
        emu = server.emulator
        os.environ.update(
            IMEDNET_BASE_URL=server.base_url,
            IMEDNET_API_KEY=DEMO_API_KEY,
            IMEDNET_SECURITY_KEY=DEMO_SECURITY_KEY,
        )
        typer.echo(
            f"Embedded iMednet emulator on {server.base_url}: study DEMO with "
            f"{emu.counts('DEMO')['records']} records (demo keys, loopback only)"
        )
        # Imported here: importing Prefect flows is slow and `--help` should not pay for it.
        from flows.extract_records import extract_records_by_criteria
        from flows.incremental_sync import run_incremental_sync
        from flows.open_queries import get_open_queries
        from flows.subject_data import get_all_subject_data
        from flows.upsert_records import create_or_update_records

        def sync() -> Any:
            return run_incremental_sync(
                ["DEMO"], cache_path=str(cache), snapshot_dir=str(snapshots)
            )

        _step("1. Incremental sync, first run (full)")
        first, seconds = _timed(sync)
        typer.echo(f"{_sync_line(first)}\n   {first.requests} API requests in {seconds:.1f}s")

        _step("2. Site staff change the study: edits, soft and hard deletes, new queries")
        emu.mutate("DEMO", "edit_records", n=25, seed=1)
        emu.mutate("DEMO", "soft_delete", n=3, seed=2)
        emu.mutate("DEMO", "hard_delete", n=4, seed=3)
        added = emu.mutate("DEMO", "add_queries", n=2, seed=4)
        emu.mutate(
            "DEMO",
            "add_query_comment",
            annotation_id=added["ids"][0],
            closed=True,
            comment="Value confirmed with source; closing.",
        )
        typer.echo(
            "   25 records edited, 3 soft-deleted, 4 hard-deleted, 2 queries raised "
            "(1 answered and closed)"
        )

        _step("3. Incremental sync, second run (delta + hard-delete reconcile)")
        second, seconds = _timed(sync)
        typer.echo(
            f"{_sync_line(second)}\n   {second.requests} API requests in "
            f"{seconds:.1f}s including the hard-delete search"
        )

        _step("4. Open queries")
        queries = get_open_queries("DEMO")
        typer.echo(
            f"   {len(queries.open)} open, {queries.closed} closed, "
            f"{len(queries.without_comments)} without comments, of {queries.total}"
        )

        _step("5. Extract serious adverse events (formKey==AE, aeser==Serious)")
        frame = extract_records_by_criteria(
            "DEMO",
            record_filter="formKey==AE",
            record_data_filter="aeser==Serious",
            output_dir=str(out / "extract"),
        )
        typer.echo(
            f"   {len(frame)} records x {len(frame.columns)} typed columns; "
            f"Parquet in {out / 'extract'}"
        )

        _step("6. Everything about one subject")
        subject_key = emu.rows("DEMO", "subjects")[0]["subjectKey"]
        subject = get_all_subject_data("DEMO", subject_key)
        typer.echo(
            f"   subject {subject_key}: {len(subject.visits)} visits, "
            f"{len(subject.records)} records, {len(subject.queries)} queries"
        )

        _step("7. Upsert two records and wait for the job")
        rows = _two_updates(emu.rows("DEMO", "records"), emu.rows("DEMO", "variables"))
        upsert = create_or_update_records("DEMO", rows, poll_interval=0.5)
        for batch in upsert.batches:
            typer.echo(f"   batch {batch.batch_id}: {batch.state}")

        requests = len(emu.requests())
    _report(out, cache, snapshots, requests, time.perf_counter() - started)
    return 0


def _two_updates(records: list[dict], variables: list[dict]) -> list[dict]:
    """Two vital-signs corrections in the API's POST shape (update by recordId)."""
    types = {(v["formKey"], v["variableName"]): v["variableType"] for v in variables}
    out = []
    for record in [r for r in records if r["formKey"] == "VS" and not r["deleted"]][:2]:
        name = next(k for k in record["recordData"] if types.get(("VS", k)) == "INTEGER")
        out.append({"formKey": "VS", "recordId": record["recordId"], "data": {name: 120}})
    return out


def _report(out: Path, cache: Path, snapshots: Path, requests: int, seconds: float) -> None:
    _step("Done")
    latest = snapshots / "DEMO" / "latest"
    prefect_home = settings().prefect_home or "~/.prefect"
    typer.echo(f"""   {requests} API requests, {seconds:.1f}s in all.
   SQLite cache (WAL):     {cache}
   Parquet snapshots:      {latest}/ (records, subjects, visits, queries, forms/*.parquet)

   Read the cache without the network:
     .venv/bin/python -c "from imednet_flows.cache.reader import get_cached_records as g; \\
print(g('{cache}', 'DEMO', form_key='VS').head())"
   Open the snapshots with pandas or DuckDB:
     .venv/bin/python -c "import pandas as pd; print(pd.read_parquet('{latest}/records.parquet'))"
     .venv/bin/python -c "import duckdb; print(duckdb.sql(\\"select formKey, count(*) \\
from '{latest}/records.parquet' group by 1\\"))"
   See these runs in the Prefect UI:
     PREFECT_HOME={prefect_home} .venv/bin/prefect server start   # then http://127.0.0.1:4200""")
