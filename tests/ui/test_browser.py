"""The Prefect UI as a person meets it, in a real browser (Debian's chromium, driven by
Playwright) against a real `prefect server start` and `imednet-flows serve` on the emulator.

Why: the run forms, the artifacts and the run logs are what a data manager sees first, and
how the UI renders a schema (toggles for nullable fields, titles, dropped `<...>`) can only
be seen in the UI. Screenshots of every step go to `test-artifacts/ui/` (gitignored) and the
folder is printed; on a failure they show what the browser showed. `make test` installs
chromium with apt-get when it is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import LogSort
from prefect.exceptions import ObjectNotFound

from deployments.definitions import PROJECT_ROOT, load_definitions
from imednet_flows.emulator import (
    DEMO_API_KEY,
    DEMO_SECURITY_KEY,
    EmulatorServer,
    StudySpec,
    running_emulator,
)
from tests.deployments.test_deployments import flow_of, wait_for
from tests.deployments.test_operations import (
    BIN,
    base_env,
    prefect_api_at,
    prefect_server,
    stop_group,
    tail,
)

CHROMIUM = Path(os.environ.get("IMEDNET_FLOWS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = PROJECT_ROOT / "test-artifacts" / "ui"
DOCS = PROJECT_ROOT / "docs"
SPECS = {s["name"]: s for s in load_definitions()}
DEMO = StudySpec(study_key="DEMO", study_id=1, seed=61, subjects=8)
#: How long the UI may take to show a page or a run to finish (a run starts a process).
PAGE_MS = 30_000
RUN_SECONDS = 90


@dataclass
class Stack:
    url: str
    api_url: str
    work: Path
    emulator: EmulatorServer
    deployments: dict[str, Any] = field(default_factory=dict)


def polled_deployments(since: float, serve: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    """Every deployment of prefect.yaml, once `serve` has polled each ({} until then)."""
    assert serve.poll() is None, f"serve exited:\n{tail(log)}"
    found = {}
    with get_client(sync_client=True) as client:
        for name, spec in SPECS.items():
            try:
                deployment = client.read_deployment_by_name(f"{flow_of(spec).name}/{name}")
            except ObjectNotFound:
                return {}
            if not (deployment.last_polled and deployment.last_polled.timestamp() > since):
                return {}
            found[name] = deployment
    return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, migrated_prefect_db: Path) -> Iterator[Stack]:
    """Server (UI on, scheduler and triggers off: only the runs the tests submit happen),
    emulator, and `imednet-flows serve` run from a folder of its own, so the sync's
    relative cache path lands there."""
    home = tmp_path_factory.mktemp("ui-prefect-home")
    work = home / "work"
    work.mkdir()
    serve_log = home / "serve.log"
    with (
        running_emulator([DEMO]) as emulator,
        prefect_server(
            home, migrated_prefect_db, PREFECT_UI_ENABLED="true", PREFECT_UI_API_URL="{api_url}"
        ) as api,
    ):
        serve_env = dict(
            base_env(home),
            PREFECT_API_URL=api,
            PREFECT_RUNNER_POLL_FREQUENCY="1",
            IMEDNET_BASE_URL=emulator.base_url,
            IMEDNET_API_KEY=DEMO_API_KEY,
            IMEDNET_SECURITY_KEY=DEMO_SECURITY_KEY,
        )
        with serve_log.open("wb") as out:
            serve = subprocess.Popen(
                [str(BIN / "imednet-flows"), "serve"],
                cwd=work,
                env=serve_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = time.time()
        try:
            with prefect_api_at(api):
                deployments = wait_for(
                    lambda: polled_deployments(started, serve, serve_log),
                    90,
                    "serve to poll every deployment",
                    0.5,
                )
                print(f"\nUI screenshots: {SHOTS}")
                yield Stack(api.removesuffix("/api"), api, work, emulator, deployments)
        finally:
            stop_group(serve, grace=30)


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"no chromium at {CHROMIUM}: `make test` installs it (apt-get install -y chromium), "
            "or set IMEDNET_FLOWS_CHROMIUM to a Chromium binary"
        )
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def context(browser: Any) -> Iterator[Any]:
    """One browser context for the module: its cache keeps the UI's bundles across tests."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(PAGE_MS)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A page of its own; when the test failed, what it showed last is kept as
    `failed-{test}.png` (the call's report is in before fixtures are torn down)."""
    failed_before = request.session.testsfailed
    page = context.new_page()
    try:
        yield page
        if request.session.testsfailed > failed_before:
            name = re.sub(r"[^\w.-]+", "-", request.node.name)
            print(f"\nkept {shot(page, f'failed-{name}')}")
    finally:
        page.close()


def shot(page: Any, name: str, docs: str | None = None) -> Path:
    """A screenshot of the whole page. The UI scrolls inside an inner panel, so the viewport
    first grows to that panel's height; otherwise a full-page shot stops at the fold."""
    height = page.evaluate(
        """() => {
            let most = document.documentElement.scrollHeight;
            for (const e of document.querySelectorAll('*')) {
                const style = getComputedStyle(e).overflowY;
                if ((style === 'auto' || style === 'scroll') && e.scrollHeight > e.clientHeight)
                    most = Math.max(most, e.scrollHeight + 40);
            }
            return most;
        }"""
    )
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(max(900, height), 6000)})
    page.wait_for_timeout(300)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if docs:
        for_docs(path, docs)
    page.set_viewport_size(size)
    return path


