"""Changes made behind the API's back, the way site staff and monitors change a study.

Tests and benchmarks use these through the Python handle or the admin route
to create exactly the situations a sync must survive: edits, soft and hard
deletes, new subjects and visits, query traffic, re-coding, users who join and
leave, amended sites, forms, intervals and variables, and many rows that share
one dateModified second.

Every change of a record goes through `audit.record_changed` (one revision, the
coding kept in step); mutations that change records take optional `user`, `role`
and `reason` for their revisions. Each mutation returns the ids it touched and
`at`, the dateModified it set. A mutation checks its arguments before it changes
anything.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from imednet_flows.emulator.audit import author_of, coded_value, coder, record_changed
from imednet_flows.emulator.checks import is_int
from imednet_flows.emulator.jobs import new_subject, new_visit
from imednet_flows.emulator.record_values import read_back_data
from imednet_flows.emulator.seed import (
    CODED_FORMS,
    FIRST_NAMES,
    LAST_NAMES,
    ROLES,
    VARIABLE_TYPES,
    nth_site_name,
    role_row,
    unique_login,
    user_row,
)
from imednet_flows.emulator.store import StudyStore

Mutation = Callable[..., dict[str, Any]]
MUTATIONS: dict[str, Mutation] = {}

_DELETABLE = {
    "records": "records",
    "subjects": "subjects",
    "visits": "visits",
    "queries": "queries",
    "codings": "codings",
}
#: Tables without a deleted flag: they can only be hard-deleted.
_NO_DELETED_FLAG = ("queries", "codings")


def mutation(fn: Mutation) -> Mutation:
    MUTATIONS[fn.__name__] = fn
    return fn


def _pick(
    store: StudyStore, table: str, ids: list[Any] | None, n: int, seed: int, live_only: bool = True
) -> list[Any]:
    """The rows a mutation touches: the ids given, else n chosen reproducibly by seed."""
    rows = store.tables[table]
    if ids is not None:
        missing = [i for i in ids if i not in rows]
        if missing:
            raise ValueError(f"no {table} with id(s) {missing[:10]} in study {store.key}")
        return list(ids)
    pool = [i for i, r in rows.items() if not (live_only and r.get("deleted"))]
    if n > len(pool):
        raise ValueError(f"asked for {n} {table} but study {store.key} has {len(pool)} live ones")
    return sorted(random.Random(seed).sample(pool, n))


def _variable_types(store: StudyStore) -> dict[tuple[int, str], str]:
    return {
        (v["formId"], v["variableName"]): v["variableType"]
        for v in store.tables["variables"].values()
    }


def changed_value(kind: str, value: Any) -> Any:
    """A different value of the same type, so typed columns stay parseable."""
    text = "" if value is None else str(value)
    kind = kind.upper()
    try:
        if kind == "INTEGER":
            return str(int(text or 0) + 1)
        if kind == "NUMBER":
            return str(round(float(text or 0) + 0.5, 2))
        if kind == "DATE":
            base = date.fromisoformat(text) if text else date(2024, 1, 1)
            return (base + timedelta(days=1)).isoformat()
        if kind == "CHECKBOX":
            return "false" if text.lower() == "true" else "true"
    except ValueError:
        pass
    return f"{text} (edited)".strip()


@mutation
def edit_records(
    store: StudyStore,
    now: str,
    n: int = 1,
    ids: list[int] | None = None,
    seed: int = 0,
    at: str | None = None,
    values: dict[str, Any] | None = None,
    user: str | None = None,
    role: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Change one value in each chosen record, or set `values` (variableName: value, stored
    as the API reads them back); all of them get the same dateModified (`at`, default now),
    which is how a watermark bug on shared seconds is provoked. Each record gets one
    revision (dated now: `at` never back-dates the audit trail) by `user`/`role` (default: a
    site user) for `reason` (default "Data correction"); a changed coded value re-codes."""
    if values is not None and not isinstance(values, dict):
        raise ValueError(
            f"values must be an object of variableName: value, not {type(values).__name__}"
        )
    author = author_of(store, user, role, reason, "Data correction")
    stamp = at or now
    types = _variable_types(store)
    chosen = _pick(store, "records", ids, n, seed)
    records = [store.tables["records"][record_id] for record_id in chosen]
    if values is not None:
        # Every record is checked before any changes: a mutation applies whole or not at all.
        stored = [_stored_values(store, types, record, values) for record in records]
    for index, record in enumerate(records):
        data = record["recordData"]
        coded_before = coded_value(record)
        if values is not None:
            data_changed = any(data.get(k) != v for k, v in stored[index].items())
            data.update(stored[index])
        else:
            name = next(
                (k for k in data if types.get((record["formId"], k)) != "RADIO"),
                next(iter(data), None),
            )
            if name is not None:
                data[name] = changed_value(types.get((record["formId"], name), "TEXT"), data[name])
            data_changed = name is not None
        record["dateModified"] = stamp
        record_changed(store, record, now, data_changed, author, coded_before)
    store.changed("records")
    return {"ids": chosen, "at": stamp}


