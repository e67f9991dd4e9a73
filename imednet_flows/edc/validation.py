"""Record rows for POST /records, checked before anything is sent.

A batch is posted whole or not at all, so every row is checked first against the
study's forms, variables, sites, subjects and intervals, and every problem of every
row is reported in one pass rather than one POST at a time. This module also says
which of the four posting modes a row is in, which the landing check relies on.

Row numbers in every message are 1-based, counted over the whole input (the
first row is "row 1"), because that is how a data manager counts the rows of
a spreadsheet. Messages name row numbers, field names and the kind of value
expected or given, never a value taken from a row: rows are clinical data, and
messages end up in logs, the Prefect UI and terminals.

No Prefect imports and no API calls: the Record Update flow passes in what it read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator
from pydantic.alias_generators import to_camel

Row = dict[str, Any]


# --------------------------------------------------------------------------- the row model


class Mode(StrEnum):
    """The four things a POST /records item can do (api-behaviour.md §5)."""

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

#: The fields that name each kind of target, snake_case; `landing` and `batches` find
#: a row's target records by them too.
SUBJECT_FIELDS = ("subject_key", "subject_id", "subject_oid")
RECORD_FIELDS = ("record_id", "record_oid")
SITE_FIELDS = ("site_name", "site_id")
FORM_FIELDS = ("form_key", "form_id")
INTERVAL_FIELDS = ("interval_name", "interval_id")


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
        return [(CAMEL[n], getattr(self, n)) for n in names if getattr(self, n) is not None]


#: snake_case field -> the API's camelCase, computed once (rows are checked by the 100,000).
CAMEL = {name: to_camel(name) for name in RowFields.model_fields}


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
        if self.given(*RECORD_FIELDS):
            return Mode.UPDATE_EXISTING
        if not self.given(*SUBJECT_FIELDS):
            return Mode.REGISTER
        return Mode.UPDATE_SCHEDULED if self.given(*INTERVAL_FIELDS) else Mode.NEW_RECORD

    def to_api(self) -> Row:
        """The JSON item: only the fields that are set, camelCase, data as given."""
        body = {CAMEL[name]: value for name, value in self if value is not None}
        body["data"] = dict(self.data)
        return body


def placement_problems(fields: RowFields | Mapping[str, Any]) -> list[str]:
    """What a row lacks to be posted at all: which form, what data, and where it goes."""
    if not isinstance(fields, RowFields):
        fields = RowFields.model_construct(
            **{name: fields.get(CAMEL[name], fields.get(name)) for name in RowFields.model_fields}
        )
    problems = []
    if not fields.given(*FORM_FIELDS):
        problems.append("no formKey or formId: say which form the row writes to")
    if fields.data is None:
        problems.append("no data: give the values to write as {variableName: value}")
    if not fields.given(*RECORD_FIELDS, *SUBJECT_FIELDS, *SITE_FIELDS):
        problems.append(
            "nothing places the row: give recordId/recordOid (update a record), a subject "
            "(subjectKey/subjectId/subjectOid) or a site (siteName/siteId, to register)"
        )
    return problems


def detect_mode(item: RecordItem, known_subject_keys: Iterable[str]) -> Mode:
    """`item.mode`, plus registration with a chosen subjectKey (api-behaviour.md §5 DECISION)."""
    known = known_subject_keys if isinstance(known_subject_keys, set) else set(known_subject_keys)
    if registers_new_key(item, known):
        return Mode.REGISTER
    return item.mode


def registers_new_key(item: RowFields, known_subject_keys: set[str]) -> bool:
    return (
        item.subject_key is not None
        and item.subject_key not in known_subject_keys
        and item.subject_id is None
        and item.subject_oid is None
        and not item.given(*RECORD_FIELDS)
        and item.given(*SITE_FIELDS)
    )


# --------------------------------------------------------------------------- validation

_INTEGER_RE = re.compile(r"[+-]?[0-9]+")
_NUMBER_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def value_problem(variable_type: str, value: Any) -> str | None:
    """Why `value` cannot be posted to a variable of this type, or None if it can.

    None and "" clear a value, whatever the type (read-back shows a blank as "").
    The answer names the kind of value given, never the value: it is clinical data.
    """
    if value is None or value == "":
        return None
    kind = variable_type.upper()
    given = f"(got {shape(value)})"
    if isinstance(value, dict | list):
        return f"{shape(value)} cannot be a {kind} value"
    if kind == "INTEGER":
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and _INTEGER_RE.fullmatch(value.strip()) is not None
        )
        return None if ok else f"not an integer {given}"
    if kind == "NUMBER":
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)  # JSON has no NaN or Infinity
        ) or (isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()) is not None)
        return None if ok else f"not a number {given}"
    if kind == "DATE":
        return None if _is_date(value) else f"not a date in YYYY-MM-DD form {given}"
    if kind == "CHECKBOX":
        return None if isinstance(value, bool) else f"not true or false {given}"
    if kind in ("RADIO", "TEXT", "MEMO"):
        return None if isinstance(value, str) else f"not text (quote it) {given}"
    return None  # a type this project does not know: leave it to the API


def shape(value: Any) -> str:
    """What kind of JSON value this is, for messages that must not show the value."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a non-finite number" if not math.isfinite(value) else "a decimal number"
    if isinstance(value, str):
        return "text that does not fit" if value.strip() else "blank text"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else type(value).__name__


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

    @cached_property
    def subject_keys(self) -> set[str]:
        return {value for (attr, value) in self.subjects if attr == "subjectKey"}

    def check(self, row: RowFields, number: int) -> list[str]:
        problems: list[str] = []
        form = self._resolve(self.forms, row.refs(*FORM_FIELDS), "form", problems)
        if form is not None and isinstance(row.data, dict):
            problems += self._check_data(form, row.data)
        site = self._resolve(self.sites, row.refs(*SITE_FIELDS), "site", problems)
        problems += self._check_subject(row, site, number)
        self._resolve(self.intervals, row.refs(*INTERVAL_FIELDS), "interval", problems)
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
                problems.append(f"unknown {what}: {attr} names no {what} of this study")
            else:
                found.append(row)
        if len({id(r) for r in found}) > 1:
            named = " and ".join(a for a, _ in refs)
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
        refs = row.refs(*SUBJECT_FIELDS)
        if not refs:
            return []
        if registers_new_key(row, self.subject_keys):
            earlier = self.registering.setdefault(str(row.subject_key), number)
            if earlier != number:
                return [
                    f"this subjectKey is registered by row {earlier} already; "
                    "register a subject once, then add its other forms in a later run"
                ]
            return []
        problems: list[str] = []
        subject = self._resolve(self.subjects, refs, "subject", problems)
        if problems and row.subject_key is not None and not row.given(*SITE_FIELDS):
            problems[-1] += " (to register a new subject, also give siteName or siteId)"
        if subject is not None and subject.get("deleted"):
            problems.append("the subject is deleted")
        if subject is not None and site is not None and subject.get("siteId") != site["siteId"]:
            named = " and ".join(a for a, _ in row.refs(*SITE_FIELDS))
            problems.append(f"the subject is at another site than {named} names")
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
        return None, [f"not a JSON object but {shape(raw)}"]
    problems: list[str] = []
    try:
        item: RecordItem | None = RecordItem.model_validate(raw)
        fields: RowFields = item  # type: ignore[assignment]
    except ValidationError as exc:
        item = None
        problems += placement_problems(raw) + summarize(exc)
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


def row_ranges(numbers: Iterable[int]) -> str:
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
