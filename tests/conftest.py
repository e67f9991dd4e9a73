"""Shared fixtures: one emulator per session on a loopback port, and the real SDK against it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import certifi
import pytest
from imednet import ImednetSDK

from imednet_flows.edc.client import is_loopback as is_loopback_url
from imednet_flows.emulator import (
    DEMO_API_KEY,
    DEMO_SECURITY_KEY,
    EmulatorServer,
    StudySpec,
    running_emulator,
)
from tests.forked_cli import ForkedCli

#: More than 500 rows of subjects, visits, records and queries: page boundaries get crossed.
BIG = StudySpec(study_key="PHX-101", study_id=1, seed=11, subjects=520)
SMALL = StudySpec(study_key="SMALL", study_id=2, seed=22, subjects=12, sites=2)


# Offline machines log telemetry errors otherwise (and the harness's database gets busier).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _one_ca_file() -> str:
    """A CA file of one certificate for Prefect's API clients in tests.

    Every Prefect client loads its CA file into a new TLS context, about 0.05 s for the whole
    certifi bundle, and a flow run opens several: a tenth of the suite's time. The tests'
    Prefect APIs are plain HTTP on loopback, where no certificate is ever checked."""
    bundle = Path(certifi.where()).read_text()
    end = "-----END CERTIFICATE-----"
    path = Path(tempfile.gettempdir()) / "imednet-flows-tests-ca.pem"
    fd, building = tempfile.mkstemp(dir=path.parent, suffix=".pem")
    with os.fdopen(fd, "w") as out:
        out.write(bundle[: bundle.index(end) + len(end)] + "\n")
    os.replace(building, path)  # whole for any other test run reading it
    return str(path)


os.environ.setdefault("PREFECT_API_SSL_CERT_FILE", _one_ca_file())


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to run against anything but loopback: the SDK defaults to the hosted service."""
    base_url = os.environ.get("IMEDNET_BASE_URL")
    if base_url and not is_loopback_url(base_url):
        raise pytest.UsageError(
            f"IMEDNET_BASE_URL={base_url!r} is not a loopback address. The tests only talk "
            "to the local emulator; unset IMEDNET_BASE_URL or point it at 127.0.0.1."
        )


#: Test files that start a Prefect server of their own (and a worker, or a browser): two of
#: them at once on a two-core machine would starve each other's startup timeouts.
OWN_SERVER_FILES = frozenset({"test_operations.py", "test_browser.py"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` runs the suite in worker processes with `--dist loadgroup`: each file is
    one group, so its module-scoped servers and emulators start once, on one worker; the
    files in `OWN_SERVER_FILES` share a group and run one after the other. That group is
    the longest (about two minutes), so it goes first: the other worker runs the rest
    meanwhile instead of idling through it at the end."""
    for item in items:
        name = item.path.name
        group = "own-prefect-server" if name in OWN_SERVER_FILES else str(item.path)
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: item.path.name not in OWN_SERVER_FILES)  # stable


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorServer]:
    """Read-only session emulator: tests that change data use `fresh_emulator`."""
    with running_emulator([BIG, SMALL]) as server:
        yield server


@pytest.fixture
def fresh_emulator() -> Iterator[EmulatorServer]:
    """A small emulator of one's own, for tests that mutate data or switch faults."""
    with running_emulator([SMALL]) as server:
        yield server


def make_sdk(server: EmulatorServer, **kwargs: object) -> ImednetSDK:
    """The real SDK over real HTTP; backoff 0 keeps its own retries instant in tests."""
    assert is_loopback_url(server.base_url)
    options: dict[str, object] = {"backoff_factor": 0.0}
    options.update(kwargs)
    return ImednetSDK(
        api_key=DEMO_API_KEY, security_key=DEMO_SECURITY_KEY, base_url=server.base_url, **options
    )  # type: ignore[arg-type]


@pytest.fixture
def sdk(emulator: EmulatorServer) -> Iterator[ImednetSDK]:
    with make_sdk(emulator) as client:
        yield client


@pytest.fixture
def fresh_sdk(fresh_emulator: EmulatorServer) -> Iterator[ImednetSDK]:
    with make_sdk(fresh_emulator) as client:
        yield client


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One real, temporary Prefect API for the whole session (starting one costs ~10 s)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # Heartbeats let a server spot crashed deployment runs; in-process test runs need none,
    # and each run would otherwise wait up to a second for the heartbeat thread to stop.
    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        _keep_new_database()
        yield


def _session_database() -> Path:
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    return Path(str(PREFECT_SERVER_DATABASE_CONNECTION_URL.value()).split(":///", 1)[1])


def _new_database() -> Path:
    """Where the session API's database is kept as it started (see `migrated_prefect_db`)."""
    return _session_database().with_name("new-prefect.db")


def _keep_new_database() -> None:
    with (
        contextlib.closing(sqlite3.connect(_session_database())) as src,
        contextlib.closing(sqlite3.connect(_new_database())) as dst,
    ):
        src.backup(dst)


@pytest.fixture(scope="session")
def migrated_prefect_db(prefect_api: None) -> Path:
    """A copy of the session API's database as it started: migrated and empty. `prefect
    server start` on a new PREFECT_HOME spends about 6 s of its 13 s creating its database;
    one that finds this copy as `prefect.db` there starts in about 7 s."""
    return _new_database()


@pytest.fixture(scope="session")
def forked_cli(prefect_api: None) -> ForkedCli:
    """`imednet-flows` runs forked from a server that imported it once (`tests.forked_cli`),
    reporting to the session's Prefect API."""
    from prefect.settings import PREFECT_API_URL

    return ForkedCli({"PREFECT_API_URL": str(PREFECT_API_URL.value())})


@pytest.fixture
def prefect_api_url(prefect_api: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's Prefect API, configured the way a user configures one (PREFECT_API_URL
    in the environment), for code that looks before it imports Prefect."""
    from prefect.settings import PREFECT_API_URL

    url = str(PREFECT_API_URL.value())
    monkeypatch.setenv("PREFECT_API_URL", url)
    return url


@pytest.fixture
def imednet_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[EmulatorServer], None]:
    """Point the flows' client factory at an emulator, the way an operator would: env vars."""

    def point_at(server: EmulatorServer) -> None:
        assert is_loopback_url(server.base_url)
        monkeypatch.setenv("IMEDNET_BASE_URL", server.base_url)
        monkeypatch.setenv("IMEDNET_API_KEY", DEMO_API_KEY)
        monkeypatch.setenv("IMEDNET_SECURITY_KEY", DEMO_SECURITY_KEY)

    return point_at


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry waits in milliseconds; the one test of the real schedule unsets this."""
    monkeypatch.setenv("IMEDNET_FLOWS_BACKOFF_BASE", "0.01")
    monkeypatch.setenv("IMEDNET_FLOWS_BACKOFF_MAX", "0.05")


@pytest.fixture
def clean_stored_credentials() -> Iterator[None]:
    """Secret blocks and the Variable live in the session's Prefect API: a test that stores
    them removes them, or later tests would find keys they did not expect."""
    yield
    from prefect.blocks.system import Secret
    from prefect.variables import Variable

    from imednet_flows.credentials import API_KEY_BLOCK, BASE_URL_VARIABLE, SECURITY_KEY_BLOCK

    for block in (API_KEY_BLOCK, SECURITY_KEY_BLOCK):
        with contextlib.suppress(ValueError):
            Secret.delete(block)
    Variable.unset(BASE_URL_VARIABLE)
