"""Rows from a file: read inside the flow run, never as flow-run parameters; clear errors
for files that hold no rows; and no row value in any message, whatever goes wrong.

Every test plants SENTINEL in the rows' values (and where it fits, their references) and
checks that it appears in no message, log or output. Truth comes from the emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.deployments import run_deployment
from prefect.deployments.runner import RunnerDeployment
from prefect.logging.handlers import APILogWorker
from prefect.runner import Runner
from prefect.settings import PREFECT_API_URL
from typer.testing import CliRunner

from deployments.definitions import load_definitions, runner_deployment
from flows.upsert_records import create_or_update_records
from imednet_flows.cli import app
from imednet_flows.edc.errors import ImednetFlowsError
from imednet_flows.edc.rows_file import RowsFileError, read_rows
from imednet_flows.emulator import DEMO_API_KEY, DEMO_SECURITY_KEY, EmulatorServer
from tests.conftest import SMALL
from tests.upsert_helpers import shows

Env = Callable[[EmulatorServer], None]
K = SMALL.study_key
SENTINEL = "ZQX-SENTINEL-7731"
FAST = {"poll_interval": 0.05, "timeout": 60}
runner = CliRunner()


# --------------------------------------------------------------------------- helpers


def realistic_rows(server: EmulatorServer, n: int) -> list[dict[str, Any]]:
    """`n` updates of the study's AE, VS and CM records, ~200 bytes each as a data manager's
    export would be, every text value carrying SENTINEL."""
    targets = [
        r
        for r in server.emulator.rows(K, "records")
        if r["formKey"] in ("AE", "VS", "CM") and not r["deleted"]
    ]
    rows = []
    for i in range(n):
        target = targets[i % len(targets)]
        rows.append(
            {"formKey": target["formKey"], "recordId": target["recordId"], "data": _data(target, i)}
        )
    return rows


def _data(target: dict[str, Any], i: int) -> dict[str, Any]:
    day = f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}"
    if target["formKey"] == "AE":
        return {
            "aestdt": day,
            "aeterm": f"Headache {SENTINEL} {i}",
            "aesev": str(1 + i % 3),
            "aedur": i % 30,
            "aeongo": i % 2 == 0,
            "aedesc": f"Frontal headache after dosing, resolved with rest ({SENTINEL})",
        }
    if target["formKey"] == "VS":
        return {
            "vsdt": day,
            "vssysbp": 100 + i % 60,
            "vsdiabp": 60 + i % 30,
            "vspulse": 50 + i % 50,
            "vstemp": round(36 + (i % 20) / 10, 1),
            "vsweight": round(50 + (i % 500) / 10, 1),
        }
    return {
        "cmstdt": day,
        "cmtrt": f"Paracetamol {SENTINEL}",
        "cmdose": 500 + i % 3 * 250,
        "cmindc": f"Pain {SENTINEL}",
    }


def write_rows(path: Path, rows: list[Any], form: str = "array") -> Path:
    if form == "array":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def expected_truth(
    server: EmulatorServer, rows: list[dict[str, Any]]
) -> tuple[dict[int, int], dict[int, dict[str, Any]]]:
    """Revisions each record should have after the rows, and the data it should show."""
    before = Counter(r["recordId"] for r in server.emulator.rows(K, "recordRevisions"))
    after = Counter(before)
    last: dict[int, dict[str, Any]] = {}
    for row in rows:
        after[row["recordId"]] += 1
        last.setdefault(row["recordId"], {}).update(row["data"])
    return dict(after), last


def assert_truth(
    server: EmulatorServer, revisions: dict[int, int], data: dict[int, dict[str, Any]]
) -> None:
    seen = Counter(r["recordId"] for r in server.emulator.rows(K, "recordRevisions"))
    assert {i: seen[i] for i in revisions} == revisions
    records = {r["recordId"]: r for r in server.emulator.rows(K, "records")}
    for record_id, values in data.items():
        assert shows(records[record_id]["recordData"], values), record_id


def run_logs(flow_run_id: Any) -> str:
    APILogWorker.drain_all(timeout=5)
    with get_client(sync_client=True) as client:
        found = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return "\n".join(log.message for log in found)


def flow_run_parameters(flow_run_id: Any) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).parameters


# --------------------------------------------------------------------------- reading files


def test_json_array_and_json_lines_give_the_same_rows(tmp_path: Path) -> None:
    rows = [{"formKey": "AE", "recordId": n, "data": {"aeterm": SENTINEL}} for n in range(3)]
    array = write_rows(tmp_path / "rows.json", rows)
    lines = write_rows(tmp_path / "rows.jsonl", rows, "lines")
    assert read_rows(array) == read_rows(lines) == rows
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + lines.read_bytes() + b"\n\n")
    assert read_rows(tmp_path / "bom.jsonl") == rows  # a BOM and blank lines at the end
    (tmp_path / "empty.json").write_text(" [ ]\n")
    assert read_rows(tmp_path / "empty.json") == []


BAD_FILES: list[tuple[str, bytes, str]] = [
    ("empty.json", b"  \n", "is empty"),
    ("export.csv", f"formKey,recordId,aeterm\nAE,1,{SENTINEL}\n".encode(), "is not JSON"),
    ("garbage.bin", b"\x00\x9f\x92" + SENTINEL.encode(), "is not JSON"),
    ("cut.json", f'[{{"formKey": "AE", "data": {{"aeterm": "{SENTINEL}'.encode(), "line 1"),
    ("grid.json", f'[["AE", 1, "{SENTINEL}"]]'.encode(), "not of row objects"),
    (
        "pretty.json",
        f'{{\n  "formKey": "AE",\n  "data": {{"aeterm": "{SENTINEL}"}}\n}}\n'.encode(),
        "put the rows in a JSON array",
    ),
    (
        "rows.jsonl",
        (
            f'{{"formKey": "AE", "data": {{"aeterm": "{SENTINEL}"}}}}\n'
            f"\n"
            f'{{"formKey": "AE", "data": {{"aeterm": "{SENTINEL}"}}\n'
            f'["{SENTINEL}"]\n'
            f"{SENTINEL}\n"
        ).encode(),
        "lines 3, 5 are not JSON; line 4 is not a JSON object; line 2 is empty",
    ),
]


@pytest.fixture(params=BAD_FILES, ids=[b[0] for b in BAD_FILES])
def bad_file(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    """A file that holds no rows, and the problem its error must name."""
    name, content, problem = request.param
    path = tmp_path / name
    path.write_bytes(content)
    return path, problem


def test_a_file_without_rows_is_refused_naming_it(bad_file: tuple[Path, str]) -> None:
    path, problem = bad_file
    with pytest.raises(RowsFileError) as caught:
        read_rows(path)
    message = str(caught.value)
    assert message.startswith(f"rows file {path}: ") and problem in message
    assert "Expected: a JSON array of rows, or JSON Lines" in message
    assert SENTINEL not in message


def test_the_cli_refuses_a_file_without_rows_clearly(bad_file: tuple[Path, str]) -> None:
    """Before any flow run starts: the file, what is wrong, what is expected, no traceback."""
    path, problem = bad_file
    result = runner.invoke(app, ["upsert", "--study", K, "--rows", str(path)])
    assert result.exit_code == 1, result.output
    assert str(path) in result.output and problem in result.output
    assert "Expected: a JSON array of rows, or JSON Lines" in result.output
    assert "Traceback" not in result.output and SENTINEL not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# --------------------------------------------------------------------------- the flow


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("form", ["array", "lines"])
def test_rows_file_reaches_the_flow_as_a_path(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path, form: str
) -> None:
    imednet_env(fresh_emulator)
    rows = realistic_rows(fresh_emulator, 7)
    revisions, data = expected_truth(fresh_emulator, rows)
    path = write_rows(tmp_path / f"rows.{form}", rows, form)
    state = create_or_update_records(
        K, rows_file=str(path), batch_size=3, return_state=True, **FAST
    )
    result = state.result()
    assert [(b.first_row, b.last_row, b.state) for b in result.batches] == [
        (1, 3, "COMPLETED"),
        (4, 6, "COMPLETED"),
        (7, 7, "COMPLETED"),
    ]
    assert_truth(fresh_emulator, revisions, data)
    parameters = flow_run_parameters(state.state_details.flow_run_id)
    assert parameters["rows_file"] == str(path) and not parameters.get("records")
    assert SENTINEL not in json.dumps(parameters)


@pytest.mark.usefixtures("prefect_api")
def test_a_bad_rows_file_fails_the_flow_before_any_request(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    path = tmp_path / "rows.csv"
    path.write_text(f"formKey,aeterm\nAE,{SENTINEL}\n")
    with pytest.raises(RowsFileError, match=f"rows file {path}: is not JSON"):
        create_or_update_records(K, rows_file=str(path), **FAST)
    assert fresh_emulator.emulator.requests() == []


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    ("given", "problem"),
    [
        (
            {"records": [{"formKey": "AE", "data": {}}], "rows_file": "rows.json"},
            "give records or rows_file, not both",
        ),
        ({"records": [], "rows_file": ""}, "no rows given: set records"),
        ({}, "no rows given: set records"),
        ({"rows_file": "  "}, "no rows given: set records"),
    ],
    ids=["both", "neither", "empty-list-and-empty-path", "blank-path"],
)
def test_exactly_one_source_of_rows(
    fresh_emulator: EmulatorServer, imednet_env: Env, given: dict[str, Any], problem: str
) -> None:
    imednet_env(fresh_emulator)
    with pytest.raises(ImednetFlowsError, match=problem):
        create_or_update_records(K, **given, **FAST)
    assert fresh_emulator.emulator.requests() == []


@pytest.mark.usefixtures("prefect_api")
def test_an_invalid_parameter_never_echoes_the_rows(
    fresh_emulator: EmulatorServer,
    imednet_env: Env,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Prefect's own parameter check logs every parameter value when one is invalid; the
    flow checks its parameters itself, naming the parameter and the rule only."""
    imednet_env(fresh_emulator)
    rows = [*realistic_rows(fresh_emulator, 3), SENTINEL]
    state = create_or_update_records(
        K, rows, timeout=0, batch_size=0, poll_interval=0.05, return_state=True
    )
    assert state.is_failed()
    with pytest.raises(ImednetFlowsError) as caught:
        state.result()
    message = str(caught.value)
    assert "timeout: Input should be greater than 0" in message
    assert "batch_size: Input should be greater than or equal to 1" in message
    seen = [message, run_logs(state.state_details.flow_run_id), caplog.text, *capfd.readouterr()]
    assert not any(SENTINEL in text for text in seen)
    assert fresh_emulator.emulator.requests() == []


