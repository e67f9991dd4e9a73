"""Switchable faults: what a flaky network, a rate limiter or a bad deploy do to clients.

Rules are consumed in order, so a test can script "two 429s, then a dropped
connection, then normal service" and get the same sequence on every run.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any, Literal

from imednet_flows.emulator.checks import is_int, is_number

FaultKind = Literal["status", "drop", "truncate", "latency", "commit_then_502"]
FAULT_KINDS: tuple[str, ...] = ("status", "drop", "truncate", "latency", "commit_then_502")
JOB_OUTCOMES: tuple[str, ...] = ("failed", "cancelled", "stuck")


#: Longest latency or Retry-After a fault may ask for.
MAX_SECONDS = 3600.0


def _is_seconds(value: Any) -> bool:
    return is_number(value) and 0 <= value <= MAX_SECONDS


@dataclass
class FaultRule:
    """One switch. `route` is the endpoint's last path segment ("records", "jobs",
    "studies", ...) or "*"; `count` is how many matching requests it affects
    (None: until cleared)."""

    kind: FaultKind
    route: str = "*"
    method: str = "*"
    count: int | None = 1
    status: int = 503
    retry_after: float | None = None
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; choose from {FAULT_KINDS}")
        # Checked here, since a wrong type would otherwise fail every matching request.
        for name in ("route", "method"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.count is not None and not is_int(self.count):
            raise ValueError(f"count must be an integer or null, got {self.count!r}")
        if not is_int(self.status):
            raise ValueError(f"status must be an integer, got {self.status!r}")
        if not _is_seconds(self.seconds):
            raise ValueError(f"seconds must be from 0 to {MAX_SECONDS:g}, got {self.seconds!r}")
        if self.retry_after is not None and not _is_seconds(self.retry_after):
            raise ValueError(
                f"retry_after must be from 0 to {MAX_SECONDS:g} or null, got {self.retry_after!r}"
            )
        self.method = self.method.upper()
        if self.kind == "status" and not 400 <= self.status <= 599:
            raise ValueError(f"a status fault needs a 4xx/5xx status, got {self.status}")
        if self.kind == "commit_then_502" and self.method not in ("POST", "*"):
            raise ValueError("commit_then_502 applies to POST only")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be >= 1, or None for 'until cleared'")

    def matches(self, route: str, method: str) -> bool:
        if self.kind == "commit_then_502" and method != "POST":
            return False
        return self.route in ("*", route) and self.method in ("*", method)


@dataclass(frozen=True)
class FaultPlan:
    """What to do to one request: sleep first, then at most one failure."""

    latency: float = 0.0
    fault: FaultRule | None = None


class FaultBoard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._job_outcomes: list[list[Any]] = []  # [outcome, remaining]

    def add(self, rule: FaultRule) -> None:
        with self._lock:
            self._rules.append(rule)

    def add_job_outcome(self, outcome: str, count: int = 1) -> None:
        if outcome not in JOB_OUTCOMES:
            raise ValueError(f"unknown job outcome {outcome!r}; choose from {JOB_OUTCOMES}")
        if not is_int(count) or count < 1:
            raise ValueError(f"count must be an integer >= 1, got {count!r}")
        with self._lock:
            self._job_outcomes.append([outcome, count])

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._job_outcomes.clear()

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(r) for r in self._rules]

    def plan(self, route: str, method: str) -> FaultPlan:
        """Consume the rules that apply to this request."""
        latency = 0.0
        fault: FaultRule | None = None
        with self._lock:
            for rule in list(self._rules):
                if not rule.matches(route, method):
                    continue
                if rule.kind == "latency":
                    latency += rule.seconds
                elif fault is None:
                    fault = rule
                else:
                    continue
                if rule.count is not None:
                    rule.count -= 1
                    if rule.count == 0:
                        self._rules.remove(rule)
        return FaultPlan(latency=latency, fault=fault)

    def next_job_outcome(self) -> str:
        with self._lock:
            if not self._job_outcomes:
                return "completed"
            entry = self._job_outcomes[0]
            entry[1] -= 1
            if entry[1] == 0:
                self._job_outcomes.pop(0)
            return entry[0]
