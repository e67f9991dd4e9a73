"""Running the emulator: in a background thread for tests, in the foreground for the CLI,
and an admin client for an emulator that lives in another process."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx
import uvicorn

from imednet_flows.emulator.app import EmulatorApp
from imednet_flows.emulator.handle import Emulator, EmulatorConfig
from imednet_flows.emulator.seed import StudySpec

LOOPBACK = "127.0.0.1"
log = logging.getLogger(__name__)


def is_loopback_host(host: str) -> bool:
    """Whether binding `host` keeps the emulator on this machine.

    "localhost" and loopback addresses (127.0.0.0/8, ::1) do; "", "0.0.0.0", "::" and
    every other address or name bind where others can reach. Names other than localhost
    are not resolved: the answer must not depend on DNS.
    """
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def remote_bind_warning(host: str) -> str | None:
    """The warning binding `host` deserves, or None on loopback."""
    if is_loopback_host(host):
        return None
    return (
        f"WARNING: the iMednet emulator binds {host!r}, which is not loopback. Its admin "
        "routes (/_emulator/...) need no key: anyone who can reach this port can change "
        "or delete its data, switch faults and read the request log. Its API keys are "
        "demo keys unless set. Bind 127.0.0.1 unless you mean this."
    )


def _bind(host: str, port: int) -> socket.socket:
    """Bind before serving so port 0 resolves to a known free port up front."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only disables Nagle on sockets whose protocol says
    # TCP, and without that every small keep-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _server(emulator: Emulator) -> uvicorn.Server:
    config = uvicorn.Config(
        EmulatorApp(emulator),
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=30,
        http="h11",
    )
    return uvicorn.Server(config)


class EmulatorServer:
    """An emulator on a port (loopback unless told otherwise), served from a daemon thread.

    Any other host is logged as a warning: the admin routes have no authentication.
    """

    def __init__(
        self, emulator: Emulator, host: str = LOOPBACK, port: int = 0, warn_remote: bool = True
    ) -> None:
        """`warn_remote=False` is for a caller that has shown `remote_bind_warning` itself."""
        self.emulator = emulator
        warning = remote_bind_warning(host)
        if warning is not None and warn_remote:
            log.warning(warning)
        self._sock = _bind(host, port)
        self.host, self.port = self._sock.getsockname()[:2]
        self._server = _server(emulator)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The origin `ImednetSDK(base_url=...)` takes (the SDK adds /api/v1/edc itself)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> EmulatorServer:
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name="imednet-emulator",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"emulator did not start on {self.base_url}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()

    def serve_forever(self) -> None:
        """Serve in this thread until SIGINT/SIGTERM (uvicorn installs the handlers)."""
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self._sock.close()


@contextmanager
def running_emulator(
    studies: Iterable[StudySpec] = (StudySpec(),),
    config: EmulatorConfig | None = None,
    host: str = LOOPBACK,
    port: int = 0,
) -> Iterator[EmulatorServer]:
    server = EmulatorServer(Emulator(studies, config), host, port).start()
    try:
        yield server
    finally:
        server.stop()


class EmulatorClient:
    """The admin route from another process, with the handle's method names."""

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/") + "/_emulator", timeout=timeout)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self._http.request(method, path, json=body)
        if response.status_code >= 400:
            raise ValueError(f"emulator admin {method} {path}: {response.json().get('error')}")
        return response.json()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._call("GET", "/health")
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def mutate(self, study_key: str, op: str, **kwargs: Any) -> dict[str, Any]:
        return self._call("POST", f"/studies/{study_key}/mutations/{op}", kwargs)

    def counts(self, study_key: str) -> dict[str, int]:
        return self._call("GET", f"/studies/{study_key}/counts")

    def rows(self, study_key: str, route: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/studies/{study_key}/rows/{route}")

    def add_fault(self, kind: str, **kwargs: Any) -> None:
        self._call("POST", "/faults", {"kind": kind, **kwargs})

    def add_job_outcome(self, outcome: str, count: int = 1) -> None:
        self._call("POST", "/job-outcomes", {"outcome": outcome, "count": count})

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def requests(self) -> list[dict[str, Any]]:
        return self._call("GET", "/requests")

    def reset_requests(self) -> None:
        self._call("DELETE", "/requests")

    def configure(self, **fields: Any) -> None:
        self._call("POST", "/config", fields)

    def add_study(self, replace: bool = False, **spec: Any) -> list[str]:
        """Seed a study from StudySpec fields; an existing key needs `replace=True`."""
        return self._call("POST", "/studies", {**spec, "replace": replace})["studies"]

    def remove_study(self, study_key: str) -> list[str]:
        """Take a study away (it leaves /studies, its routes answer 403); the keys left."""
        return self._call("DELETE", f"/studies/{quote(study_key, safe='')}")["studies"]

    def studies(self) -> list[dict[str, Any]]:
        """What `GET /studies` lists: the truth for study discovery."""
        return self._call("GET", "/studies")

    def close(self) -> None:
        self._http.close()
