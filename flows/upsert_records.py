"""Record Update: check every row, POST in batches, follow each job to its end.

create_or_update_records --> rows: records, or rows_file read here (never a parameter value)
                         --> forms, variables, sites, intervals, subjects (concurrently)
                         --> validate_batch (any problem: stop, nothing sent)
                         --> records.create per batch (post_batch: resend only proven-absent rows)
                         --> wait? --> poll each job --> result + table artifact
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import SkipJsonSchema

from flows.common import Concurrency, OptionalText, StudyKey, artifact_key, documented, param
from flows.connection import imednet_client
from imednet_flows.edc.batches import SUCCESS_STATE, JobTimeout, PostOutcome, job_state
from imednet_flows.edc.client import ImednetClient
from imednet_flows.edc.criteria import restricted
from imednet_flows.edc.errors import ImednetFlowsError
from imednet_flows.edc.rows_file import read_rows
from imednet_flows.edc.validation import RecordItem, detect_mode, row_ranges, validate_batch
from tasks.api import list_forms, list_intervals, list_sites, list_subjects, list_variables
from tasks.records import create_records, wait_for_job

#: Rows found applied by reading back after a lost answer: no job to follow, nothing missing.
CONFIRMED = "CONFIRMED"
TIMEOUT = "TIMEOUT"

ROWS_HELP = (
    "Rows to write, each one item of POST /records in the API's spelling; add one per "
    "record (Add item). Which form: formKey or formId. Where it goes: recordId or recordOid "
    "updates that record; subjectKey (or subjectId, subjectOid) with intervalName or "
    "intervalId updates the scheduled record; a subject without interval adds a new "
    "record; siteName or siteId without a known subject registers one (with the given "
    "subjectKey, if any). Problems are reported by row number (from 1), all at once, and "
    "then nothing is sent. Give rows here or a rows file, not both; above a few hundred rows "
    "use the rows file (Prefect limits parameters to 512 KB)."
)


def _row_schema(schema: dict[str, Any]) -> None:
    """The run form fills a field's default into every new row, and null is no valid value
    for a string or an integer: fields are left out instead, as the API expects. The form
    shows the description under each row, so it is written for the person filling it."""
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)
    schema["description"] = "One record to write: fill the fields you need, leave the rest empty."


def _row_field(title: str, description: str) -> Any:
    return Field(None, title=title, description=description)


class RecordRow(BaseModel):
    """The shape of one row as the run form shows it ("Add item" then shows these fields).

    Only the schema: the flow takes rows as plain dicts (from Python, JSON or a rows
    file) and checks them itself with `validate_batch`, which reports every problem by row
    number without echoing values. Optional fields are not nullable in the schema, so the
    form shows a text box rather than a "str / None" toggle."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        json_schema_extra=_row_schema,
        title="Row",
    )

    form_key: str | SkipJsonSchema[None] = _row_field(
        "Form key", "The form the row writes to, e.g. AE (or give the form id)."
    )
    form_id: int | SkipJsonSchema[None] = _row_field("Form id", "Instead of the form key.")
    record_id: int | SkipJsonSchema[None] = _row_field(
        "Record id", "Updates this existing record, e.g. 1001."
    )
    record_oid: str | SkipJsonSchema[None] = _row_field(
        "Record OID", "Updates the record with this client-assigned OID."
    )
    subject_key: str | SkipJsonSchema[None] = _row_field(
        "Subject key",
        "The subject, e.g. 01-001: with an interval, updates that visit's record; without "
        "one, adds a new record; with a site, registers the subject if it is new.",
    )
    subject_id: int | SkipJsonSchema[None] = _row_field("Subject id", "Instead of the key.")
    subject_oid: str | SkipJsonSchema[None] = _row_field("Subject OID", "Instead of the key.")
    interval_name: str | SkipJsonSchema[None] = _row_field(
        "Interval name", 'The scheduled visit, e.g. "Week 2" (or give the interval id).'
    )
    interval_id: int | SkipJsonSchema[None] = _row_field("Interval id", "Instead of the name.")
    site_name: str | SkipJsonSchema[None] = _row_field(
        "Site name", "Registers a new subject at this site (or give the site id)."
    )
    site_id: int | SkipJsonSchema[None] = _row_field("Site id", "Instead of the name.")
    data: dict[str, Any] = Field(
        title="Data",
        description='Values by variable name, as JSON, e.g. {"aeterm": "Headache", '
        '"aeser": "Serious", "aedur": 3}. INTEGER and NUMBER as numbers or numeric text, '
        "DATE as YYYY-MM-DD, CHECKBOX as true or false, RADIO, TEXT and MEMO as text; null or "
        '"" clears a value.',
    )


