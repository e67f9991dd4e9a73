"""The `imednet-flows` command: one Typer app for every way of running the project."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from imednet_flows.emulator import (
    DEMO_API_KEY,
    DEMO_SECURITY_KEY,
    Emulator,
    EmulatorConfig,
    EmulatorServer,
    StudySpec,
)

app = typer.Typer(
    name="imednet-flows",
    help="Prefect pipelines for the iMednet EDC API, and a local emulator of that API.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def emulator(
    host: Annotated[
        str, typer.Option(help="Interface to bind; keep it on loopback.")
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
        float, typer.Option(min=0, help="Seconds from POST until a job finishes.")
    ] = 1.0,
) -> None:
    """Serve a seeded iMednet API on loopback until Ctrl-C or SIGTERM."""
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
    handle = Emulator(
        specs, EmulatorConfig(api_key=api_key, security_key=security_key, job_delay=job_delay)
    )
    server = EmulatorServer(handle, host, port)
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


@app.command()
def demo(
    subjects: Annotated[int, typer.Option(min=1, help="Subjects in the demo study.")] = 60,
) -> None:
    """Run the main job against an embedded emulator and report what happened."""
    from imednet_flows.demo import run_demo

    raise typer.Exit(run_demo(subjects=subjects))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
