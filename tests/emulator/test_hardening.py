"""The emulator under hostile or careless input: oversized and unauthenticated bodies,
out-of-range paging, ill-typed admin calls, re-seeding a study, binding off loopback.

Raw HTTP against a fresh emulator; the body tests speak HTTP/1.1 through h11 on a plain
socket, since they must send headers without (all of) the body that follows."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Iterator
from typing import Any

import h11
import httpx
import orjson
import pytest
from typer.testing import CliRunner

from imednet_flows import cli
from imednet_flows.emulator import Emulator, EmulatorClient, EmulatorServer, StudySpec
from imednet_flows.emulator import server as server_module
from imednet_flows.emulator.server import is_loopback_host, remote_bind_warning
from imednet_flows.emulator.store import StudyExists
from tests.conftest import SMALL
from tests.emulator.test_contract import AUTH

K = SMALL.study_key
RECORDS = f"/api/v1/edc/studies/{K}/records"
LIMIT = 64 * 1024
TIMEOUT = 5.0


# --------------------------------------------------------------------------- helpers


def exchange(
    server: EmulatorServer,
    headers: dict[str, str],
    chunks: Iterable[bytes] = (),
    finish: bool = False,
    target: str = RECORDS,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST `headers`, send `chunks` of body (ending the body only if `finish`), then read
    the answer. A server that waits for the rest of the body times out here."""
    conn = h11.Connection(our_role=h11.CLIENT)
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        head = {"host": "emulator", **headers}
        sock.sendall(
            conn.send(h11.Request(method="POST", target=target, headers=list(head.items())))
        )
        for chunk in chunks:
            sock.sendall(conn.send(h11.Data(data=chunk)))
        if finish:
            sock.sendall(conn.send(h11.EndOfMessage()))
        status, response_headers, body = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(65536)  # socket.timeout if the server never answers
                conn.receive_data(data)
                if not data:
                    break
            elif isinstance(event, h11.Response):
                status = event.status_code
                response_headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    return status, response_headers, orjson.loads(body) if body else {}


@pytest.fixture
def limited(fresh_emulator: EmulatorServer) -> Iterator[EmulatorServer]:
    fresh_emulator.emulator.configure(max_body_bytes=LIMIT)
    yield fresh_emulator


def api_error(body: dict[str, Any]) -> dict[str, Any]:
    assert body["metadata"]["status"] == "ERROR"
    return body["metadata"]["error"]


def a_record(server: EmulatorServer) -> dict[str, Any]:
    return next(r for r in server.emulator.rows(K, "records") if not r["deleted"])


# --------------------------------------------------------------------------- request bodies


def test_declared_oversized_body_is_413_before_any_of_it_is_sent(limited: EmulatorServer) -> None:
    headers = {**AUTH, "content-type": "application/json", "content-length": str(LIMIT + 1)}
    status, _, body = exchange(limited, headers)  # not one byte of the body sent
    assert status == 413
    error = api_error(body)
    assert error["message"] and f"{LIMIT:,} bytes" in error["description"]
    assert limited.emulator.jobs == {}
    assert [e.status for e in limited.emulator.requests()] == [413]


