"""Record batches for POST /records: posted without duplicates, followed to the end
of their job.

A POST to iMednet starts an asynchronous job, and the request itself is not
idempotent: SDK 0.5.0 resends it after a 5xx, but a 5xx or a dropped
connection can come after the API already accepted the batch
("commit-then-502"), and a blind resend then writes every row twice (a second
revision per record, a second unscheduled record, a second subject). So a
batch is POSTed once; after an ambiguous failure the target records are read
back (`landing` decides which rows are there), and only the rows that did not
land are sent again, once. The rows are checked before any of this, in `validation`.

Row numbers in every message are 1-based, counted over the whole input.

No Prefect imports: the tasks in `tasks/records.py` wrap these functions.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from imednet.errors import NotFoundError, RequestError, ServerError
from pydantic import BaseModel, Field

from imednet_flows.edc.client import ImednetClient, study_path
from imednet_flows.edc.criteria import restricted
from imednet_flows.edc.errors import ImednetFlowsError, explain
from imednet_flows.edc.landing import Landing, at_or_after, landed_rows, since_for
from imednet_flows.edc.paging import iter_items
from imednet_flows.edc.validation import RECORD_FIELDS, SUBJECT_FIELDS, RecordItem
from imednet_flows.filter_syntax import Dnf, format_timestamp, quote_value

logger = logging.getLogger("imednet_flows.batches")

Row = dict[str, Any]

#: Job states after which nothing more happens (the SDK's poller uses the same three).
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
#: Of those, the only one in which the rows were applied. The SDK's JobPoller returns
#: CANCELLED as if it had succeeded; here it is a failure.
SUCCESS_STATE = "COMPLETED"
#: POSTs per batch at most: the first, and one resend of the rows that did not land.
MAX_POSTS = 2
#: Without `GET jobs` there is no way to see a job still queued, so an interrupted POST is
#: re-read for this long (at most) before its missing rows count as not sent.
BLIND_SETTLE_SECONDS = 30.0


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


def recent_jobs(client: ImednetClient, study_key: str, since: datetime) -> list[Row] | None:
    """Jobs created since `since`, from the optional `GET jobs` extension; None when the
    server does not offer it (404) or will not answer."""
    try:
        payload = client.get(
            study_path(study_key, "jobs"),
            {"filter": f"studyKey=={quote_value(study_key)}"},
            what=f"listing jobs of study {study_key}",
        )
    except ImednetFlowsError as exc:
        if not isinstance(exc.__cause__, NotFoundError):
            logger.warning("cannot list jobs, waiting blind: %s", exc)
        return None
    if not isinstance(payload, list):
        return None
    return [j for j in payload if isinstance(j, dict) and at_or_after(j.get("dateCreated"), since)]


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
    #: Row numbers sent a second time because they had not landed.
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
    since: datetime
    settle_timeout: float
    poll_interval: float
    clock: Callable[[], float]
    sleep: Callable[[float], None]

    def numbers(self, indexes: Iterable[int]) -> list[int]:
        return sorted(self.first_row + i for i in indexes)

    def describe(self, indexes: Iterable[int]) -> str:
        return _ranges(self.numbers(indexes))


def post_batch(
    client: ImednetClient,
    study_key: str,
    items: list[RecordItem],
    *,
    email_notify: str | None = None,
    first_row: int = 1,
    settle_timeout: float = 60.0,
    poll_interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PostOutcome:
    """POST a batch so that each row is applied once, even when the answer is lost.

    A 429 is resent by the client (nothing was created). A 5xx or a dropped connection
    leaves it open whether the API took the batch: jobs started since the POST are waited
    for, the target records read back, and only the rows not found are POSTed again, once.
    Rows that cannot be checked stop the batch with their row numbers; nothing is guessed.
    """
    if not items:
        return PostOutcome(first_row=first_row, rows=0)
    since = since_for(datetime.now(UTC))
    batch = _Batch(
        client, study_key, items, first_row, since, settle_timeout, poll_interval, clock, sleep
    )
    outcome = PostOutcome(first_row=first_row, rows=len(items))
    pending = list(range(len(items)))
    for attempt in range(1, MAX_POSTS + 1):
        if attempt > 1:
            outcome.resent_rows = batch.numbers(pending)
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
        landing = _settle_and_read_back(batch, pending)
        if landing.undecidable:
            raise _undecided(batch, pending, landing)
        outcome.confirmed_rows = sorted({*outcome.confirmed_rows, *batch.numbers(landing.landed)})
        pending = [i for i in pending if i not in landing.landed]
        if not pending:
            return outcome
    raise ImednetFlowsError(
        f"rows {batch.describe(pending)} of study {study_key} are still not in the study after "
        f"{MAX_POSTS} POSTs ({'; '.join(outcome.interruptions)}), and are not sent again. "
        f"Rows {_ranges(outcome.confirmed_rows) or 'none'} were applied. Re-run with only the "
        "missing rows once the API is healthy."
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


def _settle_and_read_back(batch: _Batch, pending: list[int]) -> Landing:
    """Wait for the jobs that may carry the batch, then compare what the study shows."""
    deadline = batch.clock() + batch.settle_timeout
    if _wait_for_recent_jobs(batch, deadline):
        return _read_back(batch, pending)
    blind_until = batch.clock() + min(batch.settle_timeout, BLIND_SETTLE_SECONDS)
    while True:
        landing = _read_back(batch, pending)
        if landing.undecidable or len(landing.landed) == len(pending):
            return landing
        if batch.clock() >= blind_until:
            return landing
        batch.sleep(batch.poll_interval)


def _wait_for_recent_jobs(batch: _Batch, deadline: float) -> bool:
    """False when the server cannot list jobs: then there is nothing to wait for but time."""
    jobs = recent_jobs(batch.client, batch.study_key, batch.since)
    if jobs is None:
        return False
    for job in jobs:
        if job_state(job) in TERMINAL_STATES or not job.get("batchId"):
            continue
        try:
            wait_for_job(
                batch.client,
                batch.study_key,
                str(job["batchId"]),
                max(0.0, deadline - batch.clock()),
                batch.poll_interval,
                clock=batch.clock,
                sleep=batch.sleep,
            )
        except JobTimeout as exc:
            raise ImednetFlowsError(
                f"cannot tell whether rows {batch.describe(range(len(batch.items)))} reached "
                f"study {batch.study_key}: job {exc.batch_id}, started after the interrupted "
                f"POST, is still {exc.state} after {batch.settle_timeout:g} s. Nothing was "
                "resent; check that job in iMednet before re-running these rows."
            ) from exc
    return True


def _read_back(batch: _Batch, pending: list[int]) -> Landing:
    items = [batch.items[i] for i in pending]
    try:
        records = _target_records(batch.client, batch.study_key, items, batch.since)
        intervals = _interval_ids(batch.client, batch.study_key, items)
    except ImednetFlowsError as exc:
        raise ImednetFlowsError(
            f"cannot tell whether rows {batch.describe(pending)} reached study "
            f"{batch.study_key}: reading them back failed ({exc}). Nothing was resent."
        ) from exc
    found = landed_rows(items, records, batch.since, intervals)
    return Landing(
        frozenset(pending[i] for i in found.landed),
        frozenset(pending[i] for i in found.undecidable),
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


def _undecided(batch: _Batch, pending: list[int], landing: Landing) -> ImednetFlowsError:
    missing = [i for i in pending if i not in landing.landed and i not in landing.undecidable]
    return ImednetFlowsError(
        f"the POST of rows {batch.describe(pending)} to study {batch.study_key} got no answer "
        f"and the API may have applied it anyway. Rows {batch.describe(landing.undecidable)} "
        "cannot be checked by reading back (a registration without subjectKey creates a "
        "subject with a key only the API knows, or the API gave no timestamps), so nothing "
        f"was resent. Found applied: rows {batch.describe(landing.landed) or 'none'}; not "
        f"found: rows {batch.describe(missing) or 'none'}. Check the study (e.g. subjects "
        f"registered since {format_timestamp(batch.since)} UTC) before re-running any row."
    )


def _ranges(numbers: Iterable[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7": row lists stay short in messages."""
    out: list[str] = []
    run: list[int] = []
    for n in sorted(set(numbers)):
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            out.append(_run(run))
        run = [n]
    if run:
        out.append(_run(run))
    return ", ".join(out)


def _run(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"
