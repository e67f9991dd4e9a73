"""The `imednet-flows` command: help for everything, exit codes, and `configure`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from imednet_flows.cli import app

runner = CliRunner()
COMMANDS = [
    "demo",
    "emulator",
    "sync",
    "extract",
    "studies",
    "subjects",
    "subject",
    "queries",
    "upsert",
    "serve",
    "deploy",
    "configure",
    "cache",
    "cache status",
    "cache export",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output) > 200


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("extract", "Recorded in Prefect as an extract-records-by-criteria flow run when a"),
        ("subject", "Recorded in Prefect as a get-all-subject-data flow run when a"),
        ("queries", "Recorded in Prefect as a get-open-queries flow run when a"),
        ("sync", "Always a recorded Prefect flow run"),
        ("upsert", "Always a recorded Prefect flow run"),
        ("studies", "never recorded in Prefect"),
        ("subjects", "never recorded in Prefect"),
    ],
)
def test_help_says_whether_a_run_is_recorded_in_prefect(command: str, says: str) -> None:
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert says in " ".join(result.output.split())


def test_cache_status_without_a_cache_says_what_to_do(tmp_path: Path) -> None:
    result = runner.invoke(app, ["cache", "status", "--cache", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 1
    assert "run the sync first" in result.output


def test_upsert_rejects_a_missing_rows_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["upsert", "--study", "K", "--rows", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "--rows" in result.output  # usage error names the option


@pytest.mark.usefixtures("prefect_api", "clean_stored_credentials")
def test_configure_stores_blocks_the_client_then_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    from imednet_flows.credentials import resolve_credentials

    for name in ("IMEDNET_API_KEY", "IMEDNET_SECURITY_KEY", "IMEDNET_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    result = runner.invoke(
        app,
        ["configure", "--base-url", "http://127.0.0.1:9"],
        input="api-key-from-prompt\nsecurity-key-from-prompt\n",
    )
    assert result.exit_code == 0, result.output
    assert "api-key-from-prompt" not in result.output  # prompted with hidden input
    credentials = resolve_credentials()
    assert (credentials.api_key, credentials.security_key, credentials.base_url) == (
        "api-key-from-prompt",
        "security-key-from-prompt",
        "http://127.0.0.1:9",
    )
    assert "api-key-from-prompt" not in repr(credentials)


def test_configure_with_an_unreachable_prefect_api_names_it(tmp_path: Path) -> None:
    """A real process: the session's Prefect API must not stand in for the broken one."""
    import os
    import subprocess
    import sys

    url = "http://127.0.0.1:9/api"  # port 9 (discard) is closed on loopback
    env = {
        **os.environ,
        "PREFECT_API_URL": url,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_CLIENT_MAX_RETRIES": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "imednet_flows.cli", "configure"],
        input="an-api-key\na-security-key\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert url in done.stderr and "prefect server start" in done.stderr
    assert "Traceback" not in done.stderr and "an-api-key" not in done.stderr + done.stdout
