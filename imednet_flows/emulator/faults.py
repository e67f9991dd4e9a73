"""Switchable faults: what a flaky network, a rate limiter or a bad deploy do to clients.

Rules are consumed in order, so a test can script "two 429s, then a dropped
connection, then normal service" and get the same sequence on every run.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any, Literal

FaultKind = Literal["status", "drop", "truncate", "latency", "commit_then_502"]
FAULT_KINDS: tuple[str, ...] = ("status", "drop", "truncate", "latency", "commit_then_502")
JOB_OUTCOMES: tuple[str, ...] = ("failed", "cancelled", "stuck")


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
        if count < 1:
            raise ValueError("count must be >= 1")
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
