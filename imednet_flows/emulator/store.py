"""In-memory study data behind the emulator, and the cached list queries over it.

Each table is a dict keyed by id. New ids are always larger than existing ones,
so insertion order *is* ascending id order: the default sort costs nothing and a
hard delete keeps the order. Every mutation bumps the table's version, which
invalidates cached query results, so paging through a filtered 200,000-row
table scans it once rather than once per page.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from imednet_flows.emulator.entities import ENTITIES, Entity
from imednet_flows.emulator.filters import (
    FilterError,
    compile_filter,
    compile_record_data_filter,
    format_timestamp,
)
from imednet_flows.emulator.seed import StudyData, StudySpec, generate_study
from imednet_flows.filter_syntax import parse_dnf, render_term


class Clock:
    """Wall-clock timestamps in the API's one-second form that never go backwards.

    A watermark sync relies on dateModified never decreasing, even if the host
    clock steps back.
    """

    def __init__(self) -> None:
        self._last = ""
        self._lock = threading.Lock()

    def now(self) -> str:
        with self._lock:
            stamp = format_timestamp(datetime.now(UTC))
            self._last = max(self._last, stamp)
            return self._last


@dataclass
class StudyStore:
    """One study's rows plus the counters a real EDC keeps beside them."""

    key: str
    spec: StudySpec
    study: dict[str, Any]
    tables: dict[str, dict[Any, dict[str, Any]]]
    versions: dict[str, int] = field(default_factory=dict)
    next_ids: dict[str, int] = field(default_factory=dict)
    #: recordId -> (recordRevision, dataRevision) of its latest revision.
    revisions: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: dateCreated of the latest revision: no later revision may be dated before it.
    last_revision_at: str = ""
    #: (recordId, variable) -> codingId, built when a coded value first changes.
    coding_index: dict[tuple[int, str], int] | None = None

    @classmethod
    def from_data(cls, spec: StudySpec, data: StudyData) -> StudyStore:
        tables: dict[str, dict[Any, dict[str, Any]]] = {}
        for route in ENTITIES:
            entity = ENTITIES[route]
            if entity.table == "study":
                continue
            rows = getattr(data, entity.table)
            if entity.default_sort == entity.id_field:
                tables[entity.table] = {row[entity.id_field]: row for row in rows}
            else:
                # Keep id order in the table; the default sort is applied per query.
                ordered = sorted(rows, key=lambda r, f=entity.id_field: r[f])
                tables[entity.table] = {row[entity.id_field]: row for row in ordered}
        store = cls(key=spec.study_key, spec=spec, study=data.study, tables=tables)
        base = spec.study_id * 10_000_000
        for table, rows in tables.items():
            store.versions[table] = 0
            numeric = [k for k in rows if isinstance(k, int)]
            store.next_ids[table] = (max(numeric) + 1) if numeric else base + 1
        for rev in data.record_revisions:
            store.revisions[rev["recordId"]] = (rev["recordRevision"], rev["dataRevision"])
            store.last_revision_at = max(store.last_revision_at, rev["dateCreated"])
        return store

    def new_id(self, table: str) -> int:
        value = self.next_ids[table]
        self.next_ids[table] = value + 1
        return value

    def changed(self, *tables: str) -> None:
        for table in tables:
            self.versions[table] += 1


class QueryError(ValueError):
    """A list request the API answers with 400 (bad filter, sort or paging)."""

    def __init__(self, message: str, attribute: str, value: str) -> None:
        super().__init__(message)
        self.attribute = attribute
        self.value = value


def parse_sorts(entity: Entity, raw: Iterable[str]) -> list[tuple[str, bool]]:
    """Turn repeated `sort=prop,dir` params into (field, descending) pairs."""
    sorts: list[tuple[str, bool]] = []
    for item in raw:
        prop, _, direction = item.partition(",")
        prop = prop.strip()
        direction = (direction or "asc").strip().lower()
        if prop not in entity.fields:
            raise QueryError(
                f'unknown sort property "{prop}"; sortable: {", ".join(sorted(entity.fields))}',
                "sort",
                item,
            )
        if direction not in ("asc", "desc"):
            raise QueryError(f'sort direction must be asc or desc, got "{direction}"', "sort", item)
        sorts.append((prop, direction == "desc"))
    return sorts


def apply_sorts(rows: list[dict[str, Any]], sorts: list[tuple[str, bool]]) -> list[dict[str, Any]]:
    """Stable multi-key sort: the first `sort` param is the primary key.

    None sorts before any value ascending (and after it descending), so rows
    with a missing field never make the comparison raise.
    """
    for prop, descending in reversed(sorts):
        rows = sorted(
            rows,
            key=lambda r, p=prop: (r.get(p) is not None, r.get(p) if r.get(p) is not None else 0),
            reverse=descending,
        )
    return rows


class StudyExists(ValueError):
    """A study key already seeded: replacing it silently would lose its changes."""