def for_docs(path: Path, name: str) -> None:
    """The README's pictures come from this test, refreshed on request only (a normal run
    must not change tracked files): IMEDNET_FLOWS_UPDATE_DOCS=1."""
    if os.environ.get("IMEDNET_FLOWS_UPDATE_DOCS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS / name)


def form(page: Any, stack: Stack, name: str, v1: bool = False) -> str:
    """Open a deployment's custom-run form; return the text a person reads on it."""
    prefix = "" if v1 else "/v2"
    page.goto(f"{stack.url}{prefix}/deployments/deployment/{stack.deployments[name].id}/run")
    page.get_by_text("Parameters", exact=True).first.wait_for()
    page.get_by_role("button", name="Submit").wait_for()
    # The form fills in the deployment's parameters after the heading shows; a click before
    # that is lost.
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(500)
    return " ".join(page.inner_text("body").split())


def runs_of(stack: Stack, name: str) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[stack.deployments[name].id])
            )
        )


def finished(stack: Stack, run_id: UUID) -> FlowRun:
    with get_client(sync_client=True) as client:
        return wait_for(
            lambda: (r := client.read_flow_run(run_id)).state.is_final() and r,
            RUN_SECONDS,
            f"flow run {run_id} to finish",
            every=0.5,
        )


def submit(page: Any, stack: Stack, name: str) -> UUID:
    """Click Submit; the id of the one run of the deployment that the click created."""
    before = {r.id for r in runs_of(stack, name)}
    new: list[FlowRun] = []
    # A click the form swallows while it re-renders creates nothing and leaves the page on
    # the form: click again then, and only then (never a second run).
    for attempt in range(3):
        page.get_by_role("button", name="Submit").click()
        try:
            new = wait_for(
                lambda: [r for r in runs_of(stack, name) if r.id not in before],
                20,
                f"a {name} run",
            )
            break
        except AssertionError as exc:
            if attempt == 2 or not page.url.endswith("/run"):
                shown = " ".join(page.inner_text("body").split())[-1500:]
                raise AssertionError(f"{exc}; the page at {page.url} shows: {shown}") from None
    assert len(new) == 1, new
    page.wait_for_url(re.compile(r"^(?!.*/run$)"))  # the UI leaves the form
    return new[0].id


def logs_of(stack: Stack, run_id: UUID) -> list[Any]:
    with get_client(sync_client=True) as client:
        return client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
            sort=LogSort.TIMESTAMP_ASC,
        )


def plain(markdown: str) -> str:
    """A description as the V1 UI's markdown shows it: code spans without their ticks."""
    return " ".join(markdown.replace("`", "").split())


@pytest.fixture(scope="module")
def started(stack: Stack, context: Any) -> dict[str, UUID]:
    """The runs, each of which takes a process, started before the form checks so that they
    run meanwhile: the sync and open-queries forms as the deployments fill them (study DEMO,
    the filter left empty) submitted by clicking, and a subject-data run that must fail."""
    page = context.new_page()
    try:
        form(page, stack, "incremental-sync")
        sync = submit(page, stack, "incremental-sync")
        assert "Query filter" in form(page, stack, "open-queries-report")
        report = submit(page, stack, "open-queries-report")
    except BaseException:
        print(f"\nkept {shot(page, 'failed-submitting')}")
        raise
    finally:
        page.close()
    with get_client(sync_client=True) as client:
        failing = client.create_flow_run_from_deployment(
            stack.deployments["subject-data"].id,
            parameters={"study_key": "DEMO", "subject_key": "99-999"},
        )
    return {"sync": sync, "report": report, "failing": failing.id}


# --------------------------------------------------------------------------- the forms


@pytest.mark.usefixtures("started")
@pytest.mark.parametrize("name", list(SPECS))
def test_every_run_form_shows_titles_and_whole_descriptions_without_type_toggles(
    stack: Stack, page: Any, name: str
) -> None:
    schema = stack.deployments[name].parameter_openapi_schema
    for v1 in (False, True):
        text = form(page, stack, name, v1=v1)
        if not v1:  # to look at; the V1 form is kept only if a check fails
            shot(page, f"form-{name}")
        assert "Property is type" not in text
        raw = [p for p in schema["properties"] if "_" in p and p in text]
        assert not raw, f"{name}: raw parameter names shown: {raw}"
        assert page.get_by_role("button", name="None", exact=True).count() == 0
        for prop in schema["properties"].values():
            assert prop["title"] in text, f"{name}: title {prop['title']!r} not shown"
            description = prop["description"] if not v1 else plain(prop["description"])
            assert " ".join(description.split()) in text, (
                f"{name} ({'V1' if v1 else 'V2'}): description of {prop['title']!r} is not "
                "shown whole"
            )


