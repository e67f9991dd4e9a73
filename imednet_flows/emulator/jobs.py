"""POST /records batches as jobs: validation, the state machine and atomic apply.

A batch is checked in full before anything changes, so a job that fails leaves
every record, subject and revision untouched, as api-behaviour.md §5 requires.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from imednet_flows.emulator.audit import API_AUTHOR, coded_value, record_changed
from imednet_flows.emulator.record_values import BadValue, read_back_data
from imednet_flows.emulator.store import StudyStore

JobOutcome = Literal["completed", "failed", "cancelled", "stuck"]
TERMINAL = ("completed", "failed", "cancelled")


class BadBatch(ValueError):
    """The POST body itself is malformed: 400, and no job is created."""


@dataclass
class Job:
    study_key: str
    items: list[dict[str, Any]]
    outcome: JobOutcome = "completed"
    email_notify: str | None = None
    job_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    batch_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: str = "created"
    date_created: str = ""
    date_started: str | None = None
    date_finished: str | None = None
    created_at: float = field(default_factory=time.monotonic)
    error: str | None = None
    record_ids: list[int] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "jobId": self.job_id,
            "batchId": self.batch_id,
            "state": self.state,
            "dateCreated": self.date_created,
            "dateStarted": self.date_started,
            "dateFinished": self.date_finished,
        }

    def accepted_json(self) -> dict[str, Any]:
        """The 202 body: a POST always answers `created`, however fast the job runs."""
        return {"jobId": self.job_id, "batchId": self.batch_id, "state": "created"}


def check_batch(body: Any) -> list[dict[str, Any]]:
    """Synchronous checks that reject a request outright (api-behaviour.md §5)."""
    if not isinstance(body, list) or not body:
        raise BadBatch("the body must be a non-empty JSON array of record items")
    for n, item in enumerate(body):
        if not isinstance(item, dict):
            raise BadBatch(f"item {n} is not a JSON object")
        if "formKey" not in item and "formId" not in item:
            raise BadBatch(f"item {n} has neither formKey nor formId")
        if not isinstance(item.get("data"), dict):
            raise BadBatch(f"item {n} needs a 'data' object of variableName: value")
    return body


def advance(
    job: Job, store: StudyStore | None, now: str, delay: float, as_posted: bool = False
) -> None:
    """Move a job along created -> processing -> terminal as time passes."""
    if job.state in TERMINAL:
        return
    elapsed = time.monotonic() - job.created_at
    if job.state == "created" and elapsed >= delay / 2:
        job.state, job.date_started = "processing", now
    if job.state != "processing" or elapsed < delay or job.outcome == "stuck":
        return
    if job.outcome == "completed":
        if store is None:
            job.outcome, job.error = "failed", f'study "{job.study_key}" no longer exists'
        else:
            try:
                job.record_ids = apply_items(store, job.items, now, as_posted)
            except ItemError as exc:
                job.outcome, job.error = "failed", str(exc)
    job.state, job.date_finished = job.outcome, now


class ItemError(ValueError):
    """A business-rule error inside a batch: the job fails and nothing changes."""


@dataclass
class _Target:
    form: dict[str, Any]
    data: dict[str, Any]
    record: dict[str, Any] | None = None
    subject: dict[str, Any] | None = None
    site: dict[str, Any] | None = None
    interval: dict[str, Any] | None = None
    register_key: str | None = None


def _index(rows: dict[Any, dict[str, Any]], *fields: str) -> dict[tuple[str, Any], dict[str, Any]]:
    return {(f, row.get(f)): row for row in rows.values() for f in fields}


class _Resolver:
    """Finds what each item of a batch names, collecting every error of the batch so the
    job's message lists them all, not just the first."""

    def __init__(self, store: StudyStore, as_posted: bool) -> None:
        t = store.tables
        self.records = t["records"]
        self.as_posted = as_posted
        self.forms = _index(t["forms"], "formKey", "formId")
        self.sites = _index(t["sites"], "siteName", "siteId")
        self.intervals = _index(t["intervals"], "intervalName", "intervalId")
        self.subjects = _index(t["subjects"], "subjectKey", "subjectId", "subjectOid")
        self.types: dict[int, dict[str, str]] = {}
        for var in t["variables"].values():
            self.types.setdefault(var["formId"], {})[var["variableName"]] = var["variableType"]
        self._by_oid: dict[str, dict[str, Any]] | None = None
        self.errors: list[str] = []

    def lookup(
        self,
        index: dict[tuple[str, Any], dict[str, Any]],
        item: dict[str, Any],
        fields: tuple[str, ...],
        what: str,
        n: int,
    ) -> dict[str, Any] | None:
        """The row the item's first given field names; an error when it names none alive."""
        for f in fields:
            if item.get(f) is not None:
                row = index.get((f, item[f]))
                if row is None or row.get("deleted"):
                    self.errors.append(f"item {n}: unknown {what} {f}={item[f]!r}")
                return row
        return None

    def target(self, n: int, item: dict[str, Any]) -> _Target | None:
        """Item `n` resolved, or None when it cannot be (its errors are recorded)."""
        form = self.lookup(self.forms, item, ("formKey", "formId"), "form", n)
        if form is None:
            return None
        types = self.types.get(form["formId"], {})
        unknown = sorted(set(item["data"]) - set(types))
        if unknown:
            self.errors.append(f"item {n}: unknown variable(s) {unknown} on form {form['formKey']}")
        try:
            target = _Target(form=form, data=read_back_data(item["data"], types, self.as_posted))
        except BadValue as exc:
            self.errors.append(f"item {n}: {exc}")
            return None
        if item.get("recordId") is not None or item.get("recordOid") is not None:
            target.record = self._record(n, item, form)
        else:
            self._place(n, item, target)
        return target

    def _record(self, n: int, item: dict[str, Any], form: dict[str, Any]) -> dict[str, Any] | None:
        """The existing record an update names by recordId or recordOid, on the item's form."""
        if item.get("recordId") is not None:
            record = self.records.get(item["recordId"])
        else:
            if self._by_oid is None:
                self._by_oid = {r["recordOid"]: r for r in self.records.values()}
            record = self._by_oid.get(item["recordOid"])
        if record is None or record.get("deleted"):
            ref = item.get("recordId", item.get("recordOid"))
            self.errors.append(f"item {n}: unknown record {ref!r}")
        elif record["formId"] != form["formId"]:
            self.errors.append(
                f"item {n}: record {record['recordId']} is not on form {form['formKey']}"
            )
        return record

    def _place(self, n: int, item: dict[str, Any], target: _Target) -> None:
        """Where a new record goes: a subject (or a site registering one) and an interval."""
        site = self.lookup(self.sites, item, ("siteName", "siteId"), "site", n)
        subject_fields = ("subjectKey", "subjectId", "subjectOid")
        subject = None
        if any(item.get(f) is not None for f in subject_fields):
            key = item.get("subjectKey")
            subject = self.subjects.get(("subjectKey", key)) if key is not None else None
            if subject is None and site is not None and key is not None:
                target.register_key = str(key)  # registration with a chosen subject key
            else:
                subject = self.lookup(self.subjects, item, subject_fields, "subject", n)
        elif site is None and not any(item.get(f) is not None for f in ("siteName", "siteId")):
            self.errors.append(f"item {n}: no record, subject or site given; cannot place the data")
        target.site, target.subject = site, subject
        target.interval = self.lookup(
            self.intervals, item, ("intervalName", "intervalId"), "interval", n
        )


