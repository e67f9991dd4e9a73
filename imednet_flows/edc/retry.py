"""The one retry layer: inside the SDK's request executor, per HTTP request.

SDK 0.5.0 retries every method, POST included, three times with fixed waits
and ignores Retry-After. We keep its executor (it maps errors and closes
connections correctly) but hand it our policy: transient faults on reads are
retried with exponential backoff, full jitter and Retry-After; a POST is
resent only after a 429, where the API created nothing. Prefect task retries
stay off for API tasks, so attempts never multiply across layers.

The executor has no hook for the wait itself, so the SDK's own wait is set to
zero and the policy sleeps before it answers "retry".
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import orjson
from imednet.core.retry import RetryState

from imednet_flows.settings import settings

logger = logging.getLogger("imednet_flows.retry")

#: Where a parsed body is kept on the response, so a page is parsed once.
PARSED = "imednet_flows.parsed_json"


@dataclass(frozen=True)
class RetrySettings:
    """How hard to try. `configured()` takes them from the environment (see `settings`),
    so tests and operators tune backoff without touching flow parameters."""

    max_attempts: int
    base_delay: float
    max_delay: float
    #: Longest Retry-After honoured; a server asking for more is a failure to report.
    max_retry_after: float

    @classmethod
    def configured(cls) -> RetrySettings:
        s = settings()
        return cls(s.max_attempts, s.backoff_base, s.backoff_max, s.max_retry_after)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("backoff delays cannot be negative")


def is_transient_status(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


def backoff_delay(
    attempt: int,
    settings: RetrySettings,
    retry_after: float | None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before attempt `attempt + 1`: Retry-After when the server gave one,
    else full-jitter exponential backoff (spreads a burst of clients apart)."""
    if retry_after is not None:
        return min(retry_after, settings.max_retry_after)
    ceiling = min(settings.max_delay, settings.base_delay * 2 ** (attempt - 1))
    return ceiling * rng()


def parse_retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP-date: rare for APIs; fall back to our own backoff


def body_is_complete(response: httpx.Response) -> bool:
    """A 200 whose JSON does not parse was cut off in transit: worth another try.
    The parsed body is kept on the response so the pager need not parse it again."""
    if response.status_code >= 300 or not response.content:
        return True
    try:
        response.extensions[PARSED] = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    return True


@dataclass
class TransientRetryPolicy:
    """An `imednet.core.retry.RetryPolicy` for `ImednetSDK(retry_policy=...)`."""

    settings: RetrySettings = field(default_factory=RetrySettings.configured)
    sleep: Callable[[float], None] = time.sleep
    #: Called with (attempt, reason, delay) before each retry, e.g. to log or count.
    on_retry: Callable[[int, str, float], None] | None = None
    #: Called once per HTTP attempt: the SDK's executor asks the policy after each one.
    on_attempt: Callable[[], None] | None = None

    def should_retry(self, state: RetryState) -> bool:
        if self.on_attempt is not None:
            self.on_attempt()
        reason, retry_after = self._reason(state)
        if reason is None or state.attempt_number >= self.settings.max_attempts:
            return False
        delay = backoff_delay(state.attempt_number, self.settings, retry_after)
        if retry_after is not None and retry_after > self.settings.max_retry_after:
            return False
        logger.warning(
            "%s %s; retry %d/%d in %.2fs",
            state.method,
            reason,
            state.attempt_number,
            self.settings.max_attempts - 1,
            delay,
        )
        if self.on_retry is not None:
            self.on_retry(state.attempt_number, reason, delay)
        self.sleep(delay)
        return True

    @staticmethod
    def _reason(state: RetryState) -> tuple[str | None, float | None]:
        """Why this attempt deserves another, or None. POST is resent only after 429."""
        post = (state.method or "").upper() == "POST"
        if state.exception is not None:
            if post or not isinstance(state.exception, httpx.TransportError):
                return None, None
            return f"network error ({type(state.exception).__name__})", None
        response = state.result
        if not isinstance(response, httpx.Response):
            return None, None
        status = response.status_code
        if status == 429:
            return "HTTP 429 rate limited", parse_retry_after(response)
        if is_transient_status(status):
            return (None, None) if post else (f"HTTP {status}", parse_retry_after(response))
        if not post and not body_is_complete(response):
            return "truncated JSON body", None
        return None, None
