"""Unit tests for the emulator's seed generator (no server involved).

These pin the properties the emulator and the flow tests rely on: exact API field sets,
deterministic output, id order, referential integrity and SDK 0.5.0 parseability.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections import Counter
from datetime import datetime

import pytest
from imednet.models import (
    Coding,
    Form,
    Interval,
    Query,
    Record,
    RecordRevision,
    Site,
    Study,
    Subject,
    User,
    Variable,
    Visit,
)

from imednet_flows.emulator.seed import (
    CODED_FORMS,
    DELETE_REASON,
    EDIT_REASONS,
    ID_FIELDS,
    ID_STRIDE,
    MIGRATION,
    ROLES,
    VARIABLE_TYPES,
    StudyData,
    StudySpec,
    generate_study,
)

TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TS_MIN = "2024-01-01 00:00:00"
TS_MAX = "2025-12-31 23:59:59"


def _fields(names: str) -> set[str]:
    return set(names.split())


# api-behaviour.md §3, field for field.
SCHEMA: dict[str, set[str]] = {
    "study": _fields(
        "sponsorKey studyKey studyId studyName studyDescription studyType dateCreated dateModified"
    ),
    "sites": _fields("studyKey siteId siteName siteEnrollmentStatus dateCreated dateModified"),
    "forms": _fields(
        "studyKey formId formKey formName formType revision embeddedLog enforceOwnership "
        "userAgreement subjectRecordReport unscheduledVisit otherForms eproForm allowCopy "
        "disabled dateCreated dateModified"
    ),
    "intervals": _fields(
        "studyKey intervalId intervalName intervalDescription intervalSequence intervalGroupId "
        "intervalGroupName timeline definedUsingInterval windowCalculationForm "
        "windowCalculationDate actualDateForm actualDate dueDateWillBeIn negativeSlack "
        "positiveSlack eproGracePeriod forms disabled dateCreated dateModified"
    ),
    "visits": _fields(
        "studyKey visitId intervalId intervalName subjectId subjectKey startDate endDate dueDate "
        "visitDate visitDateForm visitDateQuestion deleted dateCreated dateModified"
    ),
    "subjects": _fields(
        "studyKey subjectId subjectOid subjectKey subjectStatus siteId siteName deleted "
        "enrollmentStartDate dateCreated dateModified keywords"
    ),
    "records": _fields(
        "studyKey intervalId formId formKey siteId recordId recordOid recordType recordStatus "
        "deleted dateCreated dateModified subjectId subjectOid subjectKey visitId parentRecordId "
        "keywords recordData"
    ),
    "record_revisions": _fields(
        "studyKey recordRevisionId recordId recordOid recordRevision dataRevision recordStatus "
        "subjectId subjectOid subjectKey siteId formKey intervalId role user reasonForChange "
        "deleted dateCreated"
    ),
    "queries": _fields(
        "studyKey subjectId subjectOid annotationType annotationId type description recordId "
        "variable subjectKey dateCreated dateModified queryComments"
    ),
    "variables": _fields(
        "studyKey variableId variableType variableName sequence revision disabled dateCreated "
        "dateModified formId variableOid deleted formKey formName label blinded"
    ),
    "codings": _fields(
        "studyKey siteName siteId subjectId subjectKey formId formName formKey revision recordId "
        "variable value codingId code codedBy reason dictionaryName dictionaryVersion "
        "dateCoded"
    ),
    "users": _fields("userId login firstName lastName email userActiveInStudy roles"),
}
KEYWORD_FIELDS = {"keywordName", "keywordKey", "keywordId", "dateAdded"}
COMMENT_FIELDS = {"sequence", "annotationStatus", "user", "comment", "closed", "date"}
ROLE_FIELDS = _fields(
    "dateCreated dateModified roleId communityId name description level type inactive"
)
FORM_SUMMARY_FIELDS = {"formId", "formKey", "formName"}
NULLABLE = {("visits", "dueDate"), ("queries", "type")}
TS_FIELDS = {"dateCreated", "dateModified", "enrollmentStartDate", "dateCoded"}
LISTS = [name for name in SCHEMA if name != "study"]

# Big enough for > 500 rows of subjects, visits, records and queries, still ~50 ms.
BIG = StudySpec(
    study_key="BIG", study_id=7, seed=3, subjects=520, intervals=1, forms_per_interval=1,
    query_rate=1.2, sites=4, users=6,
)  # fmt: skip
MEDIUM = StudySpec(study_key="MED", study_id=2, seed=5, subjects=120, intervals=5)


@pytest.fixture(scope="module")
def demo() -> StudyData:
    return generate_study(StudySpec())


@pytest.fixture(scope="module")
def medium() -> StudyData:
    return generate_study(MEDIUM)


@pytest.fixture(scope="module")
def big() -> StudyData:
    return generate_study(BIG)


def _rows(data: StudyData, name: str) -> list[dict]:
    return [data.study] if name == "study" else getattr(data, name)


def test_deterministic() -> None:
    assert generate_study(MEDIUM) == generate_study(MEDIUM)
    assert generate_study(StudySpec(seed=2)).records != generate_study(StudySpec()).records


#: sha256 of every list of `generate_study(spec)`, in order, as JSON. A refactoring of the
#: seed must leave these as they are: tests, benchmarks and people's notes pick rows by
#: position. Change them only with a change of the data that is meant, and say so.
FINGERPRINTS = {
    StudySpec(): "47b763c6001ba3b024222f1a847684f6df66a0b1056115b632fee4082b5d1adf",
    StudySpec(
        study_key="ONC-7", study_id=3, seed=3, sites=20, subjects=40, intervals=12,
        forms_per_interval=14, query_rate=1.7, closed_query_rate=0.9, users=3,
    ): "d975588578ec2fb1f0a2912df344c12d67d2e293039d6adef22abc8755eba725",
}  # fmt: skip


@pytest.mark.parametrize("spec", list(FINGERPRINTS), ids=lambda s: s.study_key)
def test_same_spec_same_bytes_as_before(spec: StudySpec) -> None:
    data = generate_study(spec)
    digest = hashlib.sha256()
    for part in dataclasses.fields(data):
        digest.update(part.name.encode())
        digest.update(json.dumps(getattr(data, part.name)).encode())
    assert digest.hexdigest() == FINGERPRINTS[spec]


def test_users_do_not_change_the_clinical_rows() -> None:
    """Tests and benchmarks pick rows by position: the number of users must not move them."""
    few, many = generate_study(StudySpec(users=5)), generate_study(StudySpec(users=300))
    for name in ("sites", "forms", "subjects", "visits", "records"):
        assert getattr(few, name) == getattr(many, name), name
    assert len(many.users) == 300


def test_every_field_present_and_non_null(medium: StudyData) -> None:
    for name, fields in SCHEMA.items():
        rows = _rows(medium, name)
        assert rows, name
        for row in rows:
            assert set(row) == fields, name
            for key, value in row.items():
                if (name, key) not in NULLABLE:
                    assert value is not None, (name, key)
            if "studyKey" in fields:
                assert row["studyKey"] == "MED"
    for s in medium.subjects + medium.records:
        for kw in s["keywords"]:
            assert set(kw) == KEYWORD_FIELDS
    assert any(s["keywords"] for s in medium.subjects)
    assert any(r["keywords"] for r in medium.records)
    for q in medium.queries:
        for c in q["queryComments"]:
            assert set(c) == COMMENT_FIELDS
    for u in medium.users:
        assert u["roles"]
        for role in u["roles"]:
            assert set(role) == ROLE_FIELDS
    for i in medium.intervals:
        assert i["forms"]
        for f in i["forms"]:
            assert set(f) == FORM_SUMMARY_FIELDS
    assert any(v["dueDate"] is None for v in medium.visits)
    assert any(q["type"] is None for q in medium.queries)
    assert any(isinstance(q["type"], str) for q in medium.queries)


@pytest.mark.parametrize("name", [n for n in LISTS if n not in ("codings", "users")])
def test_ids_ascending_and_unique(medium: StudyData, name: str) -> None:
    ids = [row[ID_FIELDS[name]] for row in getattr(medium, name)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_codings_and_users_order(medium: StudyData) -> None:
    keys = [(c["recordId"], c["codingId"]) for c in medium.codings]
    assert keys == sorted(keys)
    assert len({c["codingId"] for c in medium.codings}) == len(keys)
    logins = [u["login"] for u in medium.users]
    assert logins == sorted(logins)
    assert len(set(logins)) == len(logins)


def test_ids_unique_across_studies(demo: StudyData, medium: StudyData) -> None:
    assert demo.study["studyId"] != medium.study["studyId"]
    for name in LISTS:
        if name == "users":
            continue
        field = "codingId" if name == "codings" else ID_FIELDS[name]
        a = {row[field] for row in getattr(demo, name)}
        b = {row[field] for row in getattr(medium, name)}
        assert a and b and not (a & b), name
    assert all(r["recordId"] // ID_STRIDE == MEDIUM.study_id for r in medium.records)


def test_cross_references(medium: StudyData) -> None:
    sites = {s["siteId"]: s for s in medium.sites}
    forms = {f["formId"]: f for f in medium.forms}
    subjects = {s["subjectId"]: s for s in medium.subjects}
    visits = {v["visitId"]: v for v in medium.visits}
    intervals = {i["intervalId"]: i for i in medium.intervals}
    var_names: dict[int, list[str]] = {}
    for v in medium.variables:
        assert forms[v["formId"]]["formKey"] == v["formKey"]
        assert forms[v["formId"]]["formName"] == v["formName"]
        var_names.setdefault(v["formId"], []).append(v["variableName"])

    for s in medium.subjects:
        assert sites[s["siteId"]]["siteName"] == s["siteName"]
        assert re.fullmatch(r"\d{2}-\d{3}", s["subjectKey"])
        assert s["subjectOid"] == f"OID-{s['subjectId']}"
    assert len({s["subjectKey"] for s in medium.subjects}) == len(medium.subjects)

    for v in medium.visits:
        assert subjects[v["subjectId"]]["subjectKey"] == v["subjectKey"]
        assert intervals[v["intervalId"]]["intervalName"] == v["intervalName"]
    pairs = {(v["subjectId"], v["intervalId"]) for v in medium.visits}
    assert len(pairs) == len(medium.visits) == len(medium.subjects) * len(medium.intervals)

    per_visit: dict[int, list[str]] = {}
    for r in medium.records:
        visit = visits[r["visitId"]]
        subj = subjects[r["subjectId"]]
        form = forms[r["formId"]]
        assert visit["subjectId"] == r["subjectId"]
        assert visit["intervalId"] == r["intervalId"]
        assert subj["subjectKey"] == r["subjectKey"] and subj["subjectOid"] == r["subjectOid"]
        assert subj["siteId"] == r["siteId"]
        assert form["formKey"] == r["formKey"]
        assert list(r["recordData"]) == var_names[r["formId"]]
        assert r["recordOid"] == f"REC-{r['recordId']}"
        assert r["recordType"] == "SUBJECT" and r["parentRecordId"] == 0
        assert r["recordStatus"] in ("Record Complete", "Record Incomplete")
        per_visit.setdefault(r["visitId"], []).append(r["formKey"])
    for vid, keys in per_visit.items():
        scheduled = [f["formKey"] for f in intervals[visits[vid]["intervalId"]]["forms"]]
        assert keys == scheduled
        assert len(keys) == MEDIUM.forms_per_interval
    first = medium.intervals[0]
    assert first["forms"][0]["formKey"] == "REG"
    reg = [r for r in medium.records if r["formKey"] == "REG"]
    assert {r["subjectId"] for r in reg} == set(subjects) and len(reg) == len(subjects)
    assert all(r["intervalId"] == first["intervalId"] for r in reg)


def test_revisions_are_each_records_history(medium: StudyData) -> None:
    """Every record has its audit trail: entry, then one revision per later change, the
    latest one snapshotting the record as it is now."""
    records = {r["recordId"]: r for r in medium.records}
    history: dict[int, list[dict]] = {}
    for rv in medium.record_revisions:
        history.setdefault(rv["recordId"], []).append(rv)
    assert set(history) == set(records)
    assert len(medium.record_revisions) / len(records) > 1.1  # records get edited
    assert max(len(h) for h in history.values()) >= 3
    logins = {u["login"] for u in medium.users}
    reasons = Counter()
    for record_id, revisions in history.items():
        rec = records[record_id]
        assert [rv["recordRevision"] for rv in revisions] == list(range(1, len(revisions) + 1))
        first, last = revisions[0], revisions[-1]
        assert first["dataRevision"] == 1 and first["reasonForChange"] == ""
        assert first["dateCreated"] == rec["dateCreated"]
        assert last["dateCreated"] == rec["dateModified"] and last["deleted"] == rec["deleted"]
        assert not any(rv["deleted"] for rv in revisions[:-1])
        for before, after in itertools.pairwise(revisions):
            step = after["dataRevision"] - before["dataRevision"]
            assert step == (after["reasonForChange"] in EDIT_REASONS)
            assert before["dateCreated"] < after["dateCreated"]
        for rv in revisions:
            for key in ("recordOid", "recordStatus", "subjectId", "subjectKey", "siteId"):
                assert rv[key] == rec[key]
            if rv["reasonForChange"] == MIGRATION[2]:
                assert (rv["user"], rv["role"]) == MIGRATION[:2]
            else:
                assert rv["user"] in logins and rv["role"]
            reasons[rv["reasonForChange"]] += 1
    assert set(reasons) == {"", DELETE_REASON, MIGRATION[2], *EDIT_REASONS}
    created = [rv["dateCreated"] for rv in medium.record_revisions]
    assert created == sorted(created)  # revision ids follow time


def test_default_study_volumes(demo: StudyData) -> None:
    """What the sync's benchmarks rely on: more revisions than records, codings and users
    beyond one page of the SDK's size (100)."""
    assert len(demo.record_revisions) > 1.2 * len(demo.records)
    assert len(demo.codings) > 100 and len(demo.users) > 100