def _resolve(
    store: StudyStore, items: list[dict[str, Any]], as_posted: bool = False
) -> list[_Target]:
    """Every item's target, or ItemError naming every bad item: nothing is applied then."""
    resolver = _Resolver(store, as_posted)
    targets = [t for n, item in enumerate(items) if (t := resolver.target(n, item)) is not None]
    if resolver.errors:
        raise ItemError("; ".join(resolver.errors))
    return targets


def apply_items(
    store: StudyStore, items: list[dict[str, Any]], now: str, as_posted: bool = False
) -> list[int]:
    """Apply a whole batch or nothing; return the ids of records created or changed.

    Values are stored as the API reads them back (text), or as posted with `as_posted`.
    """
    targets = _resolve(store, items, as_posted)
    # Built once per batch: a scan of 200,000 records per item would not do.
    scheduled = {
        (r["subjectId"], r["formId"], r["intervalId"]): r
        for r in store.tables["records"].values()
        if not r["deleted"]
    }
    visits = {(v["subjectId"], v["intervalId"]): v for v in store.tables["visits"].values()}
    touched: list[int] = []
    changed = {"records"}
    for target in targets:
        record = target.record
        created = False
        if record is None:
            subject = target.subject
            if subject is None:
                subject = _register_subject(store, target, now)
                changed.add("subjects")
            interval = target.interval
            if interval is None and target.subject is None:
                interval = _first_interval_with(store, target.form["formId"])
            record = None
            if interval is not None:
                slot = (subject["subjectId"], target.form["formId"], interval["intervalId"])
                record = scheduled.get(slot)
            if record is None:
                visit = None
                if interval is not None:
                    visit = visits.get((subject["subjectId"], interval["intervalId"]))
                    if visit is None:
                        visit = new_visit(store, subject, interval, now)
                        visits[(subject["subjectId"], interval["intervalId"])] = visit
                        changed.add("visits")
                record = _new_record(store, subject, target.form, visit, now)
                created = True
                if interval is not None:
                    scheduled[slot] = record
        data_changed = created or any(
            record["recordData"].get(k) != v for k, v in target.data.items()
        )
        coded_before = coded_value(record)
        record["recordData"].update(target.data)
        record["dateModified"] = now
        # Each item is one save of the record, so one revision, also when two items of
        # a batch name the same record.
        record_changed(store, record, now, data_changed, API_AUTHOR, coded_before)
        touched.append(record["recordId"])
    store.changed(*changed)
    return touched