Records = Annotated[
    list[RecordRow],
    param("Rows", ROWS_HELP),
]
RowsFile = Annotated[
    OptionalText,
    param(
        "Rows file (path)",
        "Path of a file holding the rows, read by the flow run itself (so any number of rows "
        "works): a JSON array of rows, or JSON Lines (one row object per line), each row as "
        "described under Rows, e.g. /data/imednet/ae-updates.jsonl. Row numbers count the "
        "file's rows from 1. The path must be readable where the flow runs; a relative one "
        "is taken from that process's working directory. Give rows or a rows file, not both.",
    ),
]
Wait = Annotated[
    bool,
    param(
        "Wait for the jobs",
        "Wait for each job to finish; a FAILED or CANCELLED job fails the run.",
    ),
]
Timeout = Annotated[
    float,
    param(
        "Job timeout (seconds)",
        "Seconds to wait for each job (and, after a lost POST answer, to decide whether the "
        "API applied it) before the run fails.",
        gt=0,
    ),
]
PollInterval = Annotated[
    float, param("Poll interval (seconds)", "Seconds between job status checks.", gt=0)
]
BatchSize = Annotated[
    int, param("Rows per batch", "Rows per POST; each POST is one job in iMednet.", ge=1)
]
EmailNotify = Annotated[
    OptionalText,
    param(
        "Notify email",
        "Email address iMednet notifies when a job finishes (the x-email-notify header), "
        "e.g. dm@example.org. Empty: no email.",
    ),
]


class UpsertParameters(BaseModel):
    """The run's parameters, checked here and not by Prefect (the flow turns Prefect's
    check off): when any parameter is invalid Prefect logs every parameter's value, and
    `records` is clinical data. These messages name the parameter and the rule only."""

    study_key: StudyKey
    #: Plain rows, not RecordRow: `validate_batch` checks them, by row number.
    records: Annotated[list[Any], BeforeValidator(lambda v: [] if v is None else v)] = []
    rows_file: RowsFile = ""
    wait: Wait = True
    timeout: Timeout = 300
    poll_interval: PollInterval = 5
    batch_size: BatchSize = 500
    email_notify: EmailNotify = ""
    max_concurrency: Concurrency = 0

    @model_validator(mode="after")
    def _one_source_of_rows(self) -> UpsertParameters:
        # An empty list and an empty path are what the run form sends when left alone.
        if self.records and self.rows_file:
            raise ValueError("give records or rows_file, not both")
        if not self.records and not self.rows_file:
            raise ValueError(
                "no rows given: set records (a list of rows) or rows_file (the path of a "
                "JSON or JSON Lines file of rows)"
            )
        return self

    @classmethod
    def checked(cls, **values: Any) -> UpsertParameters:
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(map(str, e['loc'])) or 'parameters'}: "
                + e["msg"].removeprefix("Value error, ")
                for e in exc.errors()
            ]
            raise ImednetFlowsError(
                "invalid parameters, nothing was sent: " + "; ".join(problems)
            ) from None

    def rows(self) -> list[Any]:
        """The rows to write: given, or read from rows_file (row N = N-th row of the file)."""
        return self.records or read_rows(self.rows_file)


class BatchResult(BaseModel):
    batch: int
    first_row: int
    last_row: int
    rows: int
    #: The job that carries the batch's rows; None if they were all found applied by reading
    #: back after the API's answer was lost.
    batch_id: str | None
    #: COMPLETED, FAILED, CANCELLED or TIMEOUT when waited for; the job's own state
    #: (CREATED, ...) when not; CONFIRMED when no job is left to follow.
    state: str
    confirmed_rows: list[int] = Field(default_factory=list)
    resent_rows: list[int] = Field(default_factory=list)
    note: str = ""


class UpsertResult(BaseModel):
    study_key: str
    rows: int = 0
    batches: list[BatchResult] = Field(default_factory=list)
    rows_by_mode: dict[str, int] = Field(default_factory=dict)
    batches_by_state: dict[str, int] = Field(default_factory=dict)
    requests: int = 0


