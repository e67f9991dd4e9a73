"""`imednet-flows doctor`: can this machine sync from this server, and can the sync trust it?

Before a first sync against a new environment, proxy or API version, the questions
are: are the keys accepted, can they read the study, and does the server behave
the way the sync's correctness rests on (its clock, totals, page size and
filters)? The doctor asks with a handful of small read-only requests (10 planned,
at most 20 with one retry each) and judges the answers with the very functions
the sync runs on every page (`imednet_flows.edc.server_checks`), so a server the
doctor passes is one the sync will not refuse for these reasons.

It needs no Prefect flow run: credentials come from the flows' own factory
(environment variables, else Prefect Secret blocks), and the client is built here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from imednet_flows.cache.collections import QUERIES, RECORDS, SUBJECTS, VISITS, Collection
from imednet_flows.cache.reconcile import ID_CEILING
from imednet_flows.edc.client import API_ROOT, ImednetClient, study_path
from imednet_flows.edc.errors import ImednetFlowsError
from imednet_flows.edc.paging import scoped_filter
from imednet_flows.edc.retry import RetrySettings
from imednet_flows.edc.server_checks import (
    CLOCK,
    ID_FILTER,
    MAX_CLOCK_AHEAD,
    PAGE_SIZE,
    SINCE,
    TOTALS,
    Asked,
    Listing,
    ServerContractError,
    check_complete,
    check_id_range,
    check_keyset,
    check_since,
    check_split,
    inspect_listing,
)
from imednet_flows.filter_syntax import parse_timestamp, quote_value
from imednet_flows.settings import SettingsError
from imednet_flows.timestamps import canonical_ts, format_timestamp

#: One retry per request: a transient fault is told apart from a broken server, and the
#: doctor's 10 planned requests stay within 20 however the server answers.
ATTEMPTS = 2
MAX_REQUESTS = 20
#: The small page: any size the server must honour that is not the sync's own 500.
SMALL_PAGE = 5
FULL_PAGE = 500
SINCE_PAGE = 100

CREDENTIALS = "credentials"
STUDY_ACCESS = "study access"
ASSUMPTIONS = (CLOCK, TOTALS, PAGE_SIZE, SINCE, ID_FILTER)

PASSED = {
    CLOCK: (
        f"metadata.timestamp is there, in UTC, within {MAX_CLOCK_AHEAD:g} s of this machine's "
        "clock and not older than the rows it lists: safe to use as the watermark"
    ),
    TOTALS: (
        "totalPages and the rows on each page follow from totalElements: the sync reads "
        "to the last page and counts rows right"
    ),
    PAGE_SIZE: f"pages come at the size asked ({SMALL_PAGE} and {FULL_PAGE})",
    SINCE: "a dateModified>= listing holds only rows modified since: deltas are right",
    ID_FILTER: (
        "id ranges are counted and listed within their bounds and keyset pages stay above "
        "their last id: hard deletes are found without false ones"
    ),
}
FAILED = {
    CLOCK: "watermarks from this server could skip changes",
    TOTALS: "the sync could stop early or miscount rows",
    PAGE_SIZE: "the sync could stop early or skip rows",
    SINCE: "deltas from this server would be wrong",
    ID_FILTER: "the search for hard deletes could delete rows that still exist",
}


@dataclass
class Finding:
    check: str
    result: Literal["pass", "fail", "skip"]
    meaning: str
    #: For a failure: what the server did, which request, what was expected.
    detail: str = ""


@dataclass
class _Exam:
    """One study's examination: each assumption keeps its first failure."""

    client: ImednetClient
    study_key: str
    failures: dict[str, str] = field(default_factory=dict)
    tested: set[str] = field(default_factory=set)
    notes: dict[str, str] = field(default_factory=dict)

    def failed(self, error: ServerContractError) -> None:
        self.failures.setdefault(error.check, f"{error.request} {error.problem}")

    def attempt(self, check: str, fn: Callable[..., Any], *args: Any) -> None:
        self.tested.add(check)
        try:
            fn(*args)
        except ServerContractError as error:
            self.failed(error)

    def get(self, spec: Collection, size: int, *terms: str) -> tuple[Any, Asked]:
        """One page as the sync asks for it: page 0, the filter scoped by studyKey==K."""
        path = study_path(self.study_key, spec.route)
        text = scoped_filter(spec.route, self.study_key, [list(terms)])
        params = {**({"filter": text} if text else {}), "page": 0, "size": size}
        asked = Asked.of(path, params)
        return self.client.get(path, params, what=str(asked)), asked

    def page(self, check: str, spec: Collection, size: int, *terms: str) -> Listing | None:
        """GET one page and run every per-response check on it. An HTTP failure counts
        against `check`, the assumption the request was sent to test."""
        self.tested.update((check, CLOCK, TOTALS, PAGE_SIZE))
        try:
            payload, asked = self.get(spec, size, *terms)
        except ImednetFlowsError as error:
            self.failures.setdefault(check, str(error))
            return None
        return inspect_listing(payload, asked, self.failed, spec.id_field)