def test_codings_reference_coded_records(medium: StudyData) -> None:
    records = {r["recordId"]: r for r in medium.records}
    assert medium.codings
    coded = Counter((c["recordId"], c["variable"]) for c in medium.codings)
    assert set(coded.values()) == {1}  # one coding per coded value, re-codes included
    assert {c["revision"] for c in medium.codings} == {1, 2}
    values = [
        r["recordData"][CODED_FORMS[r["formKey"]][0]]
        for r in medium.records
        if r["formKey"] in CODED_FORMS
    ]
    assert len(coded) == sum(1 for value in values if value)
    assert {c["dictionaryName"] for c in medium.codings} == {"MedDRA", "WHODrug"}
    for c in medium.codings:
        rec = records[c["recordId"]]
        assert rec["formKey"] == c["formKey"] in ("AE", "CM")
        assert rec["recordData"][c["variable"]] == c["value"] != ""
        assert c["subjectId"] == rec["subjectId"] and c["siteId"] == rec["siteId"]
        assert c["code"] and c["codedBy"]


def test_variable_types_and_values(demo: StudyData, medium: StudyData) -> None:
    for data in (demo, medium):
        assert {v["variableType"] for v in data.variables} == set(VARIABLE_TYPES)
        assert all(v["variableName"] == v["variableName"].lower() for v in data.variables)
    per_form = Counter(v["formKey"] for v in medium.variables)
    assert all(4 <= n <= 10 for n in per_form.values())
    vtype = {(v["formKey"], v["variableName"]): v["variableType"] for v in medium.variables}
    seen: set[str] = set()
    values = 0
    blanks = 0
    for r in medium.records:
        for name, value in r["recordData"].items():
            assert isinstance(value, str)
            values += 1
            if value == "":
                blanks += 1
                continue
            t = vtype[(r["formKey"], name)]
            seen.add(t)
            if t == "INTEGER":
                assert re.fullmatch(r"-?\d+", value), value
            elif t == "NUMBER":
                assert re.fullmatch(r"-?\d+\.\d+", value), value
            elif t == "DATE":
                assert DATE_RE.match(value)
            elif t == "CHECKBOX":
                assert value in ("true", "false")
        if "" in r["recordData"].values():
            assert r["recordStatus"] == "Record Incomplete"
    assert seen == set(VARIABLE_TYPES)
    assert 0.02 < blanks / values < 0.08


