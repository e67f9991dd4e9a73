"""The `imednet-flows` command: one Typer app for every way of running the project."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from imednet_flows import cli_progress, project
from imednet_flows.emulator import (
    DEMO_API_KEY,
    DEMO_SECURITY_KEY,
    Emulator,
    EmulatorConfig,
    EmulatorServer,
    StudySpec,
)
from imednet_flows.progress import upsert_key

if TYPE_CHECKING:
    from imednet_flows.recording import Recording

T = TypeVar("T")

app = typer.Typer(
    name="imednet-flows",
    help="Prefect pipelines for the iMednet EDC API, and a local emulator of that API.\n\n"
    "Recorded in Prefect or not: extract, subject and queries are flow runs recorded in "
    "Prefect when a Prefect API is configured (PREFECT_API_URL), and otherwise run the same "
    "code directly, unrecorded and without Prefect's start-up; sync and upsert are always "
    "recorded flow runs; studies and subjects are lookups, never recorded. These commands "
    "say which on stderr.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
_options: dict[str, bool | None] = {"debug": False, "record": None}


@app.callback()
def _main_options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks when something fails.")
    ] = False,
    record: Annotated[
        bool | None,
        typer.Option(
            "--record/--no-record",
            help="Record extract, subject and queries as Prefect flow runs, or run their "
            "code directly without Prefect. Default: recorded exactly when a Prefect API is "
            "configured (PREFECT_API_URL in the environment or the active Prefect profile). "
            "--record without one starts a temporary local Prefect server (seconds).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Options for every command, kept for the command that runs next."""
    _options["debug"] = debug
    _options["record"] = record