@flow(
    name="create-or-update-records",
    task_runner=ThreadPoolTaskRunner(max_workers=8),
    log_prints=False,
    validate_parameters=False,  # UpsertParameters checks them without echoing values
)
@documented
def create_or_update_records(
    study_key: StudyKey,
    records: Records = [],  # noqa: B006 - never mutated; the run form's empty list of rows
    rows_file: RowsFile = "",
    wait: Wait = True,
    timeout: Timeout = 300,
    poll_interval: PollInterval = 5,
    batch_size: BatchSize = 500,
    email_notify: EmailNotify = "",
    max_concurrency: Concurrency = 0,
) -> UpsertResult:
    """Write rows to a study: all checked first, then POSTed in batches, each row once."""
    logger = get_run_logger()
    params = UpsertParameters.checked(
        study_key=study_key,
        records=records,
        rows_file=rows_file,
        wait=wait,
        timeout=timeout,
        poll_interval=poll_interval,
        batch_size=batch_size,
        email_notify=email_notify,
        max_concurrency=max_concurrency,
    )
    rows = params.rows()
    if params.rows_file:
        logger.info("%d row(s) read from %s", len(rows), params.rows_file)
    if not rows:
        logger.info("no rows given: nothing sent to %s", params.study_key)
        return UpsertResult(study_key=params.study_key)
    with imednet_client(params.max_concurrency) as client:
        items, modes = _validated(client, params.study_key, rows)
        logger.info(
            "%d row(s) valid: %s",
            len(items),
            ", ".join(f"{n} {mode}" for mode, n in modes.items()),
        )
        outcomes = _post_all(client, items, params)
        results = _follow(client, outcomes, params)
        requests = client.requests
    result = UpsertResult(
        study_key=params.study_key,
        rows=len(items),
        batches=results,
        rows_by_mode=modes,
        batches_by_state=dict(Counter(b.state for b in results)),
        requests=requests,
    )
    _artifact(result, params.wait)
    _fail_unless_done(result, params.wait)
    logger.info(
        "%s: %d row(s) in %d batch(es) %s",
        params.study_key,
        len(items),
        len(results),
        ", ".join(f"{n} {s}" for s, n in result.batches_by_state.items()),
    )
    return result


def _validated(
    client: ImednetClient, study_key: str, records: list[Any]
) -> tuple[list[RecordItem], dict[str, int]]:
    """Every row checked against the study before anything is sent; all problems at once."""
    forms = list_forms.submit(client, study_key)
    variables = list_variables.submit(client, study_key)
    sites = list_sites.submit(client, study_key)
    intervals = list_intervals.submit(client, study_key)
    subject_futures = [
        list_subjects.submit(client, study_key, groups=groups)
        for attribute, values in _mentioned_subjects(records).items()
        for groups in restricted([[]], attribute, values)
    ]
    subjects = [s for f in subject_futures for s in f.result()]
    items, errors = validate_batch(
        records, forms.result(), variables.result(), sites.result(), subjects, intervals.result()
    )
    if errors:
        raise ImednetFlowsError(_problems(errors, len(records), study_key))
    keys = {str(s.get("subjectKey")) for s in subjects}
    modes = Counter(str(detect_mode(item, keys)) for item in items)
    return items, dict(modes)


#: Problems listed one per line; beyond this the rest are summed up by row number.
MAX_LISTED_PROBLEMS = 500


def _problems(errors: list[str], total: int, study_key: str) -> str:
    """Every problem, one line each ("row N: ..."); a file with thousands of bad rows lists
    the first MAX_LISTED_PROBLEMS and the row numbers of the rest."""
    numbers = [int(e.split(":", 1)[0].removeprefix("row ")) for e in errors]
    head = (
        f"{len(errors)} problem(s) in {len(set(numbers))} of {total} row(s); nothing was "
        f"sent to study {study_key}. Fix every row listed and run again:\n"
    )
    listed = "\n".join(errors[:MAX_LISTED_PROBLEMS])
    if len(errors) <= MAX_LISTED_PROBLEMS:
        return head + listed
    rest = row_ranges(numbers[MAX_LISTED_PROBLEMS:])
    return f"{head}{listed}\n... and {len(errors) - MAX_LISTED_PROBLEMS} more in rows {rest}"


def _mentioned_subjects(records: list[Any]) -> dict[str, list[Any]]:
    """The subject references the rows make, each once, so only those subjects are fetched
    (100,000 rows name a few hundred subjects)."""
    mentioned: dict[str, dict[Any, None]] = {"subjectKey": {}, "subjectId": {}, "subjectOid": {}}
    for row in records:
        if not isinstance(row, dict):
            continue
        for attribute, values in mentioned.items():
            value = row.get(attribute)
            if isinstance(value, str | int) and not isinstance(value, bool):
                values[value if attribute == "subjectId" else str(value)] = None
    return {a: list(v) for a, v in mentioned.items() if v}