def test_timestamps_and_dates(medium: StudyData) -> None:
    def check_ts(value: str) -> None:
        assert TS_RE.match(value), value
        assert TS_MIN <= value <= TS_MAX

    for name in SCHEMA:
        for row in _rows(medium, name):
            for key in TS_FIELDS & set(row):
                check_ts(row[key])
            if "dateModified" in row:
                assert row["dateCreated"] <= row["dateModified"], name
            for kw in row.get("keywords", []):
                check_ts(kw["dateAdded"])
    for v in medium.visits:
        for key in ("startDate", "endDate", "visitDate"):
            assert DATE_RE.match(v[key])
        assert v["dueDate"] is None or DATE_RE.match(v["dueDate"])
        assert v["startDate"] <= v["endDate"]
    for u in medium.users:
        for role in u["roles"]:
            check_ts(role["dateCreated"])
            check_ts(role["dateModified"])
    for q in medium.queries:
        for c in q["queryComments"]:
            check_ts(c["date"])
    # Watermark tests need many rows changed in the same second, beyond one page.
    same_second = Counter(r["dateModified"] for r in medium.records)
    assert same_second.most_common(1)[0][1] > 100
    assert sum(1 for n in same_second.values() if n >= MEDIUM.forms_per_interval) > 50
    created = [r["dateCreated"] for r in medium.records]
    assert created == sorted(created)  # record ids follow creation time


