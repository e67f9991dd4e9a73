"""The main job, end to end, against an embedded emulator: what `make demo` runs.

Every step is a real Prefect flow run through the real SDK over real HTTP; only
the API server is local. After each sync it shows what a person checks: which collections
changed and by how much, what the snapshot wrote and what it took over from the previous
set, and the audit trail the staff's edits left. The report at the end says where the
results are.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from imednet_flows import project
from imednet_flows.emulator import StudySpec, running_emulator
from imednet_flows.emulator.handle import DEMO_API_KEY, DEMO_SECURITY_KEY
from imednet_flows.settings import settings

if TYPE_CHECKING:
    from imednet_flows.cache.results import CollectionResult, StudyResult
    from imednet_flows.cache.snapshots import SnapshotResult
    from imednet_flows.emulator.handle import Emulator

STUDY = "DEMO"
EDIT_REASON = "Corrected per source document"


@dataclass(frozen=True)
class DemoPaths:
    out: Path
    cache: Path
    snapshots: Path

    @classmethod
    def under(cls, output: str) -> DemoPaths:
        out = Path(output).resolve()
        return cls(out, out / "imednet.sqlite", out / "snapshots")


def _step(title: str) -> None:
    typer.secho(f"\n== {title}", bold=True)


def _say(lines: list[str]) -> None:
    for line in lines:
        typer.echo(f"   {line}")


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    return fn(), time.perf_counter() - started


def change_counts(c: CollectionResult) -> str:
    """What a run did to one collection, naming only what happened."""
    parts = [f"+{c.inserted} new"] if c.inserted else []
    if c.updated:
        soft = f" ({c.soft_deleted} of them soft-deleted)" if c.soft_deleted else ""
        parts.append(f"{c.updated} updated{soft}")
    if c.hard_deleted:
        parts.append(f"{c.hard_deleted} hard-deleted")
    return ", ".join(parts)


def change_lines(study: StudyResult) -> list[str]:
    """The collections a run changed, with their counts; the unchanged ones are only counted,
    since a reader looks for what moved. A skipped collection is named with the API's reason,
    so a gap in the data is never silent."""
    changed = study.changed_collections
    unchanged = len(study.collections) - len(changed)
    head = f"{len(changed)} of {len(study.collections)} collections changed" + (
        f" ({unchanged} unchanged):" if unchanged else ":"
    )
    width = max((len(name) for name in changed), default=0)
    lines = [f"  {name:<{width}}  {change_counts(study.collections[name])}" for name in changed]
    skipped = [f"  {name} skipped: {why}" for name, why in study.skipped_collections.items()]
    return [head, *lines, *skipped]


def snapshot_line(snapshot: SnapshotResult | None) -> str:
    """What a run's snapshot set wrote and what it linked from the previous set."""
    if snapshot is None:
        return "snapshot: none written (the cache did not change)"
    megabytes = snapshot.bytes_written / 1_000_000
    how = f", every table rebuilt ({snapshot.rebuilt})" if snapshot.rebuilt else ""
    return (
        f"snapshot {snapshot.name}: {len(snapshot.files_written)} Parquet part(s) written "
        f"({_tables(snapshot.files_written)}), {len(snapshot.files_reused)} reused from the "
        f"previous set; {megabytes:.2f} MB in the set{how}"
    )


def _tables(parts: list[str]) -> str:
    """``records.parquet/part-00000.parquet`` -> ``records``; forms counted, not listed."""
    names = sorted({part.rsplit("/", 1)[0].removesuffix(".parquet") for part in parts})
    collections = [n for n in names if not n.startswith("forms/")]
    forms = len(names) - len(collections)
    listed = collections + ([f"{forms} form table(s)"] if forms else [])
    return ", ".join(listed) or "nothing"


def history_lines(revisions: list[dict[str, Any]]) -> list[str]:
    """A record's audit trail, one line per revision: when, who, why."""
    lines = []
    for rev in revisions:
        why = rev.get("reasonForChange") or ("entered" if rev.get("recordRevision") == 1 else "")
        deleted = ", deleted" if rev.get("deleted") else ""
        lines.append(
            f"  rev {rev.get('recordRevision')}  {rev.get('dateCreated')}  "
            f"{rev.get('user')} ({rev.get('role')})  {why}{deleted}"
        )
    return lines