class EmulatorState:
    """Everything the emulator knows, shared by the HTTP app and the Python handle."""

    def __init__(self, specs: Iterable[StudySpec] = ()) -> None:
        self.lock = threading.RLock()
        self.clock = Clock()
        self.studies: dict[str, StudyStore] = {}
        self._query_cache: OrderedDict[tuple[Any, ...], list[dict[str, Any]]] = OrderedDict()
        for spec in specs:
            self.add_study(spec)

    def add_study(
        self, spec: StudySpec, data: StudyData | None = None, replace: bool = False
    ) -> StudyStore:
        self._refuse_existing(spec.study_key, replace)  # before seconds of generation
        store = StudyStore.from_data(spec, data or generate_study(spec))
        with self.lock:
            self._refuse_existing(spec.study_key, replace)  # added meanwhile
            self.studies[spec.study_key] = store
            self._query_cache.clear()
        return store

    def _refuse_existing(self, key: str, replace: bool) -> None:
        if not replace and key in self.studies:
            raise StudyExists(
                f'study "{key}" already exists; pass replace=true to reseed it '
                "(its changes are lost)"
            )

    def remove_study(self, key: str) -> None:
        """Take a study away: it leaves /studies and its routes answer as for an unknown
        study, as when a key loses access or a study is archived."""
        with self.lock:
            self.study(key)  # a clear error for an unknown key
            del self.studies[key]
            self._query_cache.clear()

    def study(self, key: str) -> StudyStore:
        try:
            return self.studies[key]
        except KeyError:
            raise KeyError(
                f'unknown study "{key}"; known: {", ".join(self.studies) or "none"}'
            ) from None

    def list_rows(
        self,
        route: str,
        study_key: str | None,
        filter_text: str = "",
        record_data_filter: str = "",
        sorts: list[tuple[str, bool]] | None = None,
        include_inactive: bool = True,
    ) -> list[dict[str, Any]]:
        """Rows of one endpoint, filtered and sorted, cached until the table changes."""
        entity = ENTITIES[route]
        sorts = sorts or []
        with self.lock:
            if route == "studies":
                version: Any = tuple(sorted(self.studies))
                source: Callable[[], list[dict[str, Any]]] = lambda: [  # noqa: E731
                    s.study for s in self.studies.values()
                ]
            else:
                store = self.study(study_key or "")
                version = (id(store), store.versions[entity.table])
                source = lambda: list(store.tables[entity.table].values())  # noqa: E731
            key = (
                route,
                study_key,
                filter_text,
                record_data_filter,
                tuple(sorts),
                include_inactive,
                version,
            )
            cached = self._query_cache.get(key)
            if cached is not None:
                self._query_cache.move_to_end(key)
                return cached
            rows = source()
        rows = _select(entity, rows, study_key, filter_text, record_data_filter)
        if route == "users" and not include_inactive:
            rows = [r for r in rows if r.get("userActiveInStudy")]
        order = sorts or (
            [] if entity.default_sort == entity.id_field else [(entity.default_sort, False)]
        )
        if order:
            rows = apply_sorts(rows, order)
        with self.lock:
            self._query_cache[key] = rows
            while len(self._query_cache) > 32:
                self._query_cache.popitem(last=False)
        return rows


def _select(
    entity: Entity,
    rows: list[dict[str, Any]],
    study_key: str | None,
    filter_text: str,
    record_data_filter: str,
) -> list[dict[str, Any]]:
    # The SDK adds `studyKey==K` to every study-scoped list; within study K
    # that term is always true, so skip the scan for the most common request.
    if study_key is not None and filter_text in (
        f"studyKey=={study_key}",
        f'studyKey=="{study_key}"',
    ):
        filter_text = ""
    rows, filter_text = _narrow_by_id(entity, rows, filter_text, study_key)
    predicates: list[Callable[[Mapping[str, Any]], bool]] = []
    try:
        if filter_text:
            predicates.append(compile_filter(filter_text, entity.fields))
    except FilterError as exc:
        raise QueryError(str(exc), "filter", filter_text) from None
    if record_data_filter:
        try:
            data_pred = compile_record_data_filter(record_data_filter)
        except FilterError as exc:
            raise QueryError(str(exc), "recordDataFilter", record_data_filter) from None
        predicates.append(lambda row: data_pred(row.get("recordData") or {}))
    if not predicates:
        return rows
    if len(predicates) == 1:
        (only,) = predicates
        return [r for r in rows if only(r)]
    return [r for r in rows if all(p(r) for p in predicates)]


def _narrow_by_id(
    entity: Entity, rows: list[dict[str, Any]], filter_text: str, study_key: str | None
) -> tuple[list[dict[str, Any]], str]:
    """Answer an id range the way a database index would: bisect the id-ordered rows, then
    check the group's other terms on that slice only. Reconciling a 200,000-row table asks
    for many small id ranges; a full scan per request would dominate every benchmark."""
    if entity.id_field not in filter_text:
        return rows, filter_text
    try:
        groups = parse_dnf(filter_text, "filter")
    except FilterError:
        return rows, filter_text  # compile_filter reports it properly
    if len(groups) != 1:
        return rows, filter_text
    lo: int | None = None
    hi: int | None = None
    rest: list[str] = []
    for term in groups[0]:
        bound = int(term.value) if _INT.fullmatch(term.value) else None
        if term.attribute == entity.id_field and bound is not None and term.op in _RANGE_OPS:
            if term.op in (">=", ">"):
                start = bound + (term.op == ">")
                lo = start if lo is None else max(lo, start)
            else:
                end = bound - (term.op == "<")
                hi = end if hi is None else min(hi, end)
        elif not (term.attribute == "studyKey" and term.op == "==" and term.value == study_key):
            rest.append(render_term(term))
    if lo is None and hi is None:
        return rows, filter_text
    key = entity.id_field
    start = 0 if lo is None else bisect.bisect_left(rows, lo, key=lambda r: r[key])
    end = len(rows) if hi is None else bisect.bisect_right(rows, hi, key=lambda r: r[key])
    return rows[start:end], ";".join(rest)


_INT = re.compile(r"[+-]?[0-9]+")
_RANGE_OPS = (">=", ">", "<=", "<")
