"""One connection to one iMednet API: the SDK's HTTP client, our retry policy, a
concurrency bound and a request counter that run summaries report.

Only the SDK's public API is used: `imednet.core.Client` (its executor maps errors and
closes connections correctly) with our `retry_policy`. The SDK consults that policy after
every HTTP attempt, so the policy is also where attempts are counted.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from imednet.constants import DEFAULT_BASE_URL
from imednet.core import Client

from imednet_flows.edc.errors import ImednetFlowsError, explain
from imednet_flows.edc.retry import PARSED, RetrySettings, TransientRetryPolicy
from imednet_flows.settings import settings

API_ROOT = "/api/v1/edc/studies"
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class Credentials:
    """Where to connect and with which keys. `repr` never shows the keys."""

    base_url: str | None
    api_key: str = field(repr=False)
    security_key: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.api_key or not self.security_key:
            missing = [
                n
                for n, v in (("API key", self.api_key), ("security key", self.security_key))
                if not v
            ]
            raise ValueError(f"iMednet {' and '.join(missing)} missing")


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ImednetClient:
    """Shared by every task of a flow run: its semaphore is the run's concurrency bound.
    `retry` and `max_concurrency` default to the settings (`IMEDNET_FLOWS_*`)."""

    def __init__(
        self,
        credentials: Credentials,
        retry: RetrySettings | None = None,
        max_concurrency: int | None = None,
        timeout: float = 30.0,
        credentials_source: Callable[[], Credentials] | None = None,
    ) -> None:
        if max_concurrency is None:
            max_concurrency = settings().max_concurrency
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._options = (retry, max_concurrency, timeout, credentials_source)
        self.max_concurrency = max_concurrency
        self.retry = retry or RetrySettings.configured()
        self.base_url = credentials.base_url
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0
        self._slots = threading.BoundedSemaphore(max_concurrency)
        # The origin is always given: the SDK would otherwise read IMEDNET_BASE_URL itself.
        self._http = Client(
            api_key=credentials.api_key,
            security_key=credentials.security_key,
            base_url=credentials.base_url or DEFAULT_BASE_URL,
            timeout=timeout,
            retries=self.retry.max_attempts,
            backoff_factor=0.0,
            retry_policy=TransientRetryPolicy(
                self.retry, on_retry=self._count_retry, on_attempt=self._count_request
            ),
        )

    def _count_request(self) -> None:
        with self._lock:
            self.requests += 1

    def _count_retry(self, _attempt: int, _reason: str, _delay: float) -> None:
        with self._lock:
            self.retries += 1

    def __getstate__(self) -> dict[str, Any]:
        """A client travels to another process (a Dask worker) without its keys: it is
        rebuilt there from the same source (environment or Secret blocks). Its request
        bound then applies per process."""
        if self._options[3] is None:
            raise TypeError(
                "this ImednetClient has no credentials_source to rebuild from, "
                "so it cannot be sent to another process"
            )
        return {"options": self._options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        retry, max_concurrency, timeout, source = state["options"]
        self.__init__(source(), retry, max_concurrency, timeout, source)  # type: ignore[misc]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ImednetClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._slots:
            yield

    def get(self, path: str, params: dict[str, Any] | None = None, what: str = "") -> Any:
        """GET and parse JSON, through the retry policy; errors say what to do.

        The parsed body is taken off the response, not read from it: httpx keeps every
        response in a reference cycle, freed only by a full garbage collection, and a page's
        decoded items (several times its bytes) must go as soon as the caller drops them.
        """
        try:
            with self.slot():
                response = self._http.get(path, params=params)
            payload = response.extensions.pop(PARSED, None)
            return payload if payload is not None else orjson.loads(response.content)
        except Exception as exc:  # orjson's decode error is a json.JSONDecodeError
            raise explain(exc, what or f"GET {path}") from exc

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        """POST once (a 429 may be resent: nothing was created); other failures raise."""
        with self.slot():
            response = self._http.post(path, json=body, headers=headers)
        return response.json()


def study_path(study_key: str, *rest: str) -> str:
    """The SDK's path form: each segment quoted with safe="" (a key may hold '/')."""
    if not study_key.strip():
        raise ImednetFlowsError(
            "a study key is empty; give it as iMednet shows it, e.g. PHX-101 (nothing was "
            "requested)"
        )
    return "/".join([API_ROOT, quote(study_key, safe=""), *(quote(r, safe="") for r in rest)])