@contextmanager
def _demo_environment(spec: StudySpec) -> Iterator[Emulator]:
    """The embedded emulator, with the flows pointed at it by the environment as an operator
    would; Prefect's flow heartbeats off for the demo's in-process runs."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    # The demo's runs are in-process and watched live: heartbeats (which let a server spot
    # crashed deployment runs) would only add a second of shutdown wait to every run.
    with (
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        running_emulator([spec]) as server,
    ):
        os.environ.update(
            IMEDNET_BASE_URL=server.base_url,
            IMEDNET_API_KEY=DEMO_API_KEY,
            IMEDNET_SECURITY_KEY=DEMO_SECURITY_KEY,
        )
        typer.echo(
            f"Embedded iMednet emulator on {server.base_url}: study {STUDY} with "
            f"{server.emulator.counts(STUDY)['records']} records (demo keys, loopback only)"
        )
        yield server.emulator


def run_demo(subjects: int = 60, output: str = "demo-output") -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    paths = DemoPaths.under(output)
    started = time.perf_counter()
    with _demo_environment(StudySpec(study_key=STUDY, subjects=subjects)) as emu:
        _sync_step("1. Incremental sync, first run (full)", paths)
        edited = _change_the_study(emu)
        _sync_step("3. Incremental sync, second run (delta + hard-delete reconcile)", paths)
        _history_step(paths, edited)
        _open_queries_step()
        _extract_step(paths)
        _subject_step(emu)
        _upsert_step(emu)
        requests = len(emu.requests())
    _report(paths, requests, time.perf_counter() - started)
    return 0


def _sync_step(title: str, paths: DemoPaths) -> None:
    # Loaded here: importing Prefect flows is slow and `--help` should not pay for it.
    run_incremental_sync = project.load("flows.incremental_sync:run_incremental_sync")

    _step(title)
    result, seconds = _timed(
        lambda: run_incremental_sync(
            [STUDY], cache_path=str(paths.cache), snapshot_dir=str(paths.snapshots)
        )
    )
    _say(change_lines(result.studies[STUDY]))
    _say([snapshot_line(result.snapshots.get(STUDY))])
    _say([f"{result.requests} API requests in {seconds:.1f}s"])


def _change_the_study(emu: Emulator) -> int:
    """Site staff at work; returns a record they edited that is still there."""
    _step("2. Site staff change the study: edits, soft and hard deletes, new queries")
    edited = emu.mutate(STUDY, "edit_records", n=25, seed=1, reason=EDIT_REASON)["ids"]
    soft = emu.mutate(STUDY, "soft_delete", n=3, seed=2)["ids"]
    hard = emu.mutate(STUDY, "hard_delete", n=4, seed=3)["ids"]
    added = emu.mutate(STUDY, "add_queries", n=2, seed=4)
    emu.mutate(
        STUDY,
        "add_query_comment",
        annotation_id=added["ids"][0],
        closed=True,
        comment="Value confirmed with source; closing.",
    )
    _say(
        [
            f'25 records edited ("{EDIT_REASON}"), 3 soft-deleted, 4 hard-deleted, '
            "2 queries raised (1 answered and closed)"
        ]
    )
    gone = set(soft) | set(hard)
    return next((rid for rid in edited if rid not in gone), edited[0])


def _history_step(paths: DemoPaths, record_id: int) -> None:
    from imednet_flows.cache.reader import record_history

    revisions = record_history(paths.cache, STUDY, record_id, as_dataframe=False)
    assert isinstance(revisions, list)
    _say([f"the revisions of edited record {record_id}, from the cache (record_history):"])
    _say(history_lines(revisions))


def _open_queries_step() -> None:
    get_open_queries = project.load("flows.open_queries:get_open_queries")

    _step("4. Open queries")
    queries = get_open_queries(STUDY)
    _say(
        [
            f"{len(queries.open)} open, {queries.closed} closed, "
            f"{len(queries.without_comments)} without comments, of {queries.total}"
        ]
    )


def _extract_step(paths: DemoPaths) -> None:
    extract_records_by_criteria = project.load("flows.extract_records:extract_records_by_criteria")

    _step("5. Extract serious adverse events (formKey==AE, aeser==Serious)")
    frame = extract_records_by_criteria(
        STUDY,
        record_filter="formKey==AE",
        record_data_filter="aeser==Serious",
        output_dir=str(paths.out / "extract"),
    )
    _say(
        [
            f"{len(frame)} records x {len(frame.columns)} typed columns; "
            f"Parquet in {paths.out / 'extract'}"
        ]
    )


def _subject_step(emu: Emulator) -> None:
    get_all_subject_data = project.load("flows.subject_data:get_all_subject_data")

    _step("6. Everything about one subject")
    subject_key = emu.rows(STUDY, "subjects")[0]["subjectKey"]
    subject = get_all_subject_data(STUDY, subject_key)
    _say(
        [
            f"subject {subject_key}: {len(subject.visits)} visits, "
            f"{len(subject.records)} records, {len(subject.queries)} queries"
        ]
    )


def _upsert_step(emu: Emulator) -> None:
    create_or_update_records = project.load("flows.upsert_records:create_or_update_records")

    _step("7. Upsert two records and wait for the job")
    rows = _two_updates(emu.rows(STUDY, "records"), emu.rows(STUDY, "variables"))
    upsert = create_or_update_records(STUDY, rows, poll_interval=0.5)
    _say([f"batch {batch.batch_id}: {batch.state}" for batch in upsert.batches])


def _two_updates(records: list[dict], variables: list[dict]) -> list[dict]:
    """Two vital-signs corrections in the API's POST shape (update by recordId)."""
    types = {(v["formKey"], v["variableName"]): v["variableType"] for v in variables}
    out = []
    for record in [r for r in records if r["formKey"] == "VS" and not r["deleted"]][:2]:
        name = next(k for k in record["recordData"] if types.get(("VS", k)) == "INTEGER")
        out.append({"formKey": "VS", "recordId": record["recordId"], "data": {name: 120}})
    return out


def _report(paths: DemoPaths, requests: int, seconds: float) -> None:
    _step("Done")
    cache = paths.cache
    latest = paths.snapshots / STUDY / "latest"
    prefect_home = settings().prefect_home or "~/.prefect"
    typer.echo(f"""   {requests} API requests, {seconds:.1f}s in all.
   SQLite cache (WAL):     {cache}
   Parquet snapshots:      {latest}/ (one table per collection, e.g. records.parquet,
                           recordRevisions.parquet, and forms/<form key>.parquet)

   Read the cache without the network:
     .venv/bin/python -c "from imednet_flows.cache.reader import get_cached_records as g; \\
print(g('{cache}', '{STUDY}', form_key='VS').head())"
   Open the snapshots with pandas or DuckDB:
     .venv/bin/python -c "import pandas as pd; print(pd.read_parquet('{latest}/records.parquet'))"
     .venv/bin/python -c "import duckdb; print(duckdb.sql(\\"select formKey, count(*) \\
from '{latest}/records.parquet' group by 1\\"))"
   See these runs in the Prefect UI:
     PREFECT_HOME={prefect_home} .venv/bin/prefect server start   # then http://127.0.0.1:4200""")