def test_query_mix(medium: StudyData, big: StudyData) -> None:
    records = {r["recordId"]: r for r in medium.records}
    var_names = {(v["formKey"], v["variableName"]) for v in medium.variables}
    states = Counter()
    for q in medium.queries:
        comments = q["queryComments"]
        assert [c["sequence"] for c in comments] == list(range(1, len(comments) + 1))
        if not comments:
            states["none"] += 1
            assert q["dateModified"] == q["dateCreated"]
        else:
            dates = [c["date"] for c in comments]
            assert dates == sorted(dates)
            assert q["dateModified"] == dates[-1] and q["dateCreated"] == dates[0]
            states["closed" if comments[-1]["closed"] else "open"] += 1
            if not comments[-1]["closed"] and any(c["closed"] for c in comments):
                states["reopened"] += 1
        if q["annotationType"] == "question":
            rec = records[q["recordId"]]
            assert (rec["formKey"], q["variable"]) in var_names
            assert rec["subjectId"] == q["subjectId"]
        elif q["annotationType"] == "record":
            assert q["recordId"] in records and q["variable"] == ""
        else:
            assert q["annotationType"] == "subject"
    assert states["open"] and states["closed"] and states["none"]
    types = Counter(q["annotationType"] for q in big.queries)
    assert set(types) == {"question", "record", "subject"}
    assert types["question"] > types["record"] > 0
    big_states = Counter(
        "none" if not q["queryComments"] else q["queryComments"][-1]["closed"] for q in big.queries
    )
    with_comments = big_states[True] + big_states[False]
    assert 0.3 < big_states[True] / with_comments < 0.5
    assert 0 < big_states["none"] < 0.1 * len(big.queries)


