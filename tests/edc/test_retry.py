"""When to retry, how long to wait, and how often: the retry policy the SDK's executor runs per
HTTP request. A wrong wait or an extra resend is invisible in a flow test that passes.

Pure functions, tested directly; expected values are written out by hand, never computed
by the code under test.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from imednet.core.retry import RetryState

from imednet_flows.edc.client import Credentials, ImednetClient
from imednet_flows.edc.errors import ImednetFlowsError
from imednet_flows.edc.retry import (
    PARSED,
    RetrySettings,
    TransientRetryPolicy,
    backoff_delay,
    parse_retry_after,
)
from imednet_flows.emulator import DEMO_API_KEY, DEMO_SECURITY_KEY, EmulatorServer

#: Explicit settings: the autouse `fast_backoff` fixture changes the environment defaults.
SETTINGS = RetrySettings(max_attempts=6, base_delay=1.0, max_delay=30.0, max_retry_after=120.0)


# ------------------------------------------------------------------------------ backoff_delay


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 30.0), (12, 30.0)],
)
def test_backoff_grows_exponentially_up_to_the_cap(attempt: int, expected: float) -> None:
    # rng -> 1.0 exposes the ceiling of the full-jitter draw
    assert backoff_delay(attempt, SETTINGS, None, rng=lambda: 1.0) == expected


def test_backoff_is_full_jitter_over_the_ceiling() -> None:
    assert backoff_delay(3, SETTINGS, None, rng=lambda: 0.25) == 1.0  # 4 s ceiling x 0.25
    assert backoff_delay(3, SETTINGS, None, rng=lambda: 0.0) == 0.0
    custom = RetrySettings(max_attempts=3, base_delay=0.5, max_delay=3.0, max_retry_after=10.0)
    assert backoff_delay(4, custom, None, rng=lambda: 1.0) == 3.0  # 0.5 * 8 = 4, capped at 3


def _no_jitter() -> float:
    pytest.fail("with a Retry-After the jitter must not be drawn")


def test_retry_after_is_honoured_and_capped() -> None:
    never: Callable[[], float] = _no_jitter
    assert backoff_delay(1, SETTINGS, 7.0, rng=never) == 7.0
    assert backoff_delay(6, SETTINGS, 0.0, rng=never) == 0.0  # "retry now" is not backoff
    assert backoff_delay(1, SETTINGS, 500.0, rng=never) == 120.0


# -------------------------------------------------------------------------- parse_retry_after


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("1.5", 1.5), ("0", 0.0), ("-3", 0.0), (" 12 ", 12.0)],
)
def test_parse_retry_after_numeric(header: str, expected: float) -> None:
    assert parse_retry_after(httpx.Response(429, headers={"Retry-After": header})) == expected


def test_parse_retry_after_http_date_and_missing_give_none() -> None:
    dated = httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert parse_retry_after(dated) is None  # falls back to our own backoff
    assert parse_retry_after(httpx.Response(503)) is None
    assert parse_retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None


# ---------------------------------------------------------------------- TransientRetryPolicy


class Recorder:
    """A no-op sleep and on_retry hook that remember what they were asked."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.retries: list[tuple[int, str, float]] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def on_retry(self, attempt: int, reason: str, delay: float) -> None:
        self.retries.append((attempt, reason, delay))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def policy(recorder: Recorder, settings: RetrySettings = SETTINGS) -> TransientRetryPolicy:
    return TransientRetryPolicy(settings, sleep=recorder.sleep, on_retry=recorder.on_retry)


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
    return httpx.Response(status, content=body, headers=headers)


def decide(
    recorder: Recorder,
    method: str,
    result: Any = None,
    exception: BaseException | None = None,
    attempt: int = 1,
) -> bool:
    state = RetryState(attempt_number=attempt, exception=exception, result=result, method=method)
    return policy(recorder).should_retry(state)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_get_retries_transient_statuses(recorder: Recorder, status: int) -> None:
    assert decide(recorder, "GET", response(status), attempt=2) is True
    assert len(recorder.sleeps) == 1
    assert 0.0 <= recorder.sleeps[0] <= 2.0  # attempt 2: full jitter under a 2 s ceiling
    reason = "HTTP 429 rate limited" if status == 429 else f"HTTP {status}"
    assert recorder.retries == [(2, reason, recorder.sleeps[0])]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_get_does_not_retry_client_errors(recorder: Recorder, status: int) -> None:
    assert decide(recorder, "GET", response(status, b'{"metadata": {}}')) is False
    assert recorder.sleeps == []
    assert recorder.retries == []


def test_retry_after_header_sets_the_wait(recorder: Recorder) -> None:
    assert decide(recorder, "GET", response(503, headers={"Retry-After": "3"})) is True
    assert recorder.sleeps == [3.0]


def test_retry_after_beyond_the_limit_gives_up(recorder: Recorder) -> None:
    """A server asking for 10 minutes is a failure to report, not a wait to sit through."""
    assert decide(recorder, "GET", response(429, headers={"Retry-After": "600"})) is False
    assert recorder.sleeps == []


