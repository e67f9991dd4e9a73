"""The quick command line: recorded in Prefect when an API is configured, direct otherwise,
with the same output either way; `studies` and `subjects`; progress on a terminal and in a
pipe.

Commands run as a user runs them: `CliRunner` in this process (with the session's real
Prefect API where a run is recorded), or a real subprocess, or a real terminal in tmux.
Expected values come from the emulator's own rows.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from imednet_flows.cli import app
from imednet_flows.emulator import EmulatorServer
from tests.cli_helpers import user_env
from tests.conftest import BIG, SMALL

Env = Callable[[EmulatorServer], None]
K = BIG.study_key
runner = CliRunner(mix_stderr=False)

#: Runs the command line as its console script does, then tells whether Prefect was imported.
WRAPPER = """
import sys
from imednet_flows.cli import main
sys.argv = ["imednet-flows", *sys.argv[1:]]
try:
    main()
finally:
    sys.stderr.write(f"\\nPREFECT-IMPORTED={'prefect' in sys.modules}\\n")
"""


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WRAPPER, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def open_truth(rows: list[dict[str, Any]]) -> tuple[set[int], int, int]:
    """(open ids, closed, without comments) from the emulator's rows."""
    open_, closed, none = set(), 0, 0
    for q in rows:
        comments = q["queryComments"]
        if not comments:
            none += 1
        elif max(comments, key=lambda c: c["sequence"])["closed"]:
            closed += 1
        else:
            open_.add(q["annotationId"])
    return open_, closed, none


def flow_run(run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(run_id))


def recorded_run_id(stderr: str) -> str:
    found = re.search(r"flow run ([0-9a-f-]{36}) completed", stderr)
    assert found, stderr
    return found.group(1)


# --------------------------------------------------------------------------- direct runs