def diagnose(client: ImednetClient, study_key: str | None) -> list[Finding]:
    """Every finding, in the order of the table; never raises for what the server does."""
    try:
        studies = client.get(API_ROOT, {"page": 0, "size": 1}, what="checking the keys")
    except ImednetFlowsError as error:
        return [
            Finding(CREDENTIALS, "fail", "the API refused the keys or was not reached", str(error)),
            *_skipped(STUDY_ACCESS, *ASSUMPTIONS, reason="the keys failed"),
        ]
    where = client.base_url or "the hosted service"
    findings = [Finding(CREDENTIALS, "pass", f"the keys are accepted by {where}")]
    if study_key is None:
        visible = studies.get("data") if isinstance(studies, dict) else None
        study_key = (visible or [{}])[0].get("studyKey")
        if not study_key:
            return [*findings, *_skipped(STUDY_ACCESS, *ASSUMPTIONS, reason="no study is visible")]
    exam = _Exam(client, study_key)
    try:
        first_page, asked = exam.get(RECORDS, SMALL_PAGE)
    except ImednetFlowsError as error:
        return [
            *findings,
            Finding(STUDY_ACCESS, "fail", f"study {study_key} cannot be read", str(error)),
            *_skipped(*ASSUMPTIONS, reason=f"study {study_key} is not readable"),
        ]
    findings.append(Finding(STUDY_ACCESS, "pass", f"the keys can read study {study_key}"))
    exam.tested.update((CLOCK, TOTALS, PAGE_SIZE))
    inspect_listing(first_page, asked, exam.failed, RECORDS.id_field)
    for spec in (SUBJECTS, VISITS, QUERIES):
        exam.page(TOTALS, spec, SMALL_PAGE)
    full = exam.page(PAGE_SIZE, RECORDS, FULL_PAGE)
    if full is None or not full.items:
        for check in (SINCE, ID_FILTER):
            exam.notes[check] = "no page of records to build the test from"
    else:
        _check_since(exam, full.items)
        _check_id_filters(exam, full)
    return [*findings, *(_verdict(exam, check) for check in ASSUMPTIONS)]


def _check_since(exam: _Exam, rows: list[dict[str, Any]]) -> None:
    """Ask for rows modified at or after the newest of a page: an honest server sends
    some, a server ignoring the term sends the older ones too."""
    stamps = sorted(s for r in rows if (s := canonical_ts(r.get("dateModified"))))
    if not stamps:
        exam.notes[SINCE] = "the records carry no dateModified"
        return
    since = stamps[-1]
    if stamps[0] == since:  # one shared second: ask past it, so every old row must go
        since = format_timestamp(parse_timestamp(since) + timedelta(seconds=1))
    listing = exam.page(SINCE, RECORDS, SINCE_PAGE, f"dateModified>={quote_value(since)}")
    if listing is not None:
        exam.attempt(SINCE, check_since, listing.items, since, listing.asked, RECORDS.id_field)


