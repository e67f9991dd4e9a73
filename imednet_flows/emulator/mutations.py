"""Changes made behind the API's back, the way site staff and monitors change a study.

Tests and benchmarks use these through the Python handle or the admin route
to create exactly the situations a sync must survive: edits, soft and hard
deletes, new subjects and visits, query traffic, and many rows that share
one dateModified second.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from imednet_flows.emulator.jobs import append_revision, new_subject, new_visit
from imednet_flows.emulator.record_values import read_back_data
from imednet_flows.emulator.store import StudyStore

Mutation = Callable[..., dict[str, Any]]
MUTATIONS: dict[str, Mutation] = {}

_DELETABLE = {
    "records": "records",
    "subjects": "subjects",
    "visits": "visits",
    "queries": "queries",
}


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
) -> dict[str, Any]:
    """Change one value in each chosen record, or set `values` (variableName: value, stored
    as the API reads them back); all of them get the same dateModified (`at`, default now),
    which is how a watermark bug on shared seconds is provoked."""
    if values is not None and not isinstance(values, dict):
        raise ValueError(
            f"values must be an object of variableName: value, not {type(values).__name__}"
        )
    stamp = at or now
    types = _variable_types(store)
    chosen = _pick(store, "records", ids, n, seed)
    records = [store.tables["records"][record_id] for record_id in chosen]
    if values is not None:
        # Every record is checked before any changes: a mutation applies whole or not at all.
        stored = [_stored_values(store, types, record, values) for record in records]
    for index, record in enumerate(records):
        data = record["recordData"]
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
        append_revision(store, record, stamp, data_changed=data_changed)
    store.changed("records", "record_revisions")
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
) -> dict[str, Any]:
    """Flag rows deleted and bump dateModified, as the EDC does; the rows stay listed."""
    table = _deletable(entity)
    if table == "queries":
        raise ValueError("queries have no deleted flag; use hard_delete")
    chosen = _pick(store, table, ids, n, seed)
    for row_id in chosen:
        row = store.tables[table][row_id]
        row["deleted"] = True
        row["dateModified"] = now
        if table == "records":
            append_revision(store, row, now, data_changed=False)
    store.changed(table, "record_revisions")
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
    """Remove rows outright: nothing in any list says they existed."""
    table = _deletable(entity)
    chosen = _pick(store, table, ids, n, seed, live_only=False)
    for row_id in chosen:
        del store.tables[table][row_id]
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