def _stored_values(
    store: StudyStore,
    types: dict[tuple[int, str], str],
    record: dict[str, Any],
    values: dict[str, Any],
) -> dict[str, str]:
    form_types = {
        name: kind for (form_id, name), kind in types.items() if form_id == record["formId"]
    }
    unknown = sorted(set(values) - set(form_types))
    if unknown:
        raise ValueError(
            f"record {record['recordId']} (form {record['formKey']}) of study {store.key} "
            f"has no variable(s) {unknown}"
        )
    return read_back_data(values, form_types)


@mutation
def soft_delete(
    store: StudyStore,
    now: str,
    entity: str = "records",
    n: int = 1,
    ids: list[int] | None = None,
    seed: int = 0,
    user: str | None = None,
    role: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Flag rows deleted and bump dateModified, as the EDC does; the rows stay listed. A
    record's deletion is a revision (`deleted` true) by `user`/`role` for `reason`."""
    table = _deletable(entity)
    if table in _NO_DELETED_FLAG:
        raise ValueError(f"{table} have no deleted flag; use hard_delete")
    author = author_of(store, user, role, reason, "Entered in error")
    chosen = _pick(store, table, ids, n, seed)
    for row_id in chosen:
        row = store.tables[table][row_id]
        row["deleted"] = True
        row["dateModified"] = now
        if table == "records":
            record_changed(store, row, now, False, author, coded_value(row))
    store.changed(table)
    return {"ids": chosen, "at": now}


@mutation
def hard_delete(
    store: StudyStore,
    now: str,
    entity: str = "records",
    n: int = 1,
    ids: list[int] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Remove rows outright: no list of their own says they existed. The revisions of a
    hard-deleted record stay, as an audit trail outlives what it audits."""
    table = _deletable(entity)
    chosen = _pick(store, table, ids, n, seed, live_only=False)
    for row_id in chosen:
        del store.tables[table][row_id]
    if table == "codings":
        store.coding_index = None  # rebuilt on next use
    store.changed(table)
    return {"ids": chosen, "at": now}


def _deletable(entity: str) -> str:
    try:
        return _DELETABLE[entity]
    except KeyError:
        raise ValueError(f"entity must be one of {sorted(_DELETABLE)}, got {entity!r}") from None


@mutation
def add_subjects(
    store: StudyStore, now: str, n: int = 1, site_id: int | None = None
) -> dict[str, Any]:
    sites = list(store.tables["sites"].values())
    if site_id is not None:
        sites = [s for s in sites if s["siteId"] == site_id]
        if not sites:
            raise ValueError(f"no site {site_id} in study {store.key}")
    created = [new_subject(store, sites[i % len(sites)], now)["subjectId"] for i in range(n)]
    store.changed("subjects")
    return {"ids": created, "at": now}


@mutation
def add_visits(store: StudyStore, now: str, n: int = 1, seed: int = 0) -> dict[str, Any]:
    """Unscheduled-style extra visits for existing subjects, in the first interval."""
    interval = next(iter(store.tables["intervals"].values()))
    subjects = _pick(store, "subjects", None, min(n, len(store.tables["subjects"])), seed)
    created = [
        new_visit(store, store.tables["subjects"][subjects[i % len(subjects)]], interval, now)[
            "visitId"
        ]
        for i in range(n)
    ]
    store.changed("visits")
    return {"ids": created, "at": now}


@mutation
def add_queries(
    store: StudyStore, now: str, n: int = 1, seed: int = 0, closed: bool = False
) -> dict[str, Any]:
    """Open (or already closed) question-level queries on chosen records."""
    created = []
    for record_id in _pick(store, "records", None, n, seed):
        record = store.tables["records"][record_id]
        query_id = store.new_id("queries")
        variable = next(iter(record["recordData"]), "")
        store.tables["queries"][query_id] = {
            "studyKey": store.key,
            "subjectId": record["subjectId"],
            "subjectOid": record["subjectOid"],
            "annotationType": "question",
            "annotationId": query_id,
            "type": None,
            "description": f"Please verify {variable}",
            "recordId": record_id,
            "variable": variable,
            "subjectKey": record["subjectKey"],
            "dateCreated": now,
            "dateModified": now,
            "queryComments": [_comment(1, "Please verify the value.", closed, now)],
        }
        created.append(query_id)
    store.changed("queries")
    return {"ids": created, "at": now}


@mutation
def add_query_comment(
    store: StudyStore,
    now: str,
    annotation_id: int,
    closed: bool = False,
    comment: str = "Response added.",
) -> dict[str, Any]:
    """Answer or close a query: the latest comment decides whether it is open."""
    query = store.tables["queries"].get(annotation_id)
    if query is None:
        raise ValueError(f"no query {annotation_id} in study {store.key}")
    comments = query["queryComments"]
    sequence = max((c["sequence"] for c in comments), default=0) + 1
    comments.append(_comment(sequence, comment, closed, now))
    query["dateModified"] = now
    store.changed("queries")
    return {"ids": [annotation_id], "at": now}


def _comment(sequence: int, text: str, closed: bool, now: str) -> dict[str, Any]:
    return {
        "sequence": sequence,
        "annotationStatus": "Query Closed" if closed else "Monitor Query Open",
        "user": "monitor",
        "comment": text,
        "closed": closed,
        "date": now,
    }


# --------------------------------------------------------------------------- codings


@mutation
def recode(
    store: StudyStore,
    now: str,
    n: int = 1,
    ids: list[int] | None = None,
    seed: int = 0,
    code: str | None = None,
    coded_by: str | None = None,
    reason: str = "Recoded after medical review",
    dictionary_version: str | None = None,
) -> dict[str, Any]:
    """Re-code codings (codingId, as `ids`, or n chosen by seed): a new code (`code`, default
    the dictionary's next other term), `dateCoded` now, `revision` + 1, the same codingId."""
    _strings(code=code, coded_by=coded_by, reason=reason, dictionary_version=dictionary_version)
    chosen = _pick(store, "codings", ids, n, seed)
    for coding_id in chosen:
        coding = store.tables["codings"][coding_id]
        coding.update(
            code=code if code is not None else _other_code(coding),
            codedBy=coded_by if coded_by is not None else coder(store),
            reason=reason,
            revision=coding["revision"] + 1,
            dateCoded=now,
        )
        if dictionary_version is not None:
            coding["dictionaryVersion"] = dictionary_version
    store.changed("codings")
    return {"ids": chosen, "at": now}


def _other_code(coding: dict[str, Any]) -> str:
    """The dictionary term after the coding's own (in sorted order): always a change."""
    coded = CODED_FORMS.get(coding["formKey"])
    terms = sorted(set(coded[3].values())) if coded else []
    if coding["code"] in terms:
        return terms[(terms.index(coding["code"]) + 1) % len(terms)]
    return terms[0] if terms else f"{coding['code']} (recoded)"


# --------------------------------------------------------------------------- users


@mutation
def add_users(
    store: StudyStore,
    now: str,
    n: int = 1,
    role: str = "Study Coordinator",
    active: bool = True,
    logins: list[str] | None = None,
) -> dict[str, Any]:
    """New study users holding `role` (one of the seed's roles), active unless `active` is
    false; `logins` names them (one each), else they are named like the seed's users."""
    roles = {r[0]: r for r in ROLES}
    if role not in roles:
        raise ValueError(f"role must be one of {sorted(roles)}, got {role!r}")
    if not isinstance(active, bool):
        raise ValueError(f"active must be true or false, got {active!r}")
    users = store.tables["users"]
    taken = {u["login"] for u in users.values()}
    if logins is not None:
        n = _count_new(logins, taken, "logins", f"study {store.key}")
    held = next((u["roles"][0] for u in users.values() if u["roles"][0]["name"] == role), None)
    if held is None:  # the study has nobody with that role yet: the role is new too
        name, description, level, rtype = roles[role]
        role_id = str(uuid.UUID(int=random.Random(f"{store.key}:role:{role}").getrandbits(128)))
        held = role_row(name, description, level, rtype, role_id, now, now, store.spec.study_id)
    created = []
    for j in range(n):
        k = len(users)
        first, last = FIRST_NAMES[k % len(FIRST_NAMES)], LAST_NAMES[(k * 7 + 3) % len(LAST_NAMES)]
        login = logins[j] if logins is not None else unique_login(first, last, taken)
        bits = random.Random(f"{store.key}:user:{k}:{login}").getrandbits(128)
        user = user_row(str(uuid.UUID(int=bits, version=4)), login, first, last, active, held)
        users[user["userId"]] = user
        created.append(user)
    store.changed("users")
    return {
        "ids": [u["userId"] for u in created],
        "logins": [u["login"] for u in created],
        "at": now,
    }


@mutation
def deactivate_users(
    store: StudyStore,
    now: str,
    n: int = 1,
    ids: list[str] | None = None,
    logins: list[str] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Users leave the study (`userActiveInStudy` false): listed only with includeInactive.
    Name them by userId (`ids`) or `logins`, else n active ones are chosen by seed."""
    users = store.tables["users"]
    if logins is not None:
        by_login = {u["login"]: user_id for user_id, u in users.items()}
        missing = [x for x in logins if x not in by_login]
        if missing:
            raise ValueError(f"no user(s) with login {missing[:10]} in study {store.key}")
        ids = [by_login[x] for x in logins]
    if ids is None:
        active = [user_id for user_id, u in users.items() if u["userActiveInStudy"]]
        if n > len(active):
            raise ValueError(f"asked for {n} users but study {store.key} has {len(active)} active")
        ids = sorted(random.Random(seed).sample(active, n))
    chosen = _pick(store, "users", ids, n, seed)
    for user_id in chosen:
        users[user_id]["userActiveInStudy"] = False
    store.changed("users")
    return {"ids": chosen, "logins": [users[i]["login"] for i in chosen], "at": now}


# --------------------------------------------------------------------------- reference data


@mutation
def add_sites(
    store: StudyStore,
    now: str,
    n: int = 1,
    names: list[str] | None = None,
    status: str = "Enrollment Open",
) -> dict[str, Any]:
    """New sites (named `names`, else after the next cities), created and modified now."""
    _strings(status=status)
    sites = store.tables["sites"]
    taken = {s["siteName"] for s in sites.values()}
    if names is not None:
        n = _count_new(names, taken, "names", f"the sites of study {store.key}")
    created = []
    k = len(sites)
    for j in range(n):
        if names is not None:
            name = names[j]
        else:
            while nth_site_name(k) in taken:
                k += 1
            name = nth_site_name(k)
            taken.add(name)
        site_id = store.new_id("sites")
        sites[site_id] = {
            "studyKey": store.key,
            "siteId": site_id,
            "siteName": name,
            "siteEnrollmentStatus": status,
            "dateCreated": now,
            "dateModified": now,
        }
        created.append(site_id)
    store.changed("sites")
    return {"ids": created, "at": now}


@mutation
def edit_sites(
    store: StudyStore,
    now: str,
    n: int = 1,
    ids: list[int] | None = None,
    seed: int = 0,
    name: str | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """Rename a site or set its enrollment status; without either, open enrollment closes
    and closed enrollment opens. See `_rename` for the rows that carry the name."""
    _strings(name=name, status=status)
    chosen = _pick(store, "sites", ids, n, seed, live_only=False)
    _one_for(name, "name", chosen)

    def change(site: dict[str, Any]) -> None:
        if name is None and status is None:
            closed = site["siteEnrollmentStatus"] == "Enrollment Closed"
            site["siteEnrollmentStatus"] = "Enrollment Open" if closed else "Enrollment Closed"
        if status is not None:
            site["siteEnrollmentStatus"] = status
        if name is not None:
            site["siteName"] = name
            _rename(store, ("subjects", "codings"), "siteId", site["siteId"], "siteName", name)

    return _amend(store, "sites", chosen, now, change)


@mutation
def edit_intervals(
    store: StudyStore,
    now: str,
    n: int = 1,
    ids: list[int] | None = None,
    seed: int = 0,
    name: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """Amend intervals: rename, describe, or (with neither) widen the visit window by a day
    each side, the commonest protocol amendment."""
    _strings(name=name, description=description)
    chosen = _pick(store, "intervals", ids, n, seed, live_only=False)
    _one_for(name, "name", chosen)

    def change(interval: dict[str, Any]) -> None:
        if name is None and description is None:
            interval["negativeSlack"] += 1
            interval["positiveSlack"] += 1
        if description is not None:
            interval["intervalDescription"] = description
        if name is not None:
            interval["intervalName"] = name
            _rename(store, ("visits",), "intervalId", interval["intervalId"], "intervalName", name)

    return _amend(store, "intervals", chosen, now, change)


@mutation
def edit_forms(
    store: StudyStore,
    now: str,
    n: int = 1,
    ids: list[int] | None = None,
    seed: int = 0,
    name: str | None = None,
    disabled: bool | None = None,
) -> dict[str, Any]:
    """A new form revision (`revision` + 1), optionally renamed or (dis)abled."""
    _strings(name=name)
    if disabled is not None and not isinstance(disabled, bool):
        raise ValueError(f"disabled must be true or false, got {disabled!r}")
    chosen = _pick(store, "forms", ids, n, seed, live_only=False)
    _one_for(name, "name", chosen)

    def change(form: dict[str, Any]) -> None:
        form["revision"] += 1
        if disabled is not None:
            form["disabled"] = disabled
        if name is not None:
            form["formName"] = name
            _rename(store, ("variables", "codings"), "formId", form["formId"], "formName", name)
            for interval in store.tables["intervals"].values():
                for scheduled in interval["forms"]:
                    if scheduled["formId"] == form["formId"]:
                        scheduled["formName"] = name
                        store.changed("intervals")

    return _amend(store, "forms", chosen, now, change)


@mutation
def add_variables(
    store: StudyStore,
    now: str,
    form_key: str | None = None,
    form_id: int | None = None,
    n: int = 1,
    names: list[str] | None = None,
    variable_type: str = "TEXT",
    label: str | None = None,
) -> dict[str, Any]:
    """New variables at the end of a form (a new form revision): typed tables gain a column.
    Existing records do not get the key until a value is posted to it."""
    form = _form(store, form_key, form_id)
    if variable_type not in VARIABLE_TYPES:
        raise ValueError(
            f"variable_type must be one of {list(VARIABLE_TYPES)}, got {variable_type!r}"
        )
    _strings(label=label)
    own = [v for v in store.tables["variables"].values() if v["formId"] == form["formId"]]
    taken = {v["variableName"] for v in own}
    if names is not None:
        n = _count_new(names, taken, "names", f"the variables of form {form['formKey']}")
    sequence = max((v["sequence"] for v in own), default=0)
    created = []
    for j in range(n):
        sequence += 1
        if names is not None:
            name = names[j]
        else:
            k = sequence
            while (name := f"{form['formKey'].lower()}new{k}") in taken:
                k += 1
            taken.add(name)
        variable_id = store.new_id("variables")
        store.tables["variables"][variable_id] = {
            "studyKey": store.key,
            "variableId": variable_id,
            "variableType": variable_type,
            "variableName": name,
            "sequence": sequence,
            "revision": 1,
            "disabled": False,
            "dateCreated": now,
            "dateModified": now,
            "formId": form["formId"],
            "variableOid": f"VAR-{variable_id}",
            "deleted": False,
            "formKey": form["formKey"],
            "formName": form["formName"],
            "label": label if label is not None else f"Added question {sequence}",
            "blinded": False,
        }
        created.append(variable_id)
    form["revision"] += 1
    form["dateModified"] = now
    store.changed("variables", "forms")
    return {"ids": created, "at": now}


@mutation
def edit_variables(
    store: StudyStore,
    now: str,
    n: int = 1,
    ids: list[int] | None = None,
    seed: int = 0,
    label: str | None = None,
    disabled: bool | None = None,
    blinded: bool | None = None,
) -> dict[str, Any]:
    """A new variable revision (`revision` + 1) with a new `label` (default: the old one
    marked revised) or `disabled`/`blinded` set."""
    _strings(label=label)
    for flag, value in (("disabled", disabled), ("blinded", blinded)):
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{flag} must be true or false, got {value!r}")
    chosen = _pick(store, "variables", ids, n, seed)

    def change(variable: dict[str, Any]) -> None:
        variable["revision"] += 1
        if label is not None:
            variable["label"] = label
        elif disabled is None and blinded is None:
            variable["label"] = f"{variable['label']} (revised)"
        if disabled is not None:
            variable["disabled"] = disabled
        if blinded is not None:
            variable["blinded"] = blinded

    return _amend(store, "variables", chosen, now, change)


def _form(store: StudyStore, form_key: Any, form_id: Any) -> dict[str, Any]:
    if (form_key is None) == (form_id is None):
        raise ValueError("give the form as exactly one of form_key or form_id")
    for form in store.tables["forms"].values():
        if form["formKey"] == form_key or (is_int(form_id) and form["formId"] == form_id):
            return form
    raise ValueError(f"no form {form_key or form_id!r} in study {store.key}")


def _rename(
    store: StudyStore,
    tables: tuple[str, ...],
    id_field: str,
    row_id: int,
    name_field: str,
    name: str,
) -> None:
    """The emulator's choice where the API is silent: rows that carry a copy of a renamed
    name (a subject's siteName, a visit's intervalName, ...) show the new one, as a join at
    read time would, and keep their dateModified."""
    for table in tables:
        for row in store.tables[table].values():
            if row.get(id_field) == row_id:
                row[name_field] = name
        store.changed(table)


def _amend(
    store: StudyStore,
    table: str,
    chosen: list[Any],
    now: str,
    change: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Apply `change` to each chosen row of a reference table, which then counts as
    modified now: what a client reading by `dateModified>=` must see."""
    for row_id in chosen:
        row = store.tables[table][row_id]
        change(row)
        row["dateModified"] = now
    store.changed(table)
    return {"ids": chosen, "at": now}


def _count_new(values: Any, taken: set[str], what: str, where: str) -> int:
    """How many rows a list of new names asks for, once they are checked to be new."""
    if not isinstance(values, list) or not all(isinstance(x, str) and x for x in values):
        raise ValueError(f"{what} must be a list of non-empty strings")
    clash = sorted(set(values) & taken) or sorted({x for x in values if values.count(x) > 1})
    if clash:
        raise ValueError(f"{what} {clash[:10]} already taken in {where}")
    return len(values)


def _one_for(value: Any, what: str, chosen: list[Any]) -> None:
    if value is not None and len(chosen) != 1:
        raise ValueError(f"a {what} is for one row; pick it with ids=[...] or n=1")


def _strings(**values: Any) -> None:
    for name, value in values.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