def test_users(medium: StudyData) -> None:
    """Users who left the study (about one in seven) are among them; every role is held."""
    assert len(medium.users) == MEDIUM.users
    left = [u["userActiveInStudy"] for u in medium.users].count(False)
    assert 0.05 * MEDIUM.users < left < 0.3 * MEDIUM.users
    assert {u["roles"][0]["name"] for u in medium.users} == {r[0] for r in ROLES}
    few = generate_study(StudySpec(subjects=2, users=2)).users
    assert [u["userActiveInStudy"] for u in few].count(False) >= 1
    for u in medium.users:
        assert re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", u["userId"]
        )


def test_sites_and_statuses(big: StudyData) -> None:
    assert any(" " in s["siteName"] for s in generate_study(StudySpec(sites=5)).sites)
    assert len({s["siteName"] for s in big.sites}) == len(big.sites)
    statuses = {s["subjectStatus"] for s in big.subjects}
    assert statuses == {"Enrolled", "Screened", "Completed", "Withdrawn"}
    assert {s["siteEnrollmentStatus"] for s in big.sites} <= {
        "Enrollment Open",
        "Enrollment Closed",
    }
    deleted = sum(r["deleted"] for r in generate_study(MEDIUM).records)
    assert 0 < deleted < 0.05 * MEDIUM.record_count