def test_queries_without_a_prefect_api_run_directly_and_say_so(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """No Prefect API configured: the command neither starts a temporary Prefect server nor
    even imports Prefect (its import alone costs a second), says the run is not recorded,
    and reports exactly the study's open queries."""
    home = tmp_path / "prefect-home"
    done = run_cli(["queries", "--study", K], user_env(emulator, home), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "PREFECT-IMPORTED=False" in done.stderr
    assert "not recorded in Prefect" in done.stderr and "PREFECT_API_URL" in done.stderr
    assert not home.exists() or not any(home.iterdir())  # no Prefect database was made
    open_ids, closed, none = open_truth(emulator.emulator.rows(K, "queries"))
    lines = done.stdout.splitlines()
    shown = {int(re.search(r" query (\d+) ", line).group(1)) for line in lines[:-1]}  # type: ignore[union-attr]
    assert shown == open_ids
    total = len(emulator.emulator.rows(K, "queries"))
    assert lines[-1] == (
        f"{len(open_ids)} open, {closed} closed, {none} without comments, of {total}"
    )


def test_a_configured_profile_api_records_the_run(
    emulator: EmulatorServer, prefect_api_url: str, tmp_path: Path
) -> None:
    """`prefect config set PREFECT_API_URL=...` writes the active profile, not the
    environment: the command line finds it there too and records the run."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    profile = f'active = "team"\n[profiles.team]\nPREFECT_API_URL = "{prefect_api_url}"\n'
    (home / "profiles.toml").write_text(profile, encoding="utf-8")
    done = run_cli(["queries", "--study", K], user_env(emulator, home), tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"recorded in Prefect at {prefect_api_url}" in done.stderr
    run = flow_run(recorded_run_id(done.stderr))
    assert run.state.is_completed() and run.parameters["study_key"] == K


# --------------------------------------------------------------------------- same output


def subject_key(server: EmulatorServer) -> str:
    return server.emulator.rows(K, "subjects")[3]["subjectKey"]


def site_id(server: EmulatorServer) -> int:
    return server.emulator.rows(K, "sites")[1]["siteId"]


COMMANDS: dict[str, tuple[str, Callable[[EmulatorServer], list[str]]]] = {
    "queries": ("get-open-queries", lambda s: ["queries", "--study", K]),
    "subject": (
        "get-all-subject-data",
        lambda s: ["subject", "--study", K, "--subject", subject_key(s)],
    ),
    "extract": (
        "extract-records-by-criteria",
        lambda s: [
            "extract",
            "--study",
            K,
            "--record-filter",
            "formKey==AE",
            "--subject-filter",
            f"siteId=={site_id(s)}",
        ],
    ),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_recorded_and_direct_runs_print_the_same(
    command: str, emulator: EmulatorServer, imednet_env: Env, prefect_api_url: str
) -> None:
    """With a Prefect API configured the command is a flow run there, and says which;
    --no-record runs the flow's own functions without Prefect and prints the same."""
    imednet_env(emulator)
    flow_name, args_of = COMMANDS[command]
    args = args_of(emulator)
    recorded = runner.invoke(app, args)
    assert recorded.exit_code == 0, recorded.stderr
    assert f"recorded in Prefect at {prefect_api_url}" in recorded.stderr
    run = flow_run(recorded_run_id(recorded.stderr))
    assert run.state.is_completed()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.read_flow(run.flow_id).name == flow_name
        runs_before = len(client.read_flow_runs())
    direct = runner.invoke(app, ["--no-record", *args])
    assert direct.exit_code == 0, direct.stderr
    assert "not recorded in Prefect" in direct.stderr
    assert direct.stdout == recorded.stdout
    with get_client(sync_client=True) as client:
        assert len(client.read_flow_runs()) == runs_before  # nothing recorded


def test_direct_run_failures_say_what_to_do(
    fresh_emulator: EmulatorServer, imednet_env: Env
) -> None:
    imednet_env(fresh_emulator)
    done = runner.invoke(app, ["--no-record", "queries", "--study", "NOPE-1"])
    assert done.exit_code == 1
    assert "study key is unknown" in done.stderr and "Traceback" not in done.stderr
    bad_filter = runner.invoke(app, ["--no-record", "queries", "--study", "X", "--filter", "a=b"])
    assert bad_filter.exit_code == 1 and "error:" in bad_filter.stderr
    assert len(fresh_emulator.emulator.requests()) == 1  # the malformed filter sent nothing


@pytest.mark.usefixtures("prefect_api")
def test_direct_run_reads_missing_credentials_from_prefect_and_says_so(
    fresh_emulator: EmulatorServer, imednet_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flows' credential order holds without Prefect too: what the environment lacks is
    looked up in Prefect (slow, so the command line says so), and a key found nowhere is the
    flows' own clear error."""
    imednet_env(fresh_emulator)
    monkeypatch.delenv("IMEDNET_SECURITY_KEY")
    done = runner.invoke(app, ["--no-record", "queries", "--study", SMALL.study_key])
    assert done.exit_code == 1
    assert "IMEDNET_SECURITY_KEY not set: reading them from Prefect" in done.stderr
    assert "no iMednet credential" in done.stderr
    assert fresh_emulator.emulator.requests() == []


def test_sync_and_upsert_refuse_no_record() -> None:
    done = runner.invoke(app, ["--no-record", "sync", "--study", "K"])
    assert done.exit_code == 2 and "always runs as a recorded Prefect flow" in done.stderr


# --------------------------------------------------------------------------- lookups


def test_unknown_subject_points_at_a_command_that_lists_the_keys(
    emulator: EmulatorServer, imednet_env: Env
) -> None:
    imednet_env(emulator)
    missing = runner.invoke(app, ["subject", "--study", K, "--subject", "99-999"])
    assert missing.exit_code == 1
    hint = re.search(r"`imednet-flows (subjects [^`]+)`", missing.stderr)
    assert hint, missing.stderr
    listed = runner.invoke(app, hint.group(1).split())
    assert listed.exit_code == 0, listed.stderr
    truth = emulator.emulator.rows(K, "subjects")
    keys = [line.split()[0] for line in listed.stdout.splitlines()[1:-1]]
    assert keys == [s["subjectKey"] for s in truth]
    assert listed.stdout.splitlines()[-1] == f"{len(truth)} subject(s) in {K}"
    assert "a lookup" in listed.stderr


def test_subjects_shows_site_status_and_soft_deletes(
    fresh_emulator: EmulatorServer, imednet_env: Env
) -> None:
    imednet_env(fresh_emulator)
    emu, k = fresh_emulator.emulator, SMALL.study_key
    emu.mutate(k, "soft_delete", entity="subjects", n=1, seed=3)
    site = emu.rows(k, "sites")[0]["siteName"]
    done = runner.invoke(app, ["subjects", "--study", k, "--filter", f'siteName=="{site}"'])
    assert done.exit_code == 0, done.stderr
    truth = [s for s in emu.rows(k, "subjects") if s["siteName"] == site]
    lines = done.stdout.splitlines()[1:-1]
    assert len(lines) == len(truth)
    for line, row in zip(lines, truth, strict=True):
        assert line.split()[0] == row["subjectKey"] and site in line
        assert row["subjectStatus"] in line
        assert line.endswith("(deleted)") == bool(row["deleted"])


def test_studies_lists_what_the_keys_can_see(emulator: EmulatorServer, imednet_env: Env) -> None:
    imednet_env(emulator)
    done = runner.invoke(app, ["studies"])
    assert done.exit_code == 0, done.stderr
    truth = emulator.emulator.rows(None, "studies")  # type: ignore[arg-type]
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines[1:-1]] == [
        [s["studyKey"], str(s["studyId"])] for s in truth
    ]
    assert all(s["studyName"] in line for s, line in zip(truth, lines[1:-1], strict=True))
    assert lines[-1] == f"{len(truth)} study(ies)" and "a lookup" in done.stderr


@pytest.mark.parametrize(
    ("name", "told"),
    [
        ("IMEDNET_FLOWS_MAX_ATTEMPTS", "a whole number of 1 or more"),
        ("IMEDNET_FLOWS_MAX_CONCURRENCY", "a whole number from 1 to 32"),
    ],
)
def test_a_bad_setting_names_the_variable_not_its_value(
    fresh_emulator: EmulatorServer,
    imednet_env: Env,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    told: str,
) -> None:
    """A value that is not a number used to fail as Python's own "could not convert string
    to float: '...'" (the attempts), naming no variable and repeating the value, or to be
    ignored (the concurrency). Nothing is requested."""
    imednet_env(fresh_emulator)
    monkeypatch.setenv(name, "pasted-secret-by-mistake")
    done = runner.invoke(app, ["studies"])
    assert done.exit_code != 0
    assert name in done.stderr and told in done.stderr, done.stderr
    assert "pasted-secret" not in done.stderr + done.stdout
    assert fresh_emulator.emulator.requests() == []


# --------------------------------------------------------------------------- where a run goes


def test_the_configured_prefect_api_is_found_where_prefect_finds_it(tmp_path: Path) -> None:
    from imednet_flows.recording import configured_api_url, decide

    profiles = tmp_path / "profiles.toml"
    profiles.write_text(
        'active = "local"\n[profiles.local]\nPREFECT_API_URL = "http://127.0.0.1:4200/api"\n'
        '[profiles.cloud]\nPREFECT_API_URL = "https://api.prefect.cloud/api/x"\n'
        "[profiles.ephemeral]\n",
        encoding="utf-8",
    )
    home = {"PREFECT_HOME": str(tmp_path)}
    assert configured_api_url(home) == "http://127.0.0.1:4200/api"
    assert configured_api_url({**home, "PREFECT_PROFILE": "cloud"}).startswith("https://")
    assert configured_api_url({**home, "PREFECT_PROFILE": "ephemeral"}) is None
    assert configured_api_url({**home, "PREFECT_API_URL": "http://h/api"}) == "http://h/api"
    assert configured_api_url({**home, "PREFECT_API_URL": " "}) == "http://127.0.0.1:4200/api"
    moved = {"PREFECT_PROFILES_PATH": str(tmp_path / "none.toml")}
    assert configured_api_url(moved) is None
    (tmp_path / "broken.toml").write_text("active = [", encoding="utf-8")
    assert configured_api_url({"PREFECT_PROFILES_PATH": str(tmp_path / "broken.toml")}) is None
    assert decide(None, home).as_flow and not decide(None, moved).as_flow
    assert decide(True, moved).as_flow and not decide(False, home).as_flow
