"""Record batches for POST /records: checked before sending, posted without duplicates,
followed to the end of their job.

A POST to iMednet starts an asynchronous job, and the request itself is not
idempotent: SDK 0.5.0 resends it after a 5xx, but a 5xx or a dropped
connection can come after the API already accepted the batch
("commit-then-502"), and a blind resend then writes every row twice (a second
revision per record, a second unscheduled record, a second subject). So a
batch is POSTed once; after an ambiguous failure the target records are read
back, and only the rows that did not land are sent again, once.

Row numbers in every message are 1-based, counted over the whole input (the
first row is "row 1"), because that is how a data manager counts the rows of
a spreadsheet.

No Prefect imports: the tasks in `tasks/records.py` wrap these functions.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Any

import httpx
from imednet.errors import NotFoundError, RequestError, ServerError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from imednet_flows.edc.client import ImednetClient, study_path
from imednet_flows.edc.criteria import restricted
from imednet_flows.edc.errors import ImednetFlowsError, explain
from imednet_flows.edc.paging import iter_items
from imednet_flows.filter_syntax import (
    Dnf,
    FilterError,
    format_timestamp,
    parse_timestamp,
    quote_value,
)

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


# --------------------------------------------------------------------------- the row model


class Mode(StrEnum):
    """The four things a POST /records item can do (CONTRACT §5)."""

    REGISTER = "register subject"
    UPDATE_SCHEDULED = "update scheduled record"
    NEW_RECORD = "new record"
    UPDATE_EXISTING = "update existing record"


def _not_bool(value: Any) -> Any:
    """pydantic's lax int takes True as 1; an id of `true` is a mistake worth reporting."""
    if isinstance(value, bool):
        raise ValueError("Input should be a valid integer, not a boolean")
    return value


Id = Annotated[int, BeforeValidator(_not_bool)]

_SUBJECT_FIELDS = ("subject_key", "subject_id", "subject_oid")
_RECORD_FIELDS = ("record_id", "record_oid")
_SITE_FIELDS = ("site_name", "site_id")
_FORM_FIELDS = ("form_key", "form_id")
_INTERVAL_FIELDS = ("interval_name", "interval_id")


class RowFields(BaseModel):
    """Every field of an item, all optional: what can be read from a row that is malformed
    elsewhere, so its references can still be checked and reported in the same pass."""

    model_config = ConfigDict(
        extra="ignore",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        coerce_numbers_to_str=True,  # subject keys such as 1001 typed as numbers
    )

    form_key: str | None = None
    form_id: Id | None = None
    data: dict[str, Any] | None = None
    site_name: str | None = None
    site_id: Id | None = None
    subject_key: str | None = None
    subject_id: Id | None = None
    subject_oid: str | None = None
    interval_name: str | None = None
    interval_id: Id | None = None
    record_id: Id | None = None
    record_oid: str | None = None

    def given(self, *names: str) -> bool:
        return any(getattr(self, n) is not None for n in names)

    def refs(self, *names: str) -> list[tuple[str, Any]]:
        """(API attribute, value) for each of `names` that is set, in the API's spelling."""
        return [(to_camel(n), getattr(self, n)) for n in names if getattr(self, n) is not None]


class RecordItem(RowFields):
    """One item of a POST /records body, in the API's own shape and spelling."""

    model_config = ConfigDict(extra="forbid")

    data: dict[str, Any]

    @model_validator(mode="after")
    def _placeable(self) -> RecordItem:
        problems = placement_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def mode(self) -> Mode:
        """The mode as the fields alone tell it. A row with a site and a subjectKey the
        study does not have yet registers that subject: see `detect_mode`."""
        if self.given(*_RECORD_FIELDS):
            return Mode.UPDATE_EXISTING
        if not self.given(*_SUBJECT_FIELDS):
            return Mode.REGISTER
        return Mode.UPDATE_SCHEDULED if self.given(*_INTERVAL_FIELDS) else Mode.NEW_RECORD

    def to_api(self) -> Row:
        """The JSON item: only the fields that are set, camelCase, data as given."""
        body = {to_camel(name): value for name, value in self if value is not None}
        body["data"] = dict(self.data)
        return body


