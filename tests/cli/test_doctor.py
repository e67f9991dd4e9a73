"""`imednet-flows doctor` against the emulator, honest and broken on purpose (issue: doctor)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from typer.testing import CliRunner, Result

from imednet_flows.cli import app
from imednet_flows.doctor import ATTEMPTS, MAX_REQUESTS
from imednet_flows.emulator import DEMO_API_KEY, DEMO_SECURITY_KEY, EmulatorServer
from imednet_flows.emulator.quirks import Quirks
from tests.conftest import SMALL

Env = Callable[[EmulatorServer], None]
K = SMALL.study_key
CHECKS = (
    "credentials",
    "study access",
    "server clock",
    "totals match pages",
    "page size honoured",
    "dateModified>= honoured",
    "id filters honoured",
)


def doctor(server: EmulatorServer, *args: str) -> Result:
    server.emulator.reset_requests()
    result = CliRunner().invoke(app, ["doctor", *args])
    assert len(server.emulator.requests()) <= MAX_REQUESTS <= 20, result.output
    assert DEMO_SECURITY_KEY not in result.output and DEMO_API_KEY not in result.output
    return result


def verdicts(output: str) -> dict[str, str]:
    """check -> PASS/FAIL/SKIP, read from the table's rows."""
    found = {}
    for check in CHECKS:
        match = re.search(rf"│ {re.escape(check)}\s+│ (PASS|FAIL|SKIP)", output)
        assert match, f"no row for {check} in\n{output}"
        found[check] = match.group(1)
    return found


def test_an_honest_server_passes_every_check(fresh_emulator: EmulatorServer, imednet_env: Env):
    imednet_env(fresh_emulator)
    result = doctor(fresh_emulator, "--study", K)
    assert result.exit_code == 0, result.output
    assert set(verdicts(result.output).values()) == {"PASS"}
    assert "FAIL" not in result.output
    requests = fresh_emulator.emulator.requests()
    assert {e.method for e in requests} == {"GET"}  # read-only
    # with one retry each, the planned requests stay within the budget whatever happens
    assert len(requests) * ATTEMPTS <= MAX_REQUESTS


def test_without_a_study_the_first_visible_one_is_examined(
    fresh_emulator: EmulatorServer, imednet_env: Env
) -> None:
    imednet_env(fresh_emulator)
    result = doctor(fresh_emulator)
    assert result.exit_code == 0, result.output
    assert f"the keys can read study {K}" in result.output


BROKEN: dict[str, tuple[Quirks, str, str]] = {
    "timestamp missing": (Quirks(timestamp="missing"), "server clock", "without metadata"),
    "timestamp garbage": (Quirks(timestamp="garbage"), "server clock", "not a timestamp"),
    "clock ahead": (Quirks(clock_offset=3600), "server clock", r"s ahead of this machine"),
    "clock behind (local time)": (
        Quirks(clock_offset=-3600),
        "server clock",
        r"row\(s\) modified later",
    ),
    "totalElements off": (Quirks(total_elements_offset=1), "totals match pages", "totalElements"),
    "page size capped": (
        Quirks(page_size_cap=3),
        "page size honoured",
        "pagination.size=3 where 5 was asked",
    ),
    "page size capped, reported as asked": (
        Quirks(page_size_cap=100, page_size_lie=True),
        "totals match pages",
        "fewer rows per page",
    ),
    "dateModified filter ignored": (
        Quirks(ignore_filters=["dateModified"]),
        "dateModified>= honoured",
        "modified before",
    ),
    "id filters ignored": (
        Quirks(ignore_filters=["id"]),
        "id filters honoured",
        "does not apply recordId filters",
    ),
}


@pytest.mark.parametrize("broken", BROKEN)
def test_a_broken_assumption_fails_with_a_clear_line(
    broken: str, fresh_emulator: EmulatorServer, imednet_env: Env
) -> None:
    quirks, check, says = BROKEN[broken]
    imednet_env(fresh_emulator)
    # changes of the last minutes: what a clock in local time is told apart by
    fresh_emulator.emulator.mutate(K, "edit_records", n=3, seed=1)
    fresh_emulator.emulator.configure(quirks=quirks)
    result = doctor(fresh_emulator, "--study", K)
    assert result.exit_code == 1, result.output
    assert verdicts(result.output)[check] == "FAIL"
    line = re.search(rf"^FAIL {re.escape(check)}: GET \S+ \(page 0, size.*$", result.output, re.M)
    assert line and re.search(says, line.group(0)), result.output
    assert verdicts(result.output)["credentials"] == "PASS"