def _check_id_filters(exam: _Exam, full: Listing) -> None:
    """A narrow id range from a page: counted (size 1) and listed, as the search for hard
    deletes asks; then one keyset page after an id in the middle."""
    key = RECORDS.id_field
    ids = sorted(r[key] for r in full.items if isinstance(r.get(key), int))
    if not ids:
        exam.notes[ID_FILTER] = "the records carry no ids"
        return
    middle = len(ids) // 2
    lo, hi = ids[middle], ids[min(middle + 2, len(ids) - 1)]
    bounds = (f"{key}>={lo}", f"{key}<={hi}")
    count = exam.page(ID_FILTER, RECORDS, 1, *bounds)
    if count is not None:
        exam.attempt(ID_FILTER, check_id_range, count.items, key, lo, hi, count.asked)
        total = full.total_elements
        exam.attempt(
            ID_FILTER, check_split, count.total_elements, lo, hi, total, 0, ID_CEILING, key
        )
    listed = exam.page(ID_FILTER, RECORDS, FULL_PAGE, *bounds)
    if listed is not None:
        exam.attempt(ID_FILTER, check_id_range, listed.items, key, lo, hi, listed.asked)
        exam.attempt(ID_FILTER, check_complete, listed)
    keyset = exam.page(ID_FILTER, RECORDS, SMALL_PAGE, f"{key}>{ids[middle]}")
    if keyset is not None:
        exam.attempt(ID_FILTER, check_keyset, keyset.items, key, ids[middle], keyset.asked)


def _verdict(exam: _Exam, check: str) -> Finding:
    if check in exam.failures:
        return Finding(check, "fail", FAILED[check], exam.failures[check])
    if check not in exam.tested:
        return Finding(check, "skip", f"not checked: {exam.notes.get(check, 'no data')}")
    return Finding(check, "pass", PASSED[check])


def _skipped(*checks: str, reason: str) -> list[Finding]:
    return [Finding(c, "skip", f"not checked: {reason}") for c in checks]


STYLES = {"pass": "green", "fail": "bold red", "skip": "yellow"}


def report(findings: list[Finding], console: Console) -> int:
    """The table, then each failure in full (so it can be copied into a ticket); the exit
    code is 1 when anything failed."""
    table = Table(title="imednet-flows doctor", show_lines=True)
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("what it means")
    for f in findings:
        table.add_row(f.check, f"[{STYLES[f.result]}]{f.result.upper()}[/]", f.meaning)
    console.print(table)
    failures = [f for f in findings if f.result == "fail"]
    for f in failures:
        console.print(f"FAIL {f.check}: {f.detail}", soft_wrap=True, markup=False, highlight=False)
    return 1 if failures else 0


def run_doctor(study_key: str | None, console: Console | None = None) -> int:
    """Resolve credentials as the flows do, examine the server, print, return the exit code."""
    from imednet_flows.credentials import resolve_credentials

    console = console or Console()
    try:
        credentials = resolve_credentials()
    except Exception as error:  # a missing Secret block, or no Prefect API to ask
        told = isinstance(error, ImednetFlowsError | SettingsError)
        message = str(error) if told else repr(error)
        console.print(f"FAIL {CREDENTIALS}: {message}", soft_wrap=True, markup=False)
        return 1
    console.print(
        f"iMednet API at {credentials.base_url or 'the hosted service'}"
        + (f", study {study_key}" if study_key else ""),
        markup=False,
    )
    with ImednetClient(
        credentials,
        retry=replace(RetrySettings.configured(), max_attempts=ATTEMPTS),
        max_concurrency=1,
    ) as client:
        findings = diagnose(client, study_key)
        console.print(f"{client.requests} requests", markup=False)
    return report(findings, console)