def placement_problems(fields: RowFields | Mapping[str, Any]) -> list[str]:
    """What a row lacks to be posted at all: which form, what data, and where it goes."""
    if not isinstance(fields, RowFields):
        fields = RowFields.model_construct(
            **{
                name: fields.get(to_camel(name), fields.get(name))
                for name in RowFields.model_fields
            }
        )
    problems = []
    if not fields.given(*_FORM_FIELDS):
        problems.append("no formKey or formId: say which form the row writes to")
    if fields.data is None:
        problems.append("no data: give the values to write as {variableName: value}")
    if not fields.given(*_RECORD_FIELDS, *_SUBJECT_FIELDS, *_SITE_FIELDS):
        problems.append(
            "nothing places the row: give recordId/recordOid (update a record), a subject "
            "(subjectKey/subjectId/subjectOid) or a site (siteName/siteId, to register)"
        )
    return problems


def detect_mode(item: RecordItem, known_subject_keys: Iterable[str]) -> Mode:
    """`item.mode`, plus registration with a chosen subjectKey (CONTRACT §5 DECISION)."""
    if registers_new_key(item, set(known_subject_keys)):
        return Mode.REGISTER
    return item.mode


def registers_new_key(item: RowFields, known_subject_keys: set[str]) -> bool:
    return (
        item.subject_key is not None
        and item.subject_key not in known_subject_keys
        and item.subject_id is None
        and item.subject_oid is None
        and not item.given(*_RECORD_FIELDS)
        and item.given(*_SITE_FIELDS)
    )


# --------------------------------------------------------------------------- validation

_INTEGER_RE = re.compile(r"[+-]?[0-9]+")
_NUMBER_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def value_problem(variable_type: str, value: Any) -> str | None:
    """Why `value` cannot be posted to a variable of this type, or None if it can.

    None and "" clear a value, whatever the type (read-back shows a blank as "").
    """
    if value is None or value == "":
        return None
    kind = variable_type.upper()
    if isinstance(value, dict | list):
        return f"a {type(value).__name__} cannot be a {kind} value"
    if kind == "INTEGER":
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and _INTEGER_RE.fullmatch(value.strip()) is not None
        )
        return None if ok else f"{value!r} is not an integer"
    if kind == "NUMBER":
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)  # JSON has no NaN or Infinity
        ) or (isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()) is not None)
        return None if ok else f"{value!r} is not a number"
    if kind == "DATE":
        return None if _is_date(value) else f"{value!r} is not a date in YYYY-MM-DD form"
    if kind == "CHECKBOX":
        return None if isinstance(value, bool) else f"{value!r} is not true or false"
    if kind in ("RADIO", "TEXT", "MEMO"):
        return None if isinstance(value, str) else f"{value!r} is not text (quote it)"
    return None  # a type this project does not know: leave it to the API