def test_post_503_is_not_resent(recorder: Recorder) -> None:
    """The server may have created the records before failing: resending could duplicate."""
    assert decide(recorder, "POST", response(503)) is False
    assert decide(recorder, "post", response(500)) is False
    assert recorder.sleeps == []


def test_post_429_is_resent(recorder: Recorder) -> None:
    """A rate-limited POST created nothing, so sending it again is safe."""
    assert decide(recorder, "POST", response(429, headers={"Retry-After": "1"})) is True
    assert recorder.sleeps == [1.0]
    assert recorder.retries[0][1] == "HTTP 429 rate limited"


def test_network_error_retried_on_get_not_on_post(recorder: Recorder) -> None:
    error = httpx.ConnectError("connection refused")
    assert decide(recorder, "GET", exception=error) is True
    assert recorder.retries[0][1] == "network error (ConnectError)"
    assert decide(recorder, "POST", exception=httpx.ReadTimeout("slow")) is False
    assert len(recorder.sleeps) == 1


def test_non_network_exception_is_not_retried(recorder: Recorder) -> None:
    assert decide(recorder, "GET", exception=ValueError("a bug, not a fault")) is False
    assert recorder.sleeps == []


def test_truncated_json_body_retried_on_get(recorder: Recorder) -> None:
    assert decide(recorder, "GET", response(200, b'{"data": [{"recordId": 1}, {"rec')) is True
    assert recorder.retries[0][1] == "truncated JSON body"


def test_complete_body_is_parsed_once_and_kept(recorder: Recorder) -> None:
    ok = response(200, b'{"data": [1, 2], "pagination": {"totalPages": 1}}')
    assert decide(recorder, "GET", ok) is False
    assert ok.extensions[PARSED] == {"data": [1, 2], "pagination": {"totalPages": 1}}


def test_truncated_body_on_post_is_not_resent(recorder: Recorder) -> None:
    assert decide(recorder, "POST", response(200, b'{"batchId": "b-')) is False


@pytest.mark.parametrize(("attempt", "expected"), [(1, True), (5, True), (6, False), (9, False)])
def test_attempts_are_capped_at_max_attempts(
    recorder: Recorder, attempt: int, expected: bool
) -> None:
    assert decide(recorder, "GET", response(503), attempt=attempt) is expected
    assert len(recorder.sleeps) == int(expected)


def test_sdk_executor_stops_at_max_attempts() -> None:
    """End to end through SDK 0.5.0's own executor (no server: an httpx MockTransport):
    a GET that always answers 503 is sent exactly max_attempts times, then explained."""
    calls: list[str] = []

    def always_503(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(503, json={"metadata": {"status": "SERVICE_UNAVAILABLE"}})

    settings = RetrySettings(max_attempts=3, base_delay=0.0, max_delay=0.0, max_retry_after=1.0)
    credentials = Credentials("http://127.0.0.1:9", "key", "secret")
    with ImednetClient(credentials, retry=settings) as client:
        client._http._client._transport = httpx.MockTransport(always_503)
        with pytest.raises(ImednetFlowsError, match=r"HTTP 503"):
            client.get("/api/v1/edc/studies", what="listing studies")
        assert calls == ["GET", "GET", "GET"]
        assert client.retries == 2
        assert client.requests == 3


def test_every_attempt_is_counted_once(fresh_emulator: EmulatorServer) -> None:
    """The request counter relies on the SDK asking the retry policy after every attempt,
    a success included (its public `retry_policy` hook): counted requests are exactly what
    the server saw, retries included."""
    fresh_emulator.emulator.add_fault("status", status=503, count=2)
    credentials = Credentials(fresh_emulator.base_url, DEMO_API_KEY, DEMO_SECURITY_KEY)
    settings = RetrySettings(max_attempts=4, base_delay=0.0, max_delay=0.0, max_retry_after=1.0)
    with ImednetClient(credentials, retry=settings) as client:
        for _ in range(3):
            client.get("/api/v1/edc/studies", what="listing studies")
        assert (client.requests, client.retries) == (5, 2)
    assert len(fresh_emulator.emulator.requests()) == 5


def test_a_parsed_page_belongs_to_the_caller_alone(emulator: EmulatorServer) -> None:
    """httpx keeps each response in a reference cycle that only a full garbage collection
    frees; a decoded page left on it (several times the page's bytes) would pile up, page
    after page, in a sync's memory. What `get` returns is referenced by nothing else."""
    credentials = Credentials(emulator.base_url, DEMO_API_KEY, DEMO_SECURITY_KEY)
    enabled = gc.isenabled()
    gc.disable()  # the response's cycle must not be collected before we look
    try:
        with ImednetClient(credentials) as client:
            payload = client.get("/api/v1/edc/studies", what="listing studies")
            assert payload["data"], "the emulator lists its studies"
            holders = [r for r in gc.get_referrers(payload) if isinstance(r, dict)]
            assert holders == [], "the parsed page is still held by the response"
    finally:
        if enabled:
            gc.enable()