@app.command()
def emulator(
    host: Annotated[
        str,
        typer.Option(help="Interface to bind; anything but loopback needs --allow-remote."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one.")] = 0,
    api_key: Annotated[str, typer.Option(help="x-api-key the emulator accepts.")] = DEMO_API_KEY,
    security_key: Annotated[
        str, typer.Option(help="x-imn-security-key the emulator accepts.")
    ] = DEMO_SECURITY_KEY,
    study: Annotated[
        list[str], typer.Option(help="Study key to seed; repeat for several studies.")
    ] = ["DEMO"],  # noqa: B006 - Typer reads list defaults, it never mutates them
    subjects: Annotated[int, typer.Option(min=1, help="Subjects per study.")] = 50,
    intervals: Annotated[int, typer.Option(min=1, help="Visits per subject.")] = 4,
    forms_per_interval: Annotated[int, typer.Option(min=1, help="Records per visit.")] = 3,
    records: Annotated[
        int, typer.Option(min=0, help="Target records per study; overrides --subjects.")
    ] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the generated data.")] = 1,
    job_delay: Annotated[
        float, typer.Option(min=0, max=3600, help="Seconds from POST until a job finishes.")
    ] = 1.0,
    allow_remote: Annotated[
        bool,
        typer.Option(
            help="Allow a --host other than loopback. The admin routes have no key: anyone "
            "who reaches the port can change the data."
        ),
    ] = False,
) -> None:
    """Serve a seeded iMednet API on loopback until Ctrl-C or SIGTERM."""
    from imednet_flows.emulator.server import remote_bind_warning

    warning = remote_bind_warning(host)
    if warning is not None:
        if not allow_remote:
            raise typer.BadParameter(
                f"{host!r} is not a loopback address, and the emulator's admin routes "
                "(/_emulator/...) have no authentication: anyone on the network could change "
                "its data. Use 127.0.0.1, or add --allow-remote if you really mean it.",
                param_hint="--host",
            )
        typer.secho(warning, err=True, fg=typer.colors.YELLOW)
    if len(set(study)) != len(study):
        raise typer.BadParameter("each study key may be given once", param_hint="--study")
    specs = []
    for n, key in enumerate(study, start=1):
        shape = dict(
            study_key=key,
            study_id=n,
            seed=seed + n - 1,
            intervals=intervals,
            forms_per_interval=forms_per_interval,
        )
        specs.append(
            StudySpec.for_records(records, **shape)
            if records
            else StudySpec(subjects=subjects, **shape)
        )
    started = time.perf_counter()
    try:
        config = EmulatorConfig(api_key=api_key, security_key=security_key, job_delay=job_delay)
        handle = Emulator(specs, config)
    except ValueError as exc:
        raise _fail(exc) from None
    server = EmulatorServer(handle, host, port, warn_remote=False)  # warned above
    counts = {key: handle.counts(key) for key in handle.study_keys}
    typer.echo(
        f"iMednet emulator listening on {server.base_url} "
        f"(seeded in {time.perf_counter() - started:.1f}s)"
    )
    for key, c in counts.items():
        typer.echo(
            f"  study {key}: {c['subjects']} subjects, {c['visits']} visits, "
            f"{c['records']} records, {c['queries']} queries"
        )
    typer.echo(f"  export IMEDNET_BASE_URL={server.base_url}")
    if api_key == DEMO_API_KEY and security_key == DEMO_SECURITY_KEY:
        typer.echo(
            f"  export IMEDNET_API_KEY={DEMO_API_KEY} IMEDNET_SECURITY_KEY={DEMO_SECURITY_KEY}"
        )
    typer.echo(f"  admin (not part of the API): {server.base_url}/_emulator/health; Ctrl-C to stop")
    server.serve_forever()


EXIT_FAILED = 1
EXIT_SKIPPED = 75  # EX_TEMPFAIL: another sync held the lock; try again later

cache_app = typer.Typer(
    help="Inspect and export the local cache (no network).", no_args_is_help=True
)
app.add_typer(cache_app, name="cache")

CachePath = Annotated[str, typer.Option("--cache", help="SQLite cache file.")]
StudyOpt = Annotated[str, typer.Option("--study", help="Study key (case-sensitive).")]


def _fail(exc: BaseException, code: int = EXIT_FAILED) -> typer.Exit:
    """One line that says what failed and what to do; the traceback only with --debug."""
    if _options["debug"]:
        traceback.print_exception(exc)
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


class _WithoutTraceback(logging.Formatter):
    """Formats a record as the wrapped formatter would, minus traceback and stack. Works on
    a copy: other handlers of the same record (the Prefect API's) keep the traceback."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.exc_text or record.stack_info):
            return self.inner.format(record)
        bare = logging.makeLogRecord(record.__dict__)
        bare.exc_info = bare.exc_text = bare.stack_info = None
        return self.inner.format(bare)


def _flow_console() -> None:
    """Before running flows from a terminal: Prefect's console log shows no tracebacks
    (the failure is said once, at the end) unless --debug; the runs' stored logs keep them."""
    if _options["debug"]:
        return
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not isinstance(
            handler.formatter, _WithoutTraceback
        ):
            handler.setFormatter(_WithoutTraceback(handler.formatter or logging.Formatter()))


def _say(message: str) -> None:
    """Notes about the run (recorded or not) go to stderr: stdout keeps results. Written to
    whatever `sys.stderr` is now: while progress bars show, that is their proxy, which
    prints the note above them (click would write past it, into the bars)."""
    print(message, file=sys.stderr, flush=True)


def _recording(lookup: bool = False, always: str | None = None) -> Recording:
    """Decide and say whether this run is recorded in Prefect. `always` names a command
    that only runs as a flow; a lookup never does."""
    from imednet_flows.recording import Recording, decide

    choice = _options["record"]
    if lookup:
        _say("not recorded in Prefect: a lookup, not a flow run")
        return Recording(as_flow=False, api_url=None)
    if always is not None:
        if choice is False:
            raise typer.BadParameter(
                f"{always} always runs as a recorded Prefect flow; drop --no-record",
                param_hint="--no-record",
            )
        choice = True
    mode = decide(choice)
    _say(mode.announcement())
    return mode


def _run_flow(flow_fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a flow in this process, say which flow run recorded it, and return its result
    (raising its exception if it failed)."""
    _flow_console()  # a no-op when the command has set it up already
    from prefect.utilities.asyncutils import run_coro_as_sync
    from prefect.utilities.urls import url_for

    state = flow_fn(*args, return_state=True, **kwargs)  # type: ignore[call-arg]
    if inspect.isawaitable(state):  # an async flow (the sync is one)
        state = run_coro_as_sync(state)
    run_id = state.state_details.flow_run_id
    url = url_for("flow-run", obj_id=run_id) if run_id else None
    _say(f"flow run {run_id} {state.name.lower()}" + (f": {url}" if url else ""))
    return state.result()  # type: ignore[no-any-return]


def _recorded_or_direct(flow: str, plain: str, *args: Any) -> Any:
    """Run the flow `flow` ("module:name") recorded in Prefect when this run is recorded,
    else the plain function `plain` it wraps, called with a `submit` and the same arguments:
    one code path either way. Each is imported only when chosen, since importing Prefect
    flows is slow and a direct run should not pay for it."""
    if _recording().as_flow:
        return _run_flow(project.load(flow), *args)
    from imednet_flows import direct

    module, name = plain.split(":")
    with direct.session(_say) as (_client, submit):
        return getattr(importlib.import_module(module), name)(submit, *args)


def _project(target: str | None = None) -> Any:
    """`project.load(target)` (the project's folder when no target) for a command that
    needs the project: none found is one line that says what to do, never a traceback."""
    try:
        return project.load(target) if target else project.root()
    except project.ProjectNotFound as exc:
        raise _fail(exc) from None


def _study_keys(keys: list[str]) -> list[str]:
    """Study keys as given, refusing blanks before any request (an empty key would ask the
    API for /studies//forms)."""
    for key in keys:
        if not key.strip():
            raise typer.BadParameter(
                "a study key is empty; give it as iMednet shows it, e.g. --study PHX-101",
                param_hint="--study",
            )
    return keys


def _cache_file(path: str, must_exist: bool = False) -> str:
    from imednet_flows.cache.db import CacheError, check_cache_path

    try:
        checked = check_cache_path(path)
    except CacheError as exc:
        raise typer.BadParameter(str(exc), param_hint="--cache") from None
    if must_exist and not checked.is_file():
        raise _fail(FileNotFoundError(f"no cache at {checked}; run the sync first to create it"))
    return path


@app.command()
def sync(
    study: Annotated[
        list[str] | None, typer.Option("--study", help="Study key; repeat for several.")
    ] = None,
    all_studies: Annotated[
        bool, typer.Option(help="Every study the API key can see, listed again on each run.")
    ] = False,
    prune_missing_studies: Annotated[
        bool,
        typer.Option(
            help="With --all-studies: delete from the cache studies the API no longer lists."
        ),
    ] = False,
    cache: CachePath = "imednet-cache/imednet.sqlite",
    snapshots: Annotated[
        str, typer.Option(help="Parquet snapshot folder.")
    ] = "imednet-cache/snapshots",
    full_refresh: Annotated[bool, typer.Option(help="Re-download everything.")] = False,
    lock_timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for the lock.")
    ] = 600.0,
    fail_if_locked: Annotated[
        bool, typer.Option(help="Fail instead of skipping when locked.")
    ] = False,
    overlap: Annotated[float, typer.Option(min=0, help="Watermark overlap, seconds.")] = 30.0,
) -> None:
    """Run the incremental sync once (exit 75 if another sync held the lock).

    Always a recorded Prefect flow run (with no Prefect API configured, a temporary local
    server starts first). Pages fetched show as progress bars on a terminal, as plain lines
    otherwise.
    """
    if all_studies == bool(study):
        raise typer.BadParameter(
            "give --study KEY (repeatable) or --all-studies, not both", param_hint="--study"
        )
    keys = ["*"] if all_studies else _study_keys(study or [])
    _cache_file(cache)
    _recording(always="sync")
    incremental_sync = _project("flows.incremental_sync:incremental_sync")
    _flow_console()  # before the bars, which print Prefect's log lines above themselves
    try:
        with cli_progress.shown():
            result = _run_flow(
                incremental_sync,
                keys,
                cache_path=cache,
                snapshot_dir=snapshots,
                full_refresh=full_refresh,
                lock_timeout=lock_timeout,
                on_lock_timeout="fail" if fail_if_locked else "skip",
                overlap_seconds=overlap,
                prune_missing_studies=prune_missing_studies,
            )
    except Exception as exc:
        raise _fail(exc) from None
    if result.skipped:
        typer.echo(f"skipped: {result.reason}")
        raise typer.Exit(EXIT_SKIPPED)
    for key, study_result in result.studies.items():
        parts = [
            f"{name} +{c.inserted} ~{c.updated} -{c.hard_deleted}"
            for name, c in study_result.collections.items()
            if c.changed
        ]
        skipped = [f"{name} SKIPPED" for name in study_result.skipped_collections]
        summary = ", ".join([*parts, *skipped]) or "no changes"
        typer.echo(f"{key}: {summary} ({study_result.requests} requests)")
    for key in result.missing_studies:
        kept = "pruned from the cache" if key in result.pruned_studies else "kept in the cache"
        typer.echo(f"{key}: no longer listed by the API ({kept})")
    typer.echo(f"{result.requests} requests in {result.seconds:.1f}s; cache {cache}")


@cache_app.command("status")
def cache_status(
    cache: CachePath = "imednet-cache/imednet.sqlite",
    study: Annotated[str | None, typer.Option(help="Only this study.")] = None,
) -> None:
    """Watermarks, last successful sync and row counts per study and entity."""
    from imednet_flows.cache.reader import sync_status

    _cache_file(cache, must_exist=True)
    try:
        rows = sync_status(cache, study)
    except Exception as exc:
        raise _fail(exc) from None
    if not rows:
        which = f"study {study}" if study else "any study"
        typer.echo(f"the cache {cache} holds no synced data for {which} yet")
        return
    typer.echo(f"{'study':<16}{'entity':<10}{'rows':>8}  {'watermark':<20} last success")
    for row in rows:
        typer.echo(
            f"{row.study_key:<16}{row.entity:<10}{row.row_count:>8}  "
            f"{row.watermark or '-':<20} {row.last_success or '-'}"
        )


@cache_app.command("export")
def cache_export(
    study: StudyOpt,
    out: Annotated[str, typer.Option(help="Output file: .parquet or .csv")],
    cache: CachePath = "imednet-cache/imednet.sqlite",
    form: Annotated[str | None, typer.Option(help="Only this form (typed columns).")] = None,
    include_deleted: Annotated[bool, typer.Option(help="Keep soft-deleted records.")] = False,
) -> None:
    """Write cached records to Parquet or CSV without touching the network."""
    from imednet_flows.cache.reader import get_cached_records

    _study_keys([study])
    _cache_file(cache, must_exist=True)
    try:
        frame = get_cached_records(cache, study, form_key=form, include_deleted=include_deleted)
        if out.endswith(".csv"):
            frame.to_csv(out, index=False)
        else:
            frame.to_parquet(out, index=False)
    except Exception as exc:
        raise _fail(exc) from None
    typer.echo(f"{len(frame)} records of {study} written to {out}")


def _echo_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


@app.command()
def extract(
    study: StudyOpt,
    record_filter: Annotated[str | None, typer.Option(help="Filter on records.")] = None,
    subject_filter: Annotated[str | None, typer.Option(help="Filter on subjects.")] = None,
    visit_filter: Annotated[str | None, typer.Option(help="Filter on visits.")] = None,
    record_data_filter: Annotated[str | None, typer.Option(help="Filter on recordData.")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Write one Parquet file per form.")] = None,
) -> None:
    """Records matching filters in the API's grammar, e.g. --record-filter 'formKey==AE'.

    Recorded in Prefect as an extract-records-by-criteria flow run when a Prefect API is
    configured; otherwise the flow's code runs directly, unrecorded (--record/--no-record
    before the command choose). Pages fetched show as progress bars on a terminal, as plain
    lines otherwise.
    """
    _study_keys([study])
    from imednet_flows.extraction import Criteria

    try:
        criteria = Criteria.parsed(record_filter, subject_filter, visit_filter, record_data_filter)
        mode = _recording()
        if mode.as_flow:
            _flow_console()  # before the bars, which print Prefect's log lines above themselves
        with cli_progress.shown():
            if mode.as_flow:
                frame = _run_flow(
                    project.load("flows.extract_records:extract_records_by_criteria"),
                    study,
                    record_filter=record_filter,
                    subject_filter=subject_filter,
                    visit_filter=visit_filter,
                    record_data_filter=record_data_filter,
                    output_dir=output_dir,
                )
            else:
                from imednet_flows import direct
                from imednet_flows.extraction import fetch_records, records_frame, write_form_files

                with direct.session(_say) as (_client, submit):
                    found = fetch_records(submit, study, criteria)
                frame = records_frame(found)
                if output_dir:
                    write_form_files(found.records, found.variables, Path(output_dir))
    except Exception as exc:
        raise _fail(exc) from None
    typer.echo(frame.to_string(max_rows=20, max_cols=12))
    typer.echo(f"{len(frame)} records")
    if output_dir:
        typer.echo(f"{frame['formKey'].nunique()} Parquet file(s), one per form, in {output_dir}")


@app.command()
def studies() -> None:
    """The studies these API keys can see: key, id and name.

    A lookup: never recorded in Prefect.
    """
    from imednet_flows import direct
    from imednet_flows.edc.paging import list_studies

    _recording(lookup=True)
    try:
        with direct.session(_say) as (client, _submit):
            rows = list_studies(client)
    except Exception as exc:
        raise _fail(exc) from None
    typer.echo(f"{'study':<16} {'id':>8}  name")
    for row in rows:
        typer.echo(
            f"{row.get('studyKey') or '':<16} {row.get('studyId') or '':>8}  "
            f"{row.get('studyName') or ''}"
        )
    typer.echo(f"{len(rows)} study(ies)")


@app.command()
def subjects(
    study: StudyOpt,
    filters: Annotated[
        str | None,
        typer.Option("--filter", help="Filter on subjects, e.g. 'siteName==Chicago'."),
    ] = None,
) -> None:
    """A study's subject keys with site and status, to find the key `subject` needs.

    A lookup: never recorded in Prefect. Soft-deleted subjects are listed and marked.
    """
    _study_keys([study])
    from imednet_flows import direct
    from imednet_flows.filter_syntax import dnf

    try:
        dnf(filters)
        _recording(lookup=True)
        with direct.session(_say) as (_client, submit):
            rows = submit("subjects", study, filter_text=filters).result()
    except Exception as exc:
        raise _fail(exc) from None
    typer.echo(f"{'subject':<16} {'site':<24} status")
    for row in rows:
        deleted = " (deleted)" if row.get("deleted") else ""
        typer.echo(
            f"{row.get('subjectKey') or '':<16} {row.get('siteName') or '':<24} "
            f"{row.get('subjectStatus') or ''}{deleted}"
        )
    typer.echo(f"{len(rows)} subject(s) in {study}")


@app.command()
def subject(
    study: StudyOpt,
    key: Annotated[
        str,
        typer.Option(
            "--subject", help="Subject key, e.g. 01-001 (`imednet-flows subjects` lists them)."
        ),
    ],
) -> None:
    """Everything about one subject, as JSON.

    Recorded in Prefect as a get-all-subject-data flow run when a Prefect API is configured;
    otherwise the flow's code runs directly, unrecorded (--record/--no-record before the
    command choose).
    """
    _study_keys([study])
    try:
        data = _recorded_or_direct(
            "flows.subject_data:get_all_subject_data",
            "imednet_flows.subjects:fetch_subject_data",
            study,
            key,
        )
    except Exception as exc:
        raise _fail(exc) from None
    _echo_json(data.model_dump(mode="json"))


@app.command()
def queries(
    study: StudyOpt,
    filters: Annotated[str | None, typer.Option("--filter", help="Filter on queries.")] = None,
) -> None:
    """Open queries (latest comment not closed).

    Recorded in Prefect as a get-open-queries flow run when a Prefect API is configured;
    otherwise the flow's code runs directly, unrecorded (--record/--no-record before the
    command choose).
    """
    _study_keys([study])
    from imednet_flows.filter_syntax import dnf

    try:
        dnf(filters)
        result = _recorded_or_direct(
            "flows.open_queries:get_open_queries",
            "imednet_flows.queries:fetch_open_queries",
            study,
            filters,
        )
    except Exception as exc:
        raise _fail(exc) from None
    for q in result.open:
        typer.echo(
            f"{q.subject_key:<12} query {q.annotation_id:<10} {q.variable:<12} {q.description}"
        )
    typer.echo(
        f"{len(result.open)} open, {result.closed} closed, "
        f"{len(result.without_comments)} without comments, of {result.total}"
    )


@app.command()
def upsert(
    study: StudyOpt,
    rows_file: Annotated[
        Path,
        typer.Option(
            "--rows",
            exists=True,
            dir_okay=False,
            help="Rows file: a JSON array of rows, or JSON Lines (one row object per line), "
            "each in the API's POST shape (formKey, data, ...). The flow run reads the file "
            "itself: any number of rows, never passed as flow parameters.",
        ),
    ],
    wait: Annotated[bool, typer.Option(help="Wait for the jobs to finish.")] = True,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait per job.")] = 300,
    batch_size: Annotated[int, typer.Option(min=1, max=500, help="Rows per POST.")] = 500,
) -> None:
    """Validate rows, post them in batches and wait for the jobs.

    Always a recorded Prefect flow run (with no Prefect API configured, a temporary local
    server starts first). Rows sent and jobs finished show as progress bars on a terminal,
    as plain lines otherwise.
    """
    from imednet_flows.edc.rows_file import read_rows

    path = rows_file.resolve()  # the flow run may not share this working directory
    _recording(always="upsert")
    try:
        rows = read_rows(path)  # a file that holds no rows is refused before any flow run starts
        create_or_update_records = project.load("flows.upsert_records:create_or_update_records")

        _flow_console()  # before the bars, which print Prefect's log lines above themselves
        with cli_progress.shown() as shown:
            shown.expect(upsert_key(study, "rows"), f"{study} rows sent", "rows", len(rows))
            result = _run_flow(
                create_or_update_records,
                study,
                rows_file=str(path),
                wait=wait,
                timeout=timeout,
                batch_size=batch_size,
            )
    except Exception as exc:
        raise _fail(exc) from None
    for batch in result.batches:
        typer.echo(
            f"rows {batch.first_row}-{batch.last_row}: {batch.state} "
            f"({batch.batch_id or 'confirmed by read-back'})"
        )


@app.command()
def serve(
    pause_on_shutdown: Annotated[
        bool,
        typer.Option(
            help="Pause schedules when this process stops (off: right for service managers)."
        ),
    ] = False,
) -> None:
    """Serve every deployment of prefect.yaml from this process (no worker needed)."""
    serve_main = _project("deployments.serve:main")
    serve_main(["--pause-on-shutdown"] if pause_on_shutdown else [])


WORK_POOL = "imednet-process"


@app.command()
def deploy() -> None:
    """Create the work pool `imednet-process` if missing, then deploy all of prefect.yaml."""
    ensure_work_pool = _project("deployments.pool:ensure_work_pool")
    created = ensure_work_pool(WORK_POOL)
    typer.echo(f"work pool {WORK_POOL}: {'created' if created else 'exists'}")
    prefect = Path(sys.executable).with_name("prefect")
    done = subprocess.run(
        [str(prefect), "--no-prompt", "deploy", "--all"], cwd=project.root(), check=False
    )
    if done.returncode:
        raise typer.Exit(done.returncode)
    typer.echo(f"start a worker: prefect worker start --pool {WORK_POOL}")


@app.command()
def configure(
    base_url: Annotated[
        str | None, typer.Option(help="API origin, e.g. https://edc.prod.imednetapi.com")
    ] = None,
) -> None:
    """Store the API keys as Prefect Secret blocks (prompted, never echoed) and the base URL
    as a Prefect Variable."""
    from imednet_flows.credentials import store_credentials

    api_key = typer.prompt("iMednet API key", hide_input=True)
    security_key = typer.prompt("iMednet security key", hide_input=True)
    try:
        store_credentials(api_key, security_key, base_url)
    except Exception as exc:
        raise _fail(exc) from None
    typer.echo(
        "stored Secret blocks imednet-api-key and imednet-security-key"
        + (f" and Variable imednet-base-url={base_url}" if base_url else "")
    )


@app.command()
def demo(
    subjects: Annotated[int, typer.Option(min=1, help="Subjects in the demo study.")] = 60,
) -> None:
    """Run the main job against an embedded emulator and report what happened."""
    from imednet_flows.demo import run_demo

    _project()  # before the emulator starts
    raise typer.Exit(run_demo(subjects=subjects))


@app.command()
def doctor(
    study: Annotated[
        str | None,
        typer.Option("--study", help="Study key to examine (default: the first one visible)."),
    ] = None,
) -> None:
    """Check the keys, study access and every server behaviour the sync relies on
    (read-only, at most 20 requests); exit 1 if anything failed."""
    from imednet_flows.doctor import run_doctor

    raise typer.Exit(run_doctor(study))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