def _is_date(value: Any) -> bool:
    if not isinstance(value, str) or not _DATE_RE.fullmatch(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _index(rows: Iterable[Row], *attributes: str) -> dict[tuple[str, Any], Row]:
    return {(a, row.get(a)): row for row in rows for a in attributes if row.get(a) is not None}


@dataclass
class Catalog:
    """The study's forms, variables, sites, subjects and intervals, indexed for lookups."""

    forms: dict[tuple[str, Any], Row]
    sites: dict[tuple[str, Any], Row]
    subjects: dict[tuple[str, Any], Row]
    intervals: dict[tuple[str, Any], Row]
    variables: dict[Any, dict[str, Row]]
    #: subjectKey -> row number of the row that registers it, to catch a second one.
    registering: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        forms: list[Row],
        variables: list[Row],
        sites: list[Row],
        subjects: list[Row],
        intervals: list[Row],
    ) -> Catalog:
        by_form: dict[Any, dict[str, Row]] = {}
        for var in variables:
            by_form.setdefault(var.get("formId"), {})[var.get("variableName")] = var
        return cls(
            forms=_index(forms, "formKey", "formId"),
            sites=_index(sites, "siteName", "siteId"),
            subjects=_index(subjects, "subjectKey", "subjectId", "subjectOid"),
            intervals=_index(intervals, "intervalName", "intervalId"),
            variables=by_form,
        )

    @property
    def subject_keys(self) -> set[str]:
        return {value for (attr, value) in self.subjects if attr == "subjectKey"}

    def check(self, row: RowFields, number: int) -> list[str]:
        problems: list[str] = []
        form = self._resolve(self.forms, row.refs(*_FORM_FIELDS), "form", problems)
        if form is not None and isinstance(row.data, dict):
            problems += self._check_data(form, row.data)
        site = self._resolve(self.sites, row.refs(*_SITE_FIELDS), "site", problems)
        problems += self._check_subject(row, site, number)
        self._resolve(self.intervals, row.refs(*_INTERVAL_FIELDS), "interval", problems)
        return problems

    @staticmethod
    def _resolve(
        index: dict[tuple[str, Any], Row],
        refs: list[tuple[str, Any]],
        what: str,
        problems: list[str],
    ) -> Row | None:
        """The one row all `refs` name; unknown or disagreeing references are problems."""
        found: list[Row] = []
        for attr, value in refs:
            row = index.get((attr, value))
            if row is None:
                problems.append(f"unknown {what} {attr}={value!r}")
            else:
                found.append(row)
        if len({id(r) for r in found}) > 1:
            named = " and ".join(f"{a}={v!r}" for a, v in refs)
            problems.append(f"{named} name different {what}s")
            return None
        return found[0] if found and len(found) == len(refs) else None

    def _check_data(self, form: Row, data: dict[str, Any]) -> list[str]:
        known = self.variables.get(form.get("formId"), {})
        unknown = [name for name in data if name not in known]
        problems = []
        if unknown:
            problems.append(
                f"unknown variable(s) {', '.join(map(repr, unknown))} on form {form['formKey']}"
            )
        if not data:
            problems.append("data is empty: nothing to write")
        for name, value in data.items():
            if name in known:
                problem = value_problem(str(known[name].get("variableType") or ""), value)
                if problem:
                    kind = known[name].get("variableType")
                    problems.append(f"{name} ({kind}): {problem}")
        return problems

    def _check_subject(self, row: RowFields, site: Row | None, number: int) -> list[str]:
        refs = row.refs(*_SUBJECT_FIELDS)
        if not refs:
            return []
        if registers_new_key(row, self.subject_keys):
            earlier = self.registering.setdefault(str(row.subject_key), number)
            if earlier != number:
                return [
                    f"subjectKey {row.subject_key!r} is registered by row {earlier} already; "
                    "register a subject once, then add its other forms in a later run"
                ]
            return []
        problems: list[str] = []
        subject = self._resolve(self.subjects, refs, "subject", problems)
        if problems and row.subject_key is not None and not row.given(*_SITE_FIELDS):
            problems[-1] += " (to register a new subject, also give siteName or siteId)"
        if subject is not None and subject.get("deleted"):
            problems.append(f"subject {subject.get('subjectKey')!r} is deleted")
        if subject is not None and site is not None and subject.get("siteId") != site["siteId"]:
            problems.append(
                f"subject {subject.get('subjectKey')!r} is at site {subject.get('siteName')!r}, "
                f"not {site.get('siteName')!r}"
            )
        return problems


def validate_batch(
    items: list[Any],
    forms: list[Row],
    variables: list[Row],
    sites: list[Row],
    subjects: list[Row],
    intervals: list[Row],
) -> tuple[list[RecordItem], list[str]]:
    """Every problem of every row, each as "row N: ..." (N 1-based), and the parsed rows.

    The rows come back only when there are no problems at all: a batch is sent whole or
    not at all, so a partial list would only invite posting half of it.
    """
    catalog = Catalog.build(forms, variables, sites, subjects, intervals)
    parsed: list[RecordItem] = []
    errors: list[str] = []
    for number, raw in enumerate(items, start=1):
        item, problems = _check_row(raw, catalog, number)
        errors += [f"row {number}: {p}" for p in problems]
        if item is not None:
            parsed.append(item)
    return (parsed, errors) if not errors else ([], errors)


