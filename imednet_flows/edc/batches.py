"""Record batches for POST /records: posted without duplicates, followed to the end
of their job.

A POST to iMednet starts an asynchronous job, and the request itself is not
idempotent: SDK 0.5.0 resends it after a 5xx, but a 5xx or a dropped
connection can come after the API already accepted the batch
("commit-then-502"), and a blind resend then writes every row twice (a second
revision per record, a second unscheduled record, a second subject). So a
batch is POSTed once. After an ambiguous failure a row is sent again only when
it is proven absent: the jobs listing works, every job created since the POST
has ended, and reading back (`landing`) finds no trace of the row, or no job was
created at all. A slow job, a stuck one or a server without the jobs listing
leaves the rows undecided: the batch stops within the caller's timeout, naming
them. The rows are checked before any of this, in `validation`.

Row numbers in every message are 1-based, counted over the whole input.

No Prefect imports: the tasks in `tasks/records.py` wrap these functions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from imednet.errors import NotFoundError, RequestError, ServerError
from pydantic import BaseModel, Field

from imednet_flows.edc.client import ImednetClient, study_path
from imednet_flows.edc.criteria import restricted
from imednet_flows.edc.errors import ImednetFlowsError, explain
from imednet_flows.edc.landing import Landing, at_or_after, landed_rows, since_for
from imednet_flows.edc.paging import iter_items
from imednet_flows.edc.validation import RECORD_FIELDS, SUBJECT_FIELDS, RecordItem, row_ranges
from imednet_flows.filter_syntax import Dnf, quote_value
from imednet_flows.timestamps import format_timestamp, to_datetime

logger = logging.getLogger("imednet_flows.batches")

Row = dict[str, Any]

#: Job states after which nothing more happens (the SDK's poller uses the same three).
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
#: Of those, the only one in which the rows were applied. The SDK's JobPoller returns
#: CANCELLED as if it had succeeded; here it is a failure.
SUCCESS_STATE = "COMPLETED"
#: POSTs per batch at most: the first, and one resend of the rows proven absent.
MAX_POSTS = 2


# --------------------------------------------------------------------------- jobs


class JobTimeout(ImednetFlowsError):
    """A job still not finished when its time ran out."""

    def __init__(self, batch_id: str, state: str, timeout: float) -> None:
        super().__init__(
            f"job {batch_id} is still {state or 'unknown'} after {timeout:g} s; it may yet "
            "finish: check it later in iMednet, or re-run with a longer timeout"
        )
        self.batch_id = batch_id
        self.state = state


def job_state(job: Mapping[str, Any]) -> str:
    return str(job.get("state") or "").upper()


def wait_for_job(
    client: ImednetClient,
    study_key: str,
    batch_id: str,
    timeout: float,
    poll_interval: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Row:
    """Poll a job until COMPLETED, FAILED or CANCELLED and return it; raise JobTimeout.

    Returns on FAILED and CANCELLED too: the caller decides what failure means for it.
    Transient faults on each poll are retried by the client.
    """
    deadline = clock() + timeout
    path = study_path(study_key, "jobs", batch_id)
    while True:
        job = client.get(path, what=f"reading job {batch_id} of study {study_key}")
        state = job_state(job)
        if state in TERMINAL_STATES:
            return job
        remaining = deadline - clock()
        if remaining <= 0:
            raise JobTimeout(batch_id, state, timeout)
        sleep(min(poll_interval, remaining))


# --------------------------------------------------------------------------- safe posting


class PostOutcome(BaseModel):
    """What became of one batch: the job that carries its rows, and any recovery."""

    first_row: int
    rows: int
    #: The 202 body of the POST whose job carries the rows still to apply; None when the
    #: rows were all found applied by reading back (the API's answer had been lost).
    job: dict[str, Any] | None = None
    #: Row numbers found in the study after an interrupted POST: not sent again.
    confirmed_rows: list[int] = Field(default_factory=list)
    #: Row numbers sent a second time because they were proven absent.
    resent_rows: list[int] = Field(default_factory=list)
    #: What interrupted each POST that did not get an answer.
    interruptions: list[str] = Field(default_factory=list)

    @property
    def batch_id(self) -> str | None:
        return None if self.job is None else str(self.job.get("batchId") or "") or None

    @property
    def last_row(self) -> int:
        return self.first_row + self.rows - 1


@dataclass
class _Batch:
    client: ImednetClient
    study_key: str
    items: list[RecordItem]
    first_row: int
    timeout: float
    poll_interval: float
    clock: Callable[[], float]
    sleep: Callable[[float], None]

    def numbers(self, indexes: Iterable[int]) -> list[int]:
        return sorted(self.first_row + i for i in indexes)

    def describe(self, indexes: Iterable[int]) -> str:
        return row_ranges(self.numbers(indexes)) or "none"


def post_batch(
    client: ImednetClient,
    study_key: str,
    items: list[RecordItem],
    *,
    email_notify: str | None = None,
    first_row: int = 1,
    timeout: float = 60.0,
    poll_interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PostOutcome:
    """POST a batch so that each row is applied once, even when the answer is lost.

    A 429 is resent by the client (nothing was created). After a 5xx or a dropped
    connection the API may have taken the batch, so rows are sent again only once they are
    proven absent (`_decide`); rows that cannot be decided within `timeout` stop the batch
    with their row numbers, and nothing is guessed.
    """
    if not items:
        return PostOutcome(first_row=first_row, rows=0)
    batch = _Batch(client, study_key, items, first_row, timeout, poll_interval, clock, sleep)
    outcome = PostOutcome(first_row=first_row, rows=len(items))
    pending = list(range(len(items)))
    for attempt in range(1, MAX_POSTS + 1):
        if attempt > 1:
            outcome.resent_rows = batch.numbers(pending)
        started = clock()
        try:
            outcome.job = _post(
                client, study_key, [items[i].to_api() for i in pending], email_notify
            )
            return outcome
        except (ServerError, RequestError, httpx.TransportError, json.JSONDecodeError) as exc:
            outcome.interruptions.append(_interruption(exc, attempt))
            logger.warning("batch at row %d: %s", first_row, outcome.interruptions[-1])
        except Exception as exc:
            raise explain(
                exc, f"posting rows {batch.describe(pending)} to study {study_key}"
            ) from exc
        landed, absent = _decide(batch, pending, started, outcome)
        outcome.confirmed_rows = sorted({*outcome.confirmed_rows, *batch.numbers(landed)})
        pending = sorted(absent)
        if not pending:
            return outcome
    raise ImednetFlowsError(
        f"rows {batch.describe(pending)} of study {study_key} are still not in the study after "
        f"{MAX_POSTS} POSTs ({'; '.join(outcome.interruptions)}), and are not sent again. "
        f"Rows {row_ranges(outcome.confirmed_rows) or 'none'} were applied. Re-run with only "
        "the missing rows once the API is healthy."
    )


def _post(client: ImednetClient, study_key: str, body: list[Row], email_notify: str | None) -> Row:
    headers = None if email_notify is None else {"x-email-notify": email_notify}
    return client.post(study_path(study_key, "records"), body, headers=headers)


def _interruption(exc: Exception, attempt: int) -> str:
    if isinstance(exc, ServerError):
        what = f"HTTP {getattr(exc, 'status_code', '5xx')}"
    elif isinstance(exc, json.JSONDecodeError):
        what = "its answer was cut off"
    else:  # the SDK raises httpx's error itself when no retry is attempted
        what = f"the connection failed: {type(exc.__cause__ or exc).__name__}"
    return f"POST {attempt} got no answer ({what}); the API may have applied it anyway"


# --------------------------------------------------------------------------- deciding


class Undecided(ImednetFlowsError):
    """Rows of an interrupted POST that could be neither found nor proven absent."""


@dataclass
class _Jobs:
    """What the optional `GET jobs` said about jobs created since the POST."""

    #: None when the listing is unavailable: nothing can be proven absent then.
    recent: list[Row] | None
    why_not: str = ""
    #: 404: the server has no such listing, asking again is pointless.
    missing: bool = False

    @property
    def open(self) -> list[Row]:
        return [j for j in self.recent or [] if job_state(j) not in TERMINAL_STATES]


def _decide(
    batch: _Batch, pending: list[int], started: float, outcome: PostOutcome
) -> tuple[frozenset[int], frozenset[int]]:
    """(landed, absent) among `pending` after a POST that began at `started` got no answer.

    Absent is proven only when the jobs listing works, every job created since the POST
    has ended, and then either no job was created at all or reading back finds no trace of
    the rows. Jobs are listed before reading back: a job that ends in between would
    otherwise leave a stale "absent". Without the listing, reading back can still find the
    rows applied, but never prove them absent. Every wait ends at `timeout`.
    """
    deadline = batch.clock() + batch.timeout
    since = _server_since(batch, started)
    jobs: _Jobs | None = None
    while True:
        if jobs is None or not jobs.missing:
            jobs = _recent_jobs(batch, since)
        if jobs.recent is not None and not jobs.open:
            landing = _read_back(batch, pending, since, outcome)
            if not jobs.recent:  # the POST created no job: nothing of it can apply
                return landing.landed, frozenset(pending) - landing.landed
            if landing.undecided:
                raise _undecided(
                    batch,
                    landing,
                    since,
                    outcome,
                    "every job created since the POST has ended, but reading back cannot "
                    "tell these rows from rows not applied (a registration without "
                    "subjectKey, a target changed since to other values, or no timestamps)",
                    proven=True,
                )
            return landing.landed, landing.absent
        landing = _read_back(batch, pending, since, outcome)
        if len(landing.landed) == len(pending):
            return landing.landed, frozenset()
        remaining = deadline - batch.clock()
        if remaining <= 0:
            raise _undecided(batch, landing, since, outcome, _why_open(jobs, batch.timeout))
        batch.sleep(min(batch.poll_interval, remaining))


def _why_open(jobs: _Jobs, timeout: float) -> str:
    if jobs.recent is None:
        return (
            f"{jobs.why_not}, so a job still queued cannot be ruled out, and reading back "
            f"did not find them within {timeout:g} s"
        )
    shown = ", ".join(f"{j.get('batchId')} ({job_state(j) or '?'})" for j in jobs.open[:5])
    more = f" and {len(jobs.open) - 5} more" if len(jobs.open) > 5 else ""
    return f"job(s) created since the POST had not ended after {timeout:g} s: {shown}{more}"


def _server_since(batch: _Batch, started: float) -> datetime:
    """When the POST began, on the server's clock, to the whole second.

    Record and job timestamps come from the server's clock; a client clock ahead of it
    would hide the rows' own changes and make them look absent. The server's time is read
    now and the time elapsed since the POST began is taken off. Only if the server gives
    no usable time is the client clock used.
    """
    payload: Any = None
    with contextlib.suppress(ImednetFlowsError):
        payload = batch.client.get(
            study_path(batch.study_key, "forms"),
            {"page": 0, "size": 1},
            what=f"reading the server's clock for study {batch.study_key}",
        )
    elapsed = timedelta(seconds=max(0.0, batch.clock() - started))
    stamp = (payload.get("metadata") or {}).get("timestamp") if isinstance(payload, dict) else None
    now = to_datetime(stamp)
    if now is None:
        logger.warning("the API gave no usable clock; comparing with this machine's clock")
        now = datetime.now(UTC)
    return since_for(now - elapsed)


def _recent_jobs(batch: _Batch, since: datetime) -> _Jobs:
    """Jobs created since `since` (or with no usable date) from the optional `GET jobs`."""
    try:
        payload = batch.client.get(
            study_path(batch.study_key, "jobs"),
            {"filter": f"studyKey=={quote_value(batch.study_key)}"},
            what=f"listing jobs of study {batch.study_key}",
        )
    except ImednetFlowsError as exc:
        if isinstance(exc.__cause__, NotFoundError):
            return _Jobs(None, "the API does not list jobs (GET jobs answered 404)", True)
        logger.warning("cannot list jobs: %s", exc)
        return _Jobs(None, f"listing jobs failed ({exc})")
    if not isinstance(payload, list):
        return _Jobs(None, "the API's job listing is not a list", True)
    recent = [
        j
        for j in payload
        if isinstance(j, dict) and at_or_after(j.get("dateCreated"), since) is not False
    ]
    return _Jobs(recent)


def _read_back(batch: _Batch, pending: list[int], since: datetime, outcome: PostOutcome) -> Landing:
    items = [batch.items[i] for i in pending]
    try:
        records = _target_records(batch.client, batch.study_key, items, since)
        intervals = _interval_ids(batch.client, batch.study_key, items)
    except ImednetFlowsError as exc:
        unknown = Landing(frozenset(), frozenset(), frozenset(range(len(pending))))
        raise _undecided(
            batch, _in_batch(unknown, pending), since, outcome, f"reading them back failed ({exc})"
        ) from exc
    return _in_batch(landed_rows(items, records, since, intervals), pending)


def _in_batch(landing: Landing, pending: list[int]) -> Landing:
    """Indexes into `pending` -> indexes into the batch."""
    return Landing(
        frozenset(pending[i] for i in landing.landed),
        frozenset(pending[i] for i in landing.absent),
        frozenset(pending[i] for i in landing.undecided),
    )


def _target_records(
    client: ImednetClient, study_key: str, items: list[RecordItem], since: datetime
) -> list[Row]:
    """Records changed since the POST began, restricted on the server to the rows' targets."""
    base: Dnf = [[f"dateModified>={quote_value(format_timestamp(since))}"]]
    values: dict[str, list[Any]] = {}
    for item in items:
        refs = item.refs(*RECORD_FIELDS) or item.refs(*SUBJECT_FIELDS)
        for attr, value in refs[:1]:
            values.setdefault(attr, []).append(value)
    by_id: dict[Any, Row] = {}
    for attr, wanted in values.items():
        for groups in restricted(base, attr, wanted):
            for record in iter_items(client, study_key, "records", groups=groups):
                by_id[record.get("recordId")] = record
    return list(by_id.values())