def _post_all(
    client: ImednetClient, items: list[RecordItem], params: UpsertParameters
) -> list[PostOutcome]:
    """Batches go one after another, in row order: a later row for the same record must
    reach the API after an earlier one."""
    outcomes: list[PostOutcome] = []
    for number, start in enumerate(range(0, len(items), params.batch_size), start=1):
        chunk = items[start : start + params.batch_size]
        try:
            outcome = create_records(
                client,
                params.study_key,
                quote(chunk),  # Prefect would otherwise walk every field of every row
                number,
                first_row=start + 1,
                email_notify=params.email_notify or None,
                timeout=params.timeout,
                poll_interval=params.poll_interval,
            )
        except ImednetFlowsError as exc:
            raise ImednetFlowsError(
                f"batch {number} (rows {start + 1}-{start + len(chunk)}): {exc} "
                f"{_posted_so_far(outcomes, start + len(chunk), len(items))}"
            ) from exc
        outcomes.append(outcome)
    return outcomes


def _posted_so_far(outcomes: list[PostOutcome], next_row: int, total: int) -> str:
    done = [
        f"batch {n} (rows {o.first_row}-{o.last_row}) as job {o.batch_id or CONFIRMED}"
        for n, o in enumerate(outcomes, start=1)
    ]
    accepted = f"Accepted before it: {'; '.join(done)}." if done else "No earlier batch."
    rest = f" Rows {next_row + 1}-{total} were not sent." if next_row < total else ""
    return accepted + rest


def _follow(
    client: ImednetClient, outcomes: list[PostOutcome], params: UpsertParameters
) -> list[BatchResult]:
    """Final state of every batch's job; jobs are polled concurrently."""
    futures: dict[int, PrefectFuture[dict[str, Any]]] = {}
    if params.wait:
        for number, outcome in enumerate(outcomes, start=1):
            if outcome.batch_id:
                futures[number] = wait_for_job.submit(
                    client, params.study_key, outcome.batch_id, params.timeout, params.poll_interval
                )
    results = []
    for number, outcome in enumerate(outcomes, start=1):
        state, note = _final_state(outcome, futures.get(number))
        results.append(
            BatchResult(
                batch=number,
                first_row=outcome.first_row,
                last_row=outcome.last_row,
                rows=outcome.rows,
                batch_id=outcome.batch_id,
                state=state,
                confirmed_rows=outcome.confirmed_rows,
                resent_rows=outcome.resent_rows,
                note=note,
            )
        )
    return results


def _final_state(
    outcome: PostOutcome, future: PrefectFuture[dict[str, Any]] | None
) -> tuple[str, str]:
    if outcome.job is None:
        return CONFIRMED, "rows found applied by reading back; no job to follow"
    if future is None:
        return job_state(outcome.job) or "CREATED", ""
    try:
        return job_state(future.result()), ""
    except JobTimeout as exc:
        return TIMEOUT, str(exc)


def _fail_unless_done(result: UpsertResult, wait: bool) -> None:
    if not wait:
        return
    bad = [b for b in result.batches if b.state not in (SUCCESS_STATE, CONFIRMED)]
    if not bad:
        return
    lines = [
        f"batch {b.batch} (rows {b.first_row}-{b.last_row}): job {b.batch_id} {b.state}"
        + (f" ({b.note})" if b.note else "")
        for b in bad
    ]
    raise ImednetFlowsError(
        f"{len(bad)} of {len(result.batches)} batch(es) in study {result.study_key} did not "
        "complete. Check each job in iMednet and its rows against the study before re-running "
        "them; a job that timed out may still finish.\n" + "\n".join(lines)
    )


def _artifact(result: UpsertResult, wait: bool) -> None:
    table = [
        {
            "batch": b.batch,
            "rows": f"{b.first_row}-{b.last_row}",
            "batchId": b.batch_id or "",
            "state": b.state,
            "found applied (not resent)": len(b.confirmed_rows),
            "resent": len(b.resent_rows),
        }
        for b in result.batches
    ]
    waited = "final job states" if wait else "job states when posted (not waited for)"
    create_table_artifact(
        key=artifact_key("upsert-records", result.study_key),
        table=table,
        description=(
            f"{result.rows} row(s) to {result.study_key} in {len(result.batches)} batch(es), "
            f"{waited}; {result.requests} API request(s)."
        ),
    )