def _check_row(raw: Any, catalog: Catalog, number: int) -> tuple[RecordItem | None, list[str]]:
    if not isinstance(raw, dict):
        return None, [f"not a JSON object but {type(raw).__name__} {raw!r:.60}"]
    problems = placement_problems(raw)
    try:
        item: RecordItem | None = RecordItem.model_validate(raw)
        fields: RowFields = item  # type: ignore[assignment]
    except ValidationError as exc:
        item = None
        problems += summarize(exc)
        bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
        try:
            fields = RowFields.model_validate({k: v for k, v in raw.items() if k not in bad})
        except ValidationError:  # a snake_case key pydantic reported under its alias
            fields = RowFields()
    problems += catalog.check(fields, number)
    return (item if not problems else None), problems


def summarize(exc: ValidationError) -> list[str]:
    """pydantic's errors as short phrases. Missing keys and the placement rule are left
    out: `placement_problems` words those, whether or not pydantic got that far."""
    out = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error["loc"])
        if error["type"] == "missing" or not loc:
            continue
        if error["type"] == "extra_forbidden":
            out.append(f"unexpected field {loc!r} (field names are case-sensitive)")
        else:
            out.append(f"{loc}: {error['msg'].removeprefix('Value error, ')}")
    return out


# --------------------------------------------------------------------------- landing check


def values_match(posted: Any, seen: Any) -> bool:
    """Whether a read-back value is the posted one. The emulator echoes typed JSON as
    posted; an API that returns everything as strings ("5", "true") matches too."""
    if posted is None or posted == "":
        return seen is None or seen == ""
    if isinstance(posted, bool):
        if isinstance(seen, bool):
            return seen is posted
        return isinstance(seen, str) and seen.strip().lower() == str(posted).lower()
    if isinstance(posted, int | float):
        if isinstance(seen, bool):
            return False
        if isinstance(seen, int | float):
            return seen == posted
        return isinstance(seen, str) and _as_float(seen) == float(posted)
    if isinstance(posted, str) and isinstance(seen, int | float) and not isinstance(seen, bool):
        return _as_float(posted) == float(seen)
    return bool(seen == posted)


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def data_contains(record_data: Mapping[str, Any] | None, posted: Mapping[str, Any]) -> bool:
    data = record_data or {}
    return all(name in data and values_match(v, data[name]) for name, v in posted.items())


def _at_or_after(stamp: Any, since: datetime) -> bool | None:
    """None when the API gave no usable timestamp: then nothing can be concluded."""
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return parse_timestamp(stamp) >= since
    except FilterError:
        return None


@dataclass(frozen=True)
class Landing:
    """Which rows (indexes into the list checked) are in the study, and which cannot be
    told apart from rows that are not."""

    landed: frozenset[int]
    undecidable: frozenset[int]


def _matches(record: Row, refs: list[tuple[str, Any]]) -> bool:
    return all(record.get(attr) == value for attr, value in refs)


