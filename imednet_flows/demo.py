"""The main job, end to end, against an embedded emulator: what `make demo` runs."""

from __future__ import annotations

import time

import typer
from imednet import ImednetSDK

from imednet_flows.emulator import StudySpec, running_emulator
from imednet_flows.emulator.handle import DEMO_API_KEY, DEMO_SECURITY_KEY


def run_demo(subjects: int = 60) -> int:
    spec = StudySpec(study_key="DEMO", subjects=subjects)
    with running_emulator([spec]) as server:
        typer.echo(f"Embedded iMednet emulator on {server.base_url} (study DEMO)")
        started = time.perf_counter()
        with ImednetSDK(
            api_key=DEMO_API_KEY, security_key=DEMO_SECURITY_KEY, base_url=server.base_url
        ) as sdk:
            studies = sdk.studies.list()
            for study in studies:
                key = study.study_key
                typer.echo(f"\nStudy {key}: {study.study_name}")
                for name in (
                    "sites",
                    "forms",
                    "intervals",
                    "variables",
                    "subjects",
                    "visits",
                    "records",
                    "queries",
                ):
                    items = getattr(sdk, name).list(key)
                    typer.echo(f"  {name:<10} {len(items):>6}")
        requests = len(server.emulator.requests())
        typer.echo(f"\n{requests} API requests in {time.perf_counter() - started:.2f}s")
    return 0