def test_for_records() -> None:
    for n, kw in ((1, {}), (1000, {}), (12_345, {"intervals": 8, "forms_per_interval": 5})):
        spec = StudySpec.for_records(n, **kw)
        per_subject = spec.intervals * spec.forms_per_interval
        assert n <= spec.record_count < n + per_subject
    spec = StudySpec.for_records(300, intervals=2, forms_per_interval=2, study_key="X")
    data = generate_study(spec)
    assert len(data.records) == spec.record_count >= 300
    assert spec.study_key == "X"


def test_big_study_has_over_500_rows(big: StudyData) -> None:
    for name in ("subjects", "visits", "records", "queries"):
        assert len(getattr(big, name)) > 500, name


def test_extra_forms_when_schedule_exceeds_catalogue() -> None:
    spec = StudySpec(subjects=3, intervals=3, forms_per_interval=14)
    data = generate_study(spec)
    keys = [f["formKey"] for f in data.forms]
    assert len(keys) == 15 and "FORM13" in keys and "FORM15" in keys
    for interval in data.intervals:
        sched = [f["formKey"] for f in interval["forms"]]
        assert len(sched) == len(set(sched)) == 14
    assert len(data.records) == spec.record_count


def test_long_schedule_stays_in_range() -> None:
    data = generate_study(StudySpec(subjects=20, intervals=30, forms_per_interval=2))
    assert max(r["dateModified"] for r in data.records) <= TS_MAX
    assert min(v["visitDate"] for v in data.visits) >= "2024-01-01"


MODELS = {
    "study": Study,
    "sites": Site,
    "forms": Form,
    "intervals": Interval,
    "variables": Variable,
    "subjects": Subject,
    "visits": Visit,
    "records": Record,
    "record_revisions": RecordRevision,
    "queries": Query,
    "codings": Coding,
    "users": User,
}


def test_parses_through_sdk_models(medium: StudyData) -> None:
    sentinel = datetime(1969, 4, 20, 16, 20)
    for name, model in MODELS.items():
        for row in _rows(medium, name):
            obj = model.from_json(row)
            created = getattr(obj, "date_created", None)
            assert created is None or (created.tzinfo is None and created != sentinel)
    user = User.from_json(medium.users[0])
    assert user.roles and user.roles[0].date_created.year in (2024, 2025)
    query = next(q for q in medium.queries if len(q["queryComments"]) > 1)
    assert len(Query.from_json(query).query_comments) == len(query["queryComments"])
    record = Record.from_json(medium.records[0])
    assert record.record_data == medium.records[0]["recordData"]
    visit = Visit.from_json(medium.visits[0])
    assert visit.visit_date is not None and visit.due_date is None


def test_invalid_spec_rejected() -> None:
    with pytest.raises(ValueError):
        generate_study(StudySpec(sites=0))
    with pytest.raises(ValueError):
        generate_study(StudySpec(closed_query_rate=1.5))