def _register_subject(store: StudyStore, target: _Target, now: str) -> dict[str, Any]:
    assert target.site is not None
    return new_subject(store, target.site, now, target.register_key)


def new_subject(
    store: StudyStore, site: dict[str, Any], now: str, key: str | None = None
) -> dict[str, Any]:
    """A subject as the EDC creates it on registration: Screened, no keywords yet."""
    subject_id = store.new_id("subjects")
    subject = {
        "studyKey": store.key,
        "subjectId": subject_id,
        "subjectOid": f"OID-{subject_id}",
        "subjectKey": key or f"{site['siteId'] % 100:02d}-N{subject_id % 100_000:05d}",
        "subjectStatus": "Screened",
        "siteId": site["siteId"],
        "siteName": site["siteName"],
        "deleted": False,
        "enrollmentStartDate": now,
        "dateCreated": now,
        "dateModified": now,
        "keywords": [],
    }
    store.tables["subjects"][subject_id] = subject
    return subject


def _first_interval_with(store: StudyStore, form_id: int) -> dict[str, Any] | None:
    for interval in store.tables["intervals"].values():
        if any(f.get("formId") == form_id for f in interval.get("forms") or []):
            return interval
    return None


def new_visit(
    store: StudyStore, subject: dict[str, Any], interval: dict[str, Any], now: str
) -> dict[str, Any]:
    visit_id = store.new_id("visits")
    today = now[:10]
    visit = {
        "studyKey": store.key,
        "visitId": visit_id,
        "intervalId": interval["intervalId"],
        "intervalName": interval["intervalName"],
        "subjectId": subject["subjectId"],
        "subjectKey": subject["subjectKey"],
        "startDate": today,
        "endDate": today,
        "dueDate": None,
        "visitDate": today,
        "visitDateForm": "",
        "visitDateQuestion": "",
        "deleted": False,
        "dateCreated": now,
        "dateModified": now,
    }
    store.tables["visits"][visit_id] = visit
    return visit


def _new_record(
    store: StudyStore,
    subject: dict[str, Any],
    form: dict[str, Any],
    visit: dict[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    record_id = store.new_id("records")
    record = {
        "studyKey": store.key,
        "intervalId": visit["intervalId"] if visit else 0,
        "formId": form["formId"],
        "formKey": form["formKey"],
        "siteId": subject["siteId"],
        "recordId": record_id,
        "recordOid": f"REC-{record_id}",
        "recordType": "SUBJECT",
        "recordStatus": "Record Incomplete",
        "deleted": False,
        "dateCreated": now,
        "dateModified": now,
        "subjectId": subject["subjectId"],
        "subjectOid": subject["subjectOid"],
        "subjectKey": subject["subjectKey"],
        "visitId": visit["visitId"] if visit else 0,
        "parentRecordId": 0,
        "keywords": [],
        "recordData": {},
    }
    store.tables["records"][record_id] = record
    store.revisions[record_id] = (0, 0)
    return record