@pytest.mark.usefixtures("prefect_api")
def test_row_problems_name_rows_never_values(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    rows: list[Any] = realistic_rows(fresh_emulator, 6)
    rows[1]["data"]["aedur"] = SENTINEL  # an INTEGER
    rows[2] = {"formKey": "AE", "subjectKey": SENTINEL, "data": {"aeterm": SENTINEL}}
    rows[3] = SENTINEL
    rows[4][f"x{SENTINEL}"] = 1  # an unknown field is named: keep field names clean
    path = write_rows(tmp_path / "rows.json", rows)
    state = create_or_update_records(K, rows_file=str(path), return_state=True, **FAST)
    with pytest.raises(ImednetFlowsError) as caught:
        state.result()
    message = str(caught.value).replace(f"x{SENTINEL}", "<field>")
    for number in (2, 3, 4, 5):
        assert f"\nrow {number}: " in message, number
    assert "aedur (INTEGER): not an integer (got text that does not fit)" in message
    assert "row 4: not a JSON object but text that does not fit" in message
    assert SENTINEL not in message
    assert fresh_emulator.emulator.requests() and not [
        e for e in fresh_emulator.emulator.requests() if e.method == "POST"
    ]


@pytest.mark.usefixtures("prefect_api")
def test_thousands_of_bad_rows_are_summed_up(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    """Each problem gets a line up to a bound; the rest are named by row number only."""
    imednet_env(fresh_emulator)
    rows = [r for r in realistic_rows(fresh_emulator, 900) if r["formKey"] != "CM"]
    for row in rows:  # an INTEGER and a NUMBER variable
        row["data"] = {"aedur" if row["formKey"] == "AE" else "vstemp": SENTINEL}
    path = write_rows(tmp_path / "rows.json", rows)
    with pytest.raises(ImednetFlowsError) as caught:
        create_or_update_records(K, rows_file=str(path), **FAST)
    message = str(caught.value)
    assert message.count("\nrow ") == 500
    assert message.endswith(f"... and {len(rows) - 500} more in rows 501-{len(rows)}")
    assert SENTINEL not in message


# --------------------------------------------------------------------------- the CLI


@pytest.mark.usefixtures("prefect_api")
def test_cli_over_the_parameter_limit_names_rows_only(
    fresh_emulator: EmulatorServer, tmp_path: Path
) -> None:
    """3,750 realistic rows (over Prefect's 512 KB parameter limit), three of them wrong:
    the real command in its own process reports the three row numbers and nothing of the
    rows; no 422 (the rows never travel as parameters)."""
    rows: list[Any] = realistic_rows(fresh_emulator, 3750)
    rows[16]["data"]["aedur" if rows[16]["formKey"] == "AE" else "cmdose"] = SENTINEL
    rows[1999] = {"formKey": "AE", "subjectKey": SENTINEL, "data": {"aeterm": SENTINEL}}
    rows[3749] = [SENTINEL]
    path = write_rows(tmp_path / "rows.json", rows)
    assert path.stat().st_size > 600_000
    env = {
        **os.environ,
        "IMEDNET_BASE_URL": fresh_emulator.base_url,
        "IMEDNET_API_KEY": DEMO_API_KEY,
        "IMEDNET_SECURITY_KEY": DEMO_SECURITY_KEY,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
    }
    command = [sys.executable, "-m", "imednet_flows.cli", "upsert", "--study", K]
    done = subprocess.run(
        [*command, "--rows", str(path)], env=env, capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "3 problem(s) in 3 of 3750 row(s)" in output
    for number in (17, 2000, 3750):
        assert f"row {number}: " in output, number
    assert SENTINEL not in output
    # A status 422 from the Prefect API, not "422" inside a run id or a log line's milliseconds.
    assert not re.search(r"(?<![\w.:-])422(?![\w.:-])", output), output[-3000:]
    assert "Unprocessable" not in output
    assert not [e for e in fresh_emulator.emulator.requests() if e.method == "POST"]


@pytest.mark.usefixtures("prefect_api")
def test_cli_writes_100k_rows(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    rows = realistic_rows(fresh_emulator, 100_000)
    revisions, data = expected_truth(fresh_emulator, rows)
    path = write_rows(tmp_path / "rows.jsonl", rows, "lines")
    result = runner.invoke(app, ["upsert", "--study", K, "--rows", str(path)])
    assert result.exit_code == 0, result.output[-3000:]
    assert result.output.count(": COMPLETED (") == 200
    posts = [e for e in fresh_emulator.emulator.requests() if e.method == "POST"]
    assert [(e.status, e.items) for e in posts] == [(202, 500)] * 200
    assert_truth(fresh_emulator, revisions, data)
    assert SENTINEL not in result.output


# --------------------------------------------------------------------------- a deployment


@contextlib.contextmanager
def serving(deployment: RunnerDeployment) -> Iterator[None]:
    """The deployment served by a Runner in a background thread, its flow runs in
    subprocesses that find the emulator through the environment, as in production."""
    runner = Runner(name="test-upsert-deployment", query_seconds=1, pause_on_shutdown=False)
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        await runner.aadd_deployment(deployment)
        await runner.start()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not runner.started and thread.is_alive():
        assert time.monotonic() < deadline, "the runner did not start"
        time.sleep(0.1)
    assert thread.is_alive(), "the runner stopped at once"
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(runner.astop(), loop).result(timeout=30)
        thread.join(timeout=30)
        loop.close()
        with get_client(sync_client=True) as client:
            client.delete_deployment(
                client.read_deployment_by_name(f"create-or-update-records/{deployment.name}").id
            )


@pytest.mark.slow  # ~35-45 s here: a flow-run subprocess starting up, then 100,000 rows
@pytest.mark.usefixtures("prefect_api")
def test_deployment_from_prefect_yaml_writes_100k_rows(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    """The upsert-records deployment as prefect.yaml defines it (parameter schema enforced),
    run with a rows file: the flow run's parameters stay a few hundred bytes."""
    imednet_env(fresh_emulator)
    rows = realistic_rows(fresh_emulator, 100_000)
    revisions, data = expected_truth(fresh_emulator, rows)
    path = write_rows(tmp_path / "rows.json", rows)
    spec = next(s for s in load_definitions() if s["name"] == "upsert-records")
    parameters = {"study_key": K, "rows_file": str(path), "poll_interval": 0.05, "timeout": 60}
    with serving(runner_deployment(spec)):
        run = run_deployment(
            f"create-or-update-records/{spec['name']}",
            parameters=parameters,
            timeout=180,
            poll_interval=1,
        )
    assert run.state is not None and run.state.is_completed(), run.state
    assert run.parameters == parameters
    posts = [e for e in fresh_emulator.emulator.requests() if e.method == "POST"]
    assert [(e.status, e.items) for e in posts] == [(202, 500)] * 200
    assert_truth(fresh_emulator, revisions, data)
