"""The emulator's Python handle: its data, jobs, faults and request log in one place.

The HTTP app, the admin route and in-process tests all go through this object,
so what a test sets up is exactly what the SDK sees over the wire.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from imednet_flows.emulator.checks import is_int, is_number
from imednet_flows.emulator.entities import ENTITIES, STUDY_ROUTES
from imednet_flows.emulator.faults import FaultBoard, FaultRule
from imednet_flows.emulator.jobs import TERMINAL, Job, advance
from imednet_flows.emulator.mutations import MUTATIONS
from imednet_flows.emulator.quirks import Quirks
from imednet_flows.emulator.seed import StudySpec
from imednet_flows.emulator.store import EmulatorState, StudyStore

#: Documented demo credentials; a real deployment never uses these.
DEMO_API_KEY = "demo-api-key"
DEMO_SECURITY_KEY = "demo-security-key"


#: Longest job_delay accepted: a longer one only ever looks like a hung server.
MAX_JOB_DELAY = 3600.0
#: Largest max_body_bytes accepted (1 GiB).
MAX_BODY_LIMIT = 2**30


@dataclass
class EmulatorConfig:
    """Checked whenever it is built or changed through `Emulator.configure`: one ill-typed
    value would otherwise surface later as a 500 on every API call."""

    api_key: str = DEMO_API_KEY
    security_key: str = DEMO_SECURITY_KEY
    #: Seconds from POST until a job is terminal (half of it in `created`).
    job_delay: float = 0.0
    #: Status for an unknown study: 403 per the API guide, 404 is the alternative.
    unknown_study_status: int = 403
    #: Emit Role dates as the spec's int arrays (which SDK 0.5.0 cannot parse).
    strict_role_dates: bool = False
    #: Request bodies over this many bytes get 413 before they are read (16 MiB).
    max_body_bytes: int = 16 * 2**20
    #: Return posted JSON numbers and booleans as posted instead of the API's strings,
    #: to test a client against a server that echoes typed values.
    echo_typed_values: bool = False
    #: Serve `GET /studies/{K}/jobs` (an optional extension); False answers it with 404.
    jobs_listing: bool = True
    #: Deliberate breaks of what the sync assumes of the API (see `quirks.Quirks`).
    quirks: Quirks = field(default_factory=Quirks)
    #: Routes this key may not use: answered with 403 in the API's envelope, in every
    #: study ("users", "codings", ..., "studies" for the listing, "jobs").
    forbidden_routes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        fields = dataclasses.fields(self)
        problems = [p for f in fields if (p := _config_problem(f.name, getattr(self, f.name)))]
        try:  # the admin route sends quirks as a JSON object
            self.quirks = Quirks.from_json(self.quirks)
        except ValueError as error:
            problems.append(str(error))
        if not problems:
            self.forbidden_routes = list(self.forbidden_routes)
        if problems:
            raise ValueError("; ".join(problems))


def _config_problem(name: str, value: Any) -> str | None:
    """What is wrong with one config value, in words an admin-route caller can act on."""
    if name in ("api_key", "security_key"):  # a key's value is never echoed
        ok = isinstance(value, str) and value != ""
        return None if ok else f"{name} must be a non-empty string"
    got = f"got {value!r} ({type(value).__name__})"
    if name == "job_delay":
        ok = is_number(value) and 0 <= value <= MAX_JOB_DELAY
        return None if ok else f"job_delay must be seconds from 0 to {MAX_JOB_DELAY:g}, {got}"
    if name == "unknown_study_status":
        ok = is_int(value) and value in (403, 404)
        return None if ok else f"unknown_study_status must be 403 or 404, {got}"
    if name == "max_body_bytes":
        ok = is_int(value) and 1 <= value <= MAX_BODY_LIMIT
        return (
            None if ok else f"max_body_bytes must be an integer from 1 to {MAX_BODY_LIMIT}, {got}"
        )
    if name in ("strict_role_dates", "echo_typed_values", "jobs_listing"):
        return None if isinstance(value, bool) else f"{name} must be true or false, {got}"
    if name == "forbidden_routes":
        ok = isinstance(value, list | tuple) and all(r in ROUTE_NAMES for r in value)
        return None if ok else f"forbidden_routes must be a list of {', '.join(ROUTE_NAMES)}; {got}"
    return None


#: What `forbidden_routes` may name: every route of the API by its last fixed segment.
ROUTE_NAMES = ("studies", *STUDY_ROUTES, "jobs")


@dataclass
class RequestEntry:
    seq: int
    method: str
    path: str
    query: dict[str, list[str]]
    started: float
    status: int = 0
    finished: float = 0.0
    fault: str | None = None
    items: int | None = None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RequestLog:
    """What clients sent, so tests can check requests on the server side."""

    entries: list[RequestEntry] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, method: str, path: str, query: dict[str, list[str]]) -> RequestEntry:
        with self.lock:
            entry = RequestEntry(len(self.entries), method, path, query, time.monotonic())
            self.entries.append(entry)
            return entry

    def snapshot(self) -> list[RequestEntry]:
        with self.lock:
            return list(self.entries)

    def reset(self) -> None:
        with self.lock:
            self.entries.clear()


class Emulator:
    """A set of seeded studies plus everything needed to misbehave on purpose.

    The truth a test compares a client's mirror with: `rows(study, route)` for each of the
    11 study routes (sites, forms, intervals, variables, subjects, visits, records,
    recordRevisions, queries, codings, users) is every row the API lists there with its
    most inclusive parameters (no filter; users with includeInactive=true; soft-deleted
    rows with `deleted: true`), in the route's default order, deep-copied, after due jobs
    are applied; `studies()` is what `GET /studies` lists. Neither is touched by quirks,
    faults or `forbidden_routes`: they are the data, not an answer of the API. The admin
    route serves both (`GET /_emulator/studies/{K}/rows/{route}`, `GET /_emulator/studies`).
    """

    def __init__(
        self, studies: Iterable[StudySpec] = (StudySpec(),), config: EmulatorConfig | None = None
    ) -> None:
        self.config = config or EmulatorConfig()
        self.state = EmulatorState(studies)
        self.faults = FaultBoard()
        self.log = RequestLog()
        self.jobs: dict[str, Job] = {}
        #: batchIds of unfinished jobs in creation order (a dict keeps it): jobs due at the
        #: same moment are applied in the order they were posted.
        self._pending: dict[str, None] = {}

    def configure(self, **changes: Any) -> None:
        """Change config fields at run time: all of them, or none if any value is wrong.

        The keys are fixed at start-up, since the admin route that calls this has no
        authentication of its own.
        """
        settable = sorted(f.name for f in dataclasses.fields(self.config))
        settable = [n for n in settable if n not in ("api_key", "security_key")]
        unknown = sorted(set(changes) - set(settable))
        if unknown:
            raise ValueError(
                f"config field(s) {', '.join(map(repr, unknown))} cannot be set here; "
                f"settable: {', '.join(settable)}"
            )
        checked = dataclasses.replace(self.config, **changes)  # raises before any change
        for name in changes:
            setattr(self.config, name, getattr(checked, name))

    # -- data -------------------------------------------------------------
    def add_study(self, spec: StudySpec, replace: bool = False) -> None:
        """Seed one more study; an existing key is refused unless `replace` is true, so a
        typo never wipes a study a test or benchmark has changed."""
        self.state.add_study(spec, replace=replace)

    def remove_study(self, study_key: str) -> None:
        """The study leaves `GET /studies` and its routes answer 403 (unknown study)."""
        self.state.remove_study(study_key)

    @property
    def study_keys(self) -> list[str]:
        return list(self.state.studies)

    def study(self, study_key: str) -> StudyStore:
        return self.state.study(study_key)

    def rows(self, study_key: str | None, route: str) -> list[dict[str, Any]]:
        """The truth a test compares a client's copy with: every row the API lists on
        `route` (one of the 11 study routes) with its most inclusive parameters (no filter,
        users with `includeInactive=true`, soft-deleted rows included), in the route's
        default order, deep-copied, after due jobs are applied. Quirks and
        `forbidden_routes` do not apply: this is the data, not an answer of the API.
        `route="studies"` is `studies()`, whatever `study_key` is."""
        if route == "studies":
            return self.studies()
        if route not in STUDY_ROUTES:
            raise ValueError(
                f"no route {route!r}; choose from {', '.join(STUDY_ROUTES)}, or studies"
            )
        self.advance_jobs()
        with self.state.lock:
            rows = self.state.list_rows(route, study_key, include_inactive=True)
            return copy.deepcopy(rows)

    def studies(self) -> list[dict[str, Any]]:
        """What `GET /studies` lists, deep-copied, in its default order (studyKey)."""
        with self.state.lock:
            return copy.deepcopy(self.state.list_rows("studies", None))

    def counts(self, study_key: str) -> dict[str, int]:
        store = self.study(study_key)
        with self.state.lock:
            return {
                route: len(store.tables[e.table])
                for route, e in ENTITIES.items()
                if e.table != "study"
            }

    def mutate(self, study_key: str, op: str, **kwargs: Any) -> dict[str, Any]:
        """Run one named mutation (see `mutations.MUTATIONS`) under the state lock."""
        try:
            fn = MUTATIONS[op]
        except KeyError:
            raise ValueError(f"unknown mutation {op!r}; choose from {sorted(MUTATIONS)}") from None
        with self.state.lock:
            store = self.study(study_key)
            return fn(store, self.state.clock.now(), **kwargs)

    # -- faults and jobs ----------------------------------------------------
    def add_fault(self, kind: str, **kwargs: Any) -> None:
        self.faults.add(FaultRule(kind=kind, **kwargs))  # type: ignore[arg-type]

    def add_job_outcome(self, outcome: str, count: int = 1) -> None:
        self.faults.add_job_outcome(outcome, count)

    def clear_faults(self) -> None:
        self.faults.clear()

    def requests(self) -> list[RequestEntry]:
        return self.log.snapshot()

    def reset_requests(self) -> None:
        self.log.reset()

    def submit(
        self, study_key: str, items: list[dict[str, Any]], email_notify: str | None = None
    ) -> Job:
        with self.state.lock:  # one order for dateCreated, created_at and the queue
            job = Job(
                study_key=study_key,
                items=items,
                email_notify=email_notify,
                outcome=self.faults.next_job_outcome(),  # type: ignore[arg-type]
                date_created=self.state.clock.now(),
            )
            self.jobs[job.batch_id] = job
            self._pending[job.batch_id] = None
        self.advance_jobs()
        return job

    def advance_jobs(self) -> None:
        """Let time act on pending jobs; cheap when none are pending."""
        if not self._pending:
            return
        with self.state.lock:
            for batch_id in list(self._pending):
                job = self.jobs[batch_id]
                advance(
                    job,
                    self.state.studies.get(job.study_key),
                    self.state.clock.now(),
                    self.config.job_delay,
                    self.config.echo_typed_values,
                )
                if job.state in TERMINAL:
                    del self._pending[batch_id]
