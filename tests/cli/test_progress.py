"""Progress of long commands: a bar on a terminal, plain lines anywhere else.

A real terminal is tmux's (a person would see what `capture-pane` shows); a pipe is a real
pipe. The in-process runs go through the real flows under the session's Prefect API.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imednet_flows import progress
from imednet_flows.cache.collections import COLLECTIONS
from imednet_flows.cli import app
from imednet_flows.cli_progress import Bars, PlainLines
from imednet_flows.emulator import EmulatorServer
from imednet_flows.progress import Step
from tests.cli_helpers import user_env
from tests.conftest import BIG, SMALL

Env = Callable[[EmulatorServer], None]
runner = CliRunner(mix_stderr=False)
CLI = str(Path(sys.executable).with_name("imednet-flows"))


# --------------------------------------------------------------------------- units


def test_plain_lines_tell_start_end_and_at_most_one_line_per_interval() -> None:
    now = [0.0]
    out = io.StringIO()
    lines = PlainLines(out, every=2.0, clock=lambda: now[0])
    for page in range(1, 11):
        now[0] = page * 0.5
        lines(Step("k#1", "S records", completed=page, total=10))
    lines(Step("k#2", "S queries", completed=1, total=1))
    lines.close()
    assert out.getvalue().splitlines() == [
        "S records: 1/10 pages",
        "S records: 5/10 pages",
        "S records: 9/10 pages",
        "S records: 10/10 pages",
        "S queries: 1/1 pages",
    ]


def test_plain_lines_add_up_work_that_finishes_in_any_order() -> None:
    out = io.StringIO()
    lines = PlainLines(out, every=3600)
    lines.expect("u", "S rows sent", "rows", 1000)
    for _ in range(2):
        lines(Step("u", "S rows sent", "rows", advance=500))
    lines(Step("j", "S jobs finished", "jobs", advance=1))
    lines(Step("j", "S jobs finished", "jobs", advance=1))
    lines.close()
    assert out.getvalue().splitlines() == [
        "S rows sent: 500/1000 rows",
        "S rows sent: 1000/1000 rows",
        "S jobs finished: 1 jobs",
        "S jobs finished: 2 jobs",
    ]


def test_bars_draw_one_bar_per_piece_of_work() -> None:
    out = io.StringIO()
    bars = Bars(out)
    bars.progress.console.force_terminal = True  # type: ignore[misc]
    bars.start()
    bars(Step("k#1", "S records", completed=3, total=3))
    bars.close()
    assert "S records" in out.getvalue() and "3/3" in out.getvalue()
    assert "━" in out.getvalue()


def test_a_failing_listener_never_fails_the_work() -> None:
    def broken(_step: Step) -> None:
        raise RuntimeError("display gone")

    seen: list[Step] = []
    with progress.subscribed(broken), progress.subscribed(seen.append):
        progress.publish(Step("k", "label", completed=1, total=1))
    assert len(seen) == 1 and not progress.listening()


# --------------------------------------------------------------------------- the commands


@pytest.mark.usefixtures("prefect_api_url")
def test_sync_reports_every_entity_page_by_page(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    k = SMALL.study_key
    done = runner.invoke(
        app,
        ["sync", "--study", k, "--cache", str(tmp_path / "c.sqlite"), "--snapshots", str(tmp_path)],
    )
    assert done.exit_code == 0, done.stderr
    for entity in ("forms", "variables", "subjects", "visits", "records", "queries"):
        assert f"{k} {entity}: 1/1 pages" in done.stderr.splitlines(), entity
    assert "recorded in Prefect" in done.stderr


@pytest.mark.usefixtures("prefect_api_url")
def test_upsert_reports_rows_sent_and_jobs_finished(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    k = SMALL.study_key
    subject = next(s for s in fresh_emulator.emulator.rows(k, "subjects") if not s["deleted"])
    rows = [
        {"formKey": "AE", "subjectKey": subject["subjectKey"], "data": {"aeterm": f"T{n}"}}
        for n in range(3)
    ]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    done = runner.invoke(app, ["upsert", "--study", k, "--rows", str(path), "--batch-size", "2"])
    assert done.exit_code == 0, done.stderr
    said = done.stderr.splitlines()
    assert f"{k} rows sent: 2/3 rows" in said and f"{k} rows sent: 3/3 rows" in said
    assert f"{k} jobs finished: 2 jobs" in said


# --------------------------------------------------------------------------- a real terminal


@pytest.fixture
def tmux() -> Iterator[Callable[[str, dict[str, str]], str]]:
    """Runs a shell command in a terminal of its own tmux server and returns the screen,
    as a person would see it, once the command has finished."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
    socket = f"imednet-flows-test-{uuid.uuid4().hex[:8]}"
    base = ["tmux", "-L", socket]

    def run(command: str, env: dict[str, str]) -> str:
        session = uuid.uuid4().hex[:8]
        # The server takes the environment of the process that starts it; a session takes
        # the server's, so each one is also given its own with -e.
        exports = [arg for k, v in env.items() for arg in ("-e", f"{k}={v}")]
        shell = f"{command}; echo COMMAND-FINISHED; sleep 600"
        subprocess.run(
            [
                *base,
                "-u",
                "new-session",
                "-d",
                "-s",
                session,
                "-x",
                "160",
                "-y",
                "50",
                *exports,
                shell,
            ],
            check=True,
            timeout=30,
            env=env,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            screen = subprocess.run(
                # the whole session, as far back as a person could scroll
                [*base, "capture-pane", "-p", "-J", "-S", "-", "-t", session],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout
            if "COMMAND-FINISHED" in screen:
                return screen
            time.sleep(0.3)
        raise AssertionError(f"the command did not finish in 120 s; screen:\n{screen}")

    try:
        yield run
    finally:
        subprocess.run([*base, "kill-server"], capture_output=True, timeout=30, check=False)


def line_of(screen: str, start: str) -> str:
    lines = [line for line in screen.splitlines() if line.startswith(start)]
    assert len(lines) == 1, f"{len(lines)} lines start with {start!r}; the screen:\n{screen}"
    return lines[0]


def test_extract_on_a_terminal_draws_bars_and_through_a_pipe_prints_lines(
    tmux: Callable[[str, dict[str, str]], str], emulator: EmulatorServer, tmp_path: Path
) -> None:
    env = user_env(emulator, tmp_path / "home")
    pages = -(-len(emulator.emulator.rows(BIG.study_key, "records")) // 500)
    command = f"{CLI} extract --study {BIG.study_key}"
    screen = tmux(f"{command} > /dev/null", env)
    bar = line_of(screen, f"{BIG.study_key} records ")
    assert "━━━━" in bar and f"{pages}/{pages} pages" in bar
    log = tmp_path / "piped.txt"
    screen = tmux(f"{command} 2>&1 >/dev/null | cat > {log}", env)
    piped = log.read_text(encoding="utf-8")
    assert f"{BIG.study_key} records: {pages}/{pages} pages" in piped.splitlines()
    assert "━" not in piped and "\x1b" not in piped


def test_sync_on_a_terminal_draws_a_bar_per_collection(
    tmux: Callable[[str, dict[str, str]], str],
    fresh_emulator: EmulatorServer,
    prefect_api_url: str,
    tmp_path: Path,
) -> None:
    env = user_env(fresh_emulator, tmp_path / "home", prefect_api_url)
    k = SMALL.study_key
    screen = tmux(
        f"{CLI} sync --study {k} --cache {tmp_path}/c.sqlite --snapshots {tmp_path}/snap", env
    )
    for entity in COLLECTIONS:
        bar = line_of(screen, f"{k} {entity.name} ")  # once: log lines never break the bars
        assert "━━━━" in bar and "1/1 pages" in bar, screen
    assert f"recorded in Prefect at {prefect_api_url}" in screen
    # The run's URL may wrap onto the next line of the pane, as a person would see it.
    note = re.compile(r"^flow run [0-9a-f-]{36} completed(:\s+http\S+)?$", re.MULTILINE)
    assert note.search(screen), screen