def _interval_ids(client: ImednetClient, study_key: str, items: list[RecordItem]) -> dict[str, int]:
    """intervalName -> intervalId, fetched only if a row names its interval (records carry
    only the id)."""
    if not any(i.interval_name is not None and i.interval_id is None for i in items):
        return {}
    return {
        str(row["intervalName"]): int(row["intervalId"])
        for row in iter_items(client, study_key, "intervals")
        if row.get("intervalName") is not None and row.get("intervalId") is not None
    }


def _undecided(
    batch: _Batch,
    landing: Landing,
    since: datetime,
    outcome: PostOutcome,
    reason: str,
    proven: bool = False,
) -> Undecided:
    """The error that stops a batch: which rows are undecided, why, and what to check.

    `proven`: the jobs have all ended, so rows without a trace are known not applied."""
    undecided = landing.undecided if proven else landing.undecided | landing.absent
    history = outcome.interruptions[-1]
    if outcome.resent_rows:
        history = (
            f"{outcome.interruptions[0]}; rows {row_ranges(outcome.resent_rows)} were proven "
            f"absent and sent again, and {history}"
        )
    not_applied = (
        f" Not applied (safe to re-run): rows {batch.describe(landing.absent)}."
        if proven and landing.absent
        else ""
    )
    return Undecided(
        f"{history}, so nothing was sent again. Undecided: rows {batch.describe(undecided)}, "
        f"because {reason}. Found applied: rows {batch.describe(landing.landed)}.{not_applied} "
        f"Before re-running the undecided rows, check in iMednet the jobs of study "
        f"{batch.study_key} created since {format_timestamp(since)} UTC and whether those "
        "rows' values show in the study; re-run only the rows that are not there."
    )