def landed_rows(
    items: list[RecordItem],
    records: list[Row],
    since: datetime,
    interval_ids: Mapping[str, int] | None = None,
) -> Landing:
    """Compare what was posted with records read back after an interrupted POST.

    Rows aimed at the same record (same recordId, or the same subject/form/interval slot)
    are judged together against their merged data, later rows winning, because that is
    what the record shows once they are applied. A new record is one-to-one: each record
    created since the POST began can account for one row only.
    """
    live = [r for r in records if not r.get("deleted")]
    landed: set[int] = set()
    undecidable: set[int] = set()
    groups: dict[tuple[Any, ...], list[int]] = {}
    new_rows: list[int] = []
    for i, item in enumerate(items):
        mode = item.mode
        if mode is Mode.REGISTER:
            undecidable.add(i)  # no subject key: nothing to find the new subject by
        elif mode is Mode.NEW_RECORD:
            new_rows.append(i)
        else:
            key = _slot_key(item, interval_ids or {})
            if key is None:
                undecidable.add(i)
            else:
                groups.setdefault(key, []).append(i)
    claimed: set[int] = set()
    for key, members in groups.items():
        merged: dict[str, Any] = {}
        for i in members:
            merged.update(items[i].data)
        verdict = _slot_landed(key, live, merged, since)
        if verdict is None:
            undecidable.update(members)
        elif verdict is not False:
            landed.update(members)
            claimed.add(verdict)
    matched, unknown = _match_new_records(items, new_rows, live, since, claimed)
    return Landing(frozenset(landed | matched), frozenset(undecidable | unknown))


def _slot_key(item: RecordItem, interval_ids: Mapping[str, int]) -> tuple[Any, ...] | None:
    """What identifies the target record: its id/oid, or subject+form+interval."""
    if item.mode is Mode.UPDATE_EXISTING:
        return ("record", *item.refs(*_RECORD_FIELDS))
    interval_id = item.interval_id
    if interval_id is None:
        interval_id = interval_ids.get(str(item.interval_name))
        if interval_id is None:
            return None
    return (
        "slot",
        tuple(item.refs(*_SUBJECT_FIELDS)),
        tuple(item.refs(*_FORM_FIELDS)),
        ("intervalId", interval_id),
    )


def _slot_landed(
    key: tuple[Any, ...], live: list[Row], merged: dict[str, Any], since: datetime
) -> int | bool | None:
    """The recordId that shows the merged data, False if none does, None if unknown."""
    if key[0] == "record":
        candidates = [r for r in live if _matches(r, list(key[1:]))]
    else:
        refs = [*key[1], *key[2], key[3]]
        candidates = [r for r in live if _matches(r, refs)]
    unsure = False
    for record in candidates:
        if not data_contains(record.get("recordData"), merged):
            continue
        fresh = _at_or_after(record.get("dateModified"), since)
        if fresh:
            return int(record["recordId"])
        unsure = unsure or fresh is None
    return None if unsure else False


def _match_new_records(
    items: list[RecordItem],
    rows: list[int],
    live: list[Row],
    since: datetime,
    claimed: set[int],
) -> tuple[set[int], set[int]]:
    """A maximum matching rows -> records created since the POST began (Kuhn's algorithm):
    greedy matching could give row A the record that only row B's data fits."""
    options: dict[int, list[int]] = {}
    unknown: set[int] = set()
    for i in rows:
        item = items[i]
        refs = [*item.refs(*_SUBJECT_FIELDS), *item.refs(*_FORM_FIELDS)]
        options[i] = []
        for record in live:
            if record["recordId"] in claimed or not _matches(record, refs):
                continue
            if not data_contains(record.get("recordData"), item.data):
                continue
            fresh = _at_or_after(record.get("dateCreated"), since)
            if fresh is None:
                unknown.add(i)
            elif fresh:
                options[i].append(int(record["recordId"]))
    owner: dict[int, int] = {}

    def assign(i: int, seen: set[int]) -> bool:
        for record_id in options[i]:
            if record_id in seen:
                continue
            seen.add(record_id)
            if record_id not in owner or assign(owner[record_id], seen):
                owner[record_id] = i
                return True
        return False

    matched = {i for i in rows if assign(i, set())}
    return matched, unknown - matched


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
    return [j for j in payload if isinstance(j, dict) and _at_or_after(j.get("dateCreated"), since)]


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
        refs = item.refs(*_RECORD_FIELDS) or item.refs(*_SUBJECT_FIELDS)
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


def since_for(moment: datetime) -> datetime:
    """The API's dates have one-second resolution: a POST that began at 12:00:00.9 may have
    its records stamped 12:00:00, so comparisons start at the whole second."""
    utc = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return utc.replace(microsecond=0)