def test_chunked_body_is_413_once_it_passes_the_limit(limited: EmulatorServer) -> None:
    headers = {**AUTH, "content-type": "application/json", "transfer-encoding": "chunked"}
    chunks = [b"[" + b" " * 4095] * (LIMIT // 4096 + 2)  # over the limit, never finished
    status, _, body = exchange(limited, headers, chunks)
    assert status == 413 and "send fewer records" in api_error(body)["description"]
    assert limited.emulator.jobs == {}


def test_body_at_the_limit_is_accepted(limited: EmulatorServer) -> None:
    record = a_record(limited)
    item = {"formKey": record["formKey"], "recordId": record["recordId"], "data": {}}
    payload = httpx.Request("POST", "/", json=[item]).content
    padded = payload + b" " * (LIMIT - len(payload))  # JSON allows trailing whitespace
    headers = {**AUTH, "content-type": "application/json", "transfer-encoding": "chunked"}
    chunks = [padded[i : i + 1000] for i in range(0, len(padded), 1000)]
    status, _, body = exchange(limited, headers, chunks, finish=True)
    assert status == 202 and body["state"] == "created"


def test_unauthenticated_post_is_401_without_reading_the_body(limited: EmulatorServer) -> None:
    status, _, body = exchange(limited, {"content-length": str(10 * 2**20)})
    assert status == 401 and api_error(body)["code"] == "9001"
    # the same over the limit: credentials are checked first
    status, _, _ = exchange(limited, {"content-length": str(LIMIT * 4), "x-api-key": "nope"})
    assert status == 401


def test_connection_stays_usable_after_an_early_answer(limited: EmulatorServer) -> None:
    with httpx.Client(base_url=limited.base_url, timeout=TIMEOUT) as client:
        too_big = client.post(RECORDS, content=b"[" + b" " * LIMIT + b"]", headers=AUTH)
        assert too_big.status_code == 413
        unauthenticated = client.post(RECORDS, content=b"[]" + b" " * 1000)
        assert unauthenticated.status_code == 401
        after = client.get(f"/api/v1/edc/studies/{K}/sites", headers=AUTH)
        assert after.status_code == 200 and after.json()["data"]


def test_admin_route_has_the_limit_too(limited: EmulatorServer) -> None:
    status, _, body = exchange(
        limited, {"content-length": str(LIMIT + 1)}, target="/_emulator/config"
    )
    assert status == 413 and "bytes" in body["error"]


# --------------------------------------------------------------------------- paging bounds


@pytest.mark.parametrize(
    "params",
    [
        {"page": "99999999999999999999"},
        {"size": "99999999999999999999"},
        {"page": "2147483648"},
        {"size": "2147483648"},
        {"page": "1_0"},
        {"page": " 1"},
        {"page": "9" * 5000},
    ],
)
def test_out_of_range_paging_is_400_naming_the_parameter(
    fresh_emulator: EmulatorServer, params: dict[str, str]
) -> None:
    response = httpx.get(fresh_emulator.base_url + RECORDS, params=params, headers=AUTH)
    assert response.status_code == 400
    error = api_error(response.json())
    assert error["code"] == "1000" and error["field"]["attribute"] == next(iter(params))


def test_largest_page_is_an_empty_page(fresh_emulator: EmulatorServer) -> None:
    response = httpx.get(
        fresh_emulator.base_url + RECORDS,
        params={"page": str(2**31 - 1), "size": str(2**31 - 1)},
        headers=AUTH,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["data"] == [] and body["pagination"]["size"] == 500


# --------------------------------------------------------------------------- admin config


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        ({"job_delay": "x"}, "job_delay must be seconds"),
        ({"job_delay": -1}, "job_delay must be seconds"),
        ({"job_delay": True}, "job_delay must be seconds"),
        ({"job_delay": 1e9}, "job_delay must be seconds"),
        ({"unknown_study_status": "abc"}, "unknown_study_status must be 403 or 404"),
        ({"unknown_study_status": 200}, "unknown_study_status must be 403 or 404"),
        ({"strict_role_dates": "yes"}, "strict_role_dates must be true or false"),
        ({"max_body_bytes": 0}, "max_body_bytes must be an integer"),
        ({"max_body_bytes": 1.5}, "max_body_bytes must be an integer"),
        ({"api_key": "stolen"}, "cannot be set here"),
        ({"no_such_field": 1}, "cannot be set here"),
        ({"job_delay": 0.5, "unknown_study_status": "abc"}, "unknown_study_status"),
    ],
)
def test_ill_typed_config_is_400_and_changes_nothing(
    fresh_emulator: EmulatorServer, change: dict[str, Any], phrase: str
) -> None:
    before = dict(fresh_emulator.emulator.config.__dict__)
    response = httpx.post(fresh_emulator.base_url + "/_emulator/config", json=change)
    assert response.status_code == 400 and phrase in response.json()["error"]
    assert fresh_emulator.emulator.config.__dict__ == before
    # and the API still answers, jobs included
    record = a_record(fresh_emulator)
    item = {"formKey": record["formKey"], "recordId": record["recordId"], "data": {}}
    posted = httpx.post(fresh_emulator.base_url + RECORDS, json=[item], headers=AUTH)
    assert posted.status_code == 202
    job = httpx.get(
        f"{fresh_emulator.base_url}/api/v1/edc/studies/{K}/jobs/{posted.json()['batchId']}",
        headers=AUTH,
    )
    assert job.status_code == 200 and job.json()["state"] == "completed"
    unknown = httpx.get(f"{fresh_emulator.base_url}/api/v1/edc/studies/NOPE/sites", headers=AUTH)
    assert unknown.status_code == 403