def test_wrong_keys_fail_on_the_first_request(
    fresh_emulator: EmulatorServer, imednet_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    imednet_env(fresh_emulator)
    monkeypatch.setenv("IMEDNET_SECURITY_KEY", "not-the-key-123")
    result = doctor(fresh_emulator, "--study", K)
    assert result.exit_code == 1
    assert re.search(r"^FAIL credentials: .*rejected \(HTTP 401\)", result.output, re.M)
    assert verdicts(result.output)["study access"] == "SKIP"
    assert len(fresh_emulator.emulator.requests()) == 1
    assert "not-the-key-123" not in result.output


def test_an_unknown_study_fails_study_access(
    fresh_emulator: EmulatorServer, imednet_env: Env
) -> None:
    imednet_env(fresh_emulator)
    result = doctor(fresh_emulator, "--study", "NOPE")
    assert result.exit_code == 1
    assert re.search(r"^FAIL study access: .*HTTP 403.*study key", result.output, re.M)
    assert verdicts(result.output)["credentials"] == "PASS"
    assert verdicts(result.output)["server clock"] == "SKIP"


def test_a_server_failing_every_study_request_fails_study_access(
    fresh_emulator: EmulatorServer, imednet_env: Env
) -> None:
    imednet_env(fresh_emulator)
    fresh_emulator.emulator.add_fault("status", status=503, route="records", count=None)
    result = doctor(fresh_emulator, "--study", K)
    assert result.exit_code == 1
    assert re.search(r"^FAIL study access: .*HTTP 503", result.output, re.M)


def test_a_request_failing_mid_examination_fails_the_assumption_it_tested(
    fresh_emulator: EmulatorServer, imednet_env: Env
) -> None:
    imednet_env(fresh_emulator)
    fresh_emulator.emulator.add_fault("status", status=503, route="subjects", count=None)
    fresh_emulator.emulator.add_fault("status", status=503, route="visits", count=None)
    fresh_emulator.emulator.add_fault("status", status=503, route="queries", count=None)
    result = doctor(fresh_emulator, "--study", K)
    assert result.exit_code == 1
    assert re.search(r"^FAIL totals match pages: .*HTTP 503", result.output, re.M)


def test_missing_credentials_say_what_to_set(
    fresh_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, prefect_api: None
) -> None:
    monkeypatch.setenv("IMEDNET_BASE_URL", fresh_emulator.base_url)
    monkeypatch.delenv("IMEDNET_API_KEY", raising=False)
    monkeypatch.delenv("IMEDNET_SECURITY_KEY", raising=False)
    result = doctor(fresh_emulator, "--study", K)
    assert result.exit_code == 1
    assert "FAIL credentials: no iMednet credential: set the environment variable" in (
        result.output
    )
    assert fresh_emulator.emulator.requests() == []


@pytest.mark.usefixtures("clean_stored_credentials")
def test_keys_from_secret_blocks_as_the_flows_use_them(
    fresh_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch, prefect_api: None
) -> None:
    from imednet_flows.credentials import store_credentials

    store_credentials(DEMO_API_KEY, DEMO_SECURITY_KEY, fresh_emulator.base_url)
    for name in ("IMEDNET_BASE_URL", "IMEDNET_API_KEY", "IMEDNET_SECURITY_KEY"):
        monkeypatch.delenv(name, raising=False)
    result = doctor(fresh_emulator, "--study", K)
    assert result.exit_code == 0, result.output
    assert f"iMednet API at {fresh_emulator.base_url}" in result.output


def test_help_says_what_it_does() -> None:
    result = CliRunner().invoke(app, ["doctor", "--help"])
    assert result.exit_code == 0
    assert "read-only" in result.output and "--study" in result.output