def test_upsert_form_shows_the_row_fields(stack: Stack, page: Any) -> None:
    form(page, stack, "upsert-records")
    page.get_by_role("button", name="Add item").first.click()
    for title in ("Form key", "Record id", "Subject key", "Interval name", "Site name", "Data"):
        page.get_by_text(re.compile(rf"^{title}( \(Optional\))?$")).first.wait_for()
    assert "Property is type" not in page.inner_text("body")
    shot(page, "form-upsert-records-row")


# --------------------------------------------------------------------------- submitting


def test_sync_and_open_queries_submitted_by_clicking_complete_and_their_artifacts_show(
    stack: Stack, page: Any, started: dict[str, UUID]
) -> None:
    sync_id, report_id = started["sync"], started["report"]
    sync = finished(stack, sync_id)
    assert sync.state and sync.state.is_completed(), sync.state
    assert sync.parameters["study_keys"] == ["DEMO"]
    assert (stack.work / "imednet-cache" / "imednet.sqlite").is_file()
    page.goto(f"{stack.url}/v2/runs/flow-run/{sync_id}?tab=Artifacts")
    page.get_by_text("incremental-sync", exact=True).first.wait_for()
    page.get_by_text(re.compile(r"Sync of DEMO done: 11 collections")).first.wait_for()
    shot(page, "run-incremental-sync-artifacts")

    report = finished(stack, report_id)
    assert report.state and report.state.is_completed(), report.state
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[report_id]))
        )
    table = next(a for a in artifacts if a.key == "open-queries-demo")
    page.goto(f"{stack.url}/v2/runs/flow-run/{report_id}?tab=Artifacts")
    page.get_by_text("open-queries-demo", exact=True).first.wait_for()
    page.goto(f"{stack.url}/v2/artifacts/artifact/{table.id}")
    page.get_by_text("days since last comment").first.wait_for()
    first_site = stack.emulator.emulator.rows("DEMO", "subjects")[0]["siteName"]
    page.get_by_text(first_site).first.wait_for()
    shot(page, "artifact-open-queries", docs="ui-artifact-open-queries.png")
    triage = next(a for a in artifacts if a.key == "open-queries-demo-triage")
    page.goto(f"{stack.url}/v2/artifacts/artifact/{triage.id}")
    page.get_by_text("Queries without comments").first.wait_for()
    shot(page, "artifact-open-queries-triage")


def test_bad_values_are_refused_with_a_message(stack: Stack, page: Any) -> None:
    before = len(runs_of(stack, "incremental-sync"))
    form(page, stack, "incremental-sync")
    box = page.get_by_label("Concurrent API requests")
    box.fill("99")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_timeout(1000)
    message = box.evaluate("e => e.validationMessage")
    assert "32" in message, message
    assert page.url.endswith("/run")

    form(page, stack, "open-queries-report")
    page.get_by_label("Study key").fill("   ")
    page.get_by_role("button", name="Submit").click()
    page.get_by_text(re.compile("study_key|does not match")).first.wait_for()
    shot(page, "form-open-queries-refused")
    assert page.url.endswith("/run")
    assert len(runs_of(stack, "incremental-sync")) == before
    assert all(
        r.parameters.get("study_key") == "DEMO" for r in runs_of(stack, "open-queries-report")
    )


def test_extract_form_for_the_readme(stack: Stack, page: Any) -> None:
    form(page, stack, "extract-records")
    page.get_by_label("Study key").fill("DEMO")
    page.get_by_label("Record filter").fill("formKey==AE")
    page.set_viewport_size({"width": 1100, "height": 900})
    page.wait_for_timeout(300)
    path = SHOTS / "form-extract-records-readme.png"
    page.screenshot(path=str(path))
    for_docs(path, "ui-run-form.png")


# --------------------------------------------------------------------------- failure logs


def test_a_failed_run_logs_one_traceback_and_ends_with_what_to_do(
    stack: Stack, started: dict[str, UUID]
) -> None:
    """Prefect 3.9 logs a deployment run's exception twice, with its traceback each time;
    the second is now one line that says what failed and what to do."""
    run = finished(stack, started["failing"])
    assert run.state and run.state.is_failed(), run.state
    wait_for(
        lambda: any("Finished in state Failed" in log.message for log in logs_of(stack, run.id)),
        30,
        "the run's final state in its logs",
    )
    logs: list[Any] = []

    def settled() -> bool:  # the engine logs after the state; wait until nothing comes
        nonlocal logs
        previous, logs = len(logs), logs_of(stack, run.id)
        return len(logs) == previous

    wait_for(settled, 30, "the run's logs to settle", every=2.5)
    text = "\n".join(log.message for log in logs)
    assert text.count("Traceback (most recent call last)") == 1, text[-4000:]
    last = logs[-1]
    assert "\n" not in last.message
    assert re.fullmatch(
        r"Flow run '[\w-]+' failed: subject '99-999' was not found in study DEMO; .*",
        last.message,
    ), last.message