def test_valid_config_applies(fresh_emulator: EmulatorServer) -> None:
    admin = EmulatorClient(fresh_emulator.base_url, timeout=TIMEOUT)
    try:
        admin.configure(unknown_study_status=404, job_delay=0.25)
        config = fresh_emulator.emulator.config
        assert (config.unknown_study_status, config.job_delay) == (404, 0.25)
        with pytest.raises(ValueError, match="job_delay must be seconds"):
            admin.configure(job_delay="soon")
    finally:
        admin.close()


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/_emulator/config", [1, 2]),
        ("/_emulator/faults", {"kind": "latency", "seconds": "x"}),
        ("/_emulator/faults", {"kind": "status", "status": "x"}),
        ("/_emulator/faults", {"kind": "status", "count": "2"}),
        ("/_emulator/faults", {"kind": "status", "route": 5}),
        ("/_emulator/job-outcomes", {"outcome": "failed", "count": "2"}),
        (f"/_emulator/studies/{K}/mutations/edit_records", {"values": [1]}),
    ],
)
def test_ill_typed_admin_bodies_are_400_and_the_api_keeps_working(
    fresh_emulator: EmulatorServer, route: str, body: Any
) -> None:
    response = httpx.post(fresh_emulator.base_url + route, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]
    assert fresh_emulator.emulator.faults.rules() == []
    sites = httpx.get(f"{fresh_emulator.base_url}/api/v1/edc/studies/{K}/sites", headers=AUTH)
    assert sites.status_code == 200


# --------------------------------------------------------------------------- adding a study


def test_adding_an_existing_study_is_refused_unless_replace(fresh_emulator: EmulatorServer) -> None:
    emulator = fresh_emulator.emulator
    edited = emulator.mutate(K, "edit_records", n=3, seed=1, at="2031-01-01 00:00:00")
    before = emulator.rows(K, "records")
    url = fresh_emulator.base_url + "/_emulator/studies"
    spec = {"study_key": K, "study_id": SMALL.study_id, "seed": SMALL.seed, "subjects": 2}

    refused = httpx.post(url, json=spec)
    assert refused.status_code == 409 and "replace" in refused.json()["error"]
    assert emulator.rows(K, "records") == before
    with pytest.raises(StudyExists, match="already exists"):
        emulator.add_study(StudySpec(study_key=K))
    assert emulator.rows(K, "records") == before

    replaced = httpx.post(url, json={**spec, "replace": True})
    assert replaced.status_code == 200 and replaced.json()["studies"] == [K]
    records = emulator.rows(K, "records")
    assert len(records) == StudySpec(**spec).record_count
    assert all(r["dateModified"] != edited["at"] for r in records)


def test_admin_client_adds_and_refuses_studies(fresh_emulator: EmulatorServer) -> None:
    admin = EmulatorClient(fresh_emulator.base_url, timeout=TIMEOUT)
    try:
        assert admin.add_study(study_key="NEW-1", study_id=9, subjects=2) == [K, "NEW-1"]
        with pytest.raises(ValueError, match="already exists"):
            admin.add_study(study_key="NEW-1", study_id=9, subjects=2)
        with pytest.raises(ValueError, match="unknown study field"):
            admin.add_study(study_key="NEW-2", subjcts=2)
        with pytest.raises(ValueError, match="subjects must be an integer"):
            admin.add_study(study_key="NEW-2", subjects="2")
        assert fresh_emulator.emulator.study_keys == [K, "NEW-1"]
    finally:
        admin.close()


def test_duplicate_specs_are_refused_at_start() -> None:
    with pytest.raises(StudyExists):
        Emulator([StudySpec(study_key="DUP", subjects=1), StudySpec(study_key="DUP", subjects=1)])


# --------------------------------------------------------------------------- binding


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.20", False),
        ("10.0.0.1", False),
        ("emulator.example.org", False),
    ],
)
def test_loopback_decision(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
    warning = remote_bind_warning(host)
    assert (warning is None) is loopback
    if warning is not None:
        assert "admin routes" in warning and "no key" in warning


class _Refused(Exception):
    pass


def _refuse_to_bind(*args: object, **kwargs: object) -> None:
    raise _Refused("the test stopped a bind to a non-loopback address")


def test_cli_refuses_a_remote_host_without_allow_remote(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "EmulatorServer", _refuse_to_bind)  # nothing may bind here
    monkeypatch.setattr(cli, "Emulator", _refuse_to_bind)
    result = CliRunner().invoke(cli.app, ["emulator", "--host", "0.0.0.0", "--subjects", "1"])
    assert result.exit_code == 2, result.output
    assert "--allow-remote" in result.output and "--host" in result.output
    assert not isinstance(result.exception, _Refused)


def test_cli_warns_on_stderr_with_allow_remote(monkeypatch: pytest.MonkeyPatch) -> None:
    class Recorder:
        """Stands in for EmulatorServer: a remote bind must not happen in a test."""

        hosts: list[str] = []

        def __init__(self, emulator: Emulator, host: str, port: int, **kwargs: object) -> None:
            Recorder.hosts.append(host)
            self.base_url = "http://192.0.2.1:1"

        def serve_forever(self) -> None:
            return None

    monkeypatch.setattr(cli, "EmulatorServer", Recorder)
    result = CliRunner(mix_stderr=False).invoke(
        cli.app, ["emulator", "--host", "0.0.0.0", "--allow-remote", "--subjects", "1"]
    )
    assert result.exit_code == 0, result.output
    assert Recorder.hosts == ["0.0.0.0"]
    assert "WARNING" in result.stderr and "admin routes" in result.stderr
    assert "WARNING" not in result.stdout


def test_cli_refuses_a_repeated_study(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "EmulatorServer", _refuse_to_bind)  # would serve forever
    result = CliRunner().invoke(cli.app, ["emulator", "--study", "A", "--study", "A"])
    assert result.exit_code == 2 and "--study" in result.output


def test_server_logs_a_warning_off_loopback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_bind = server_module._bind
    bound: list[str] = []

    def loopback_instead(host: str, port: int) -> socket.socket:
        bound.append(host)
        return real_bind("127.0.0.1", port)  # never a remote interface in a test

    monkeypatch.setattr(server_module, "_bind", loopback_instead)
    emulator = Emulator([StudySpec(study_key="W", subjects=1)])
    with caplog.at_level(logging.WARNING, logger=server_module.__name__):
        EmulatorServer(emulator, host="0.0.0.0")._sock.close()
        EmulatorServer(emulator)._sock.close()
    assert bound == ["0.0.0.0", "127.0.0.1"]
    warnings = [r for r in caplog.records if r.name == server_module.__name__]
    assert len(warnings) == 1 and "admin routes" in warnings[0].getMessage()
