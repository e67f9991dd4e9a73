"""Cache rows as typed Arrow tables, built from ``raw`` in bulk.

Every collection table stores the API's JSON of each row (``raw``); snapshots and reader
frames type it here. A batch of rows is parsed by Arrow's JSON reader in one call, with an
explicit schema for the collection's typed fields, so the per-row cost stays in C: a
200,000-record study is never turned into Python dicts to be typed.

The fast path only succeeds when its answer is the one the value-by-value rules give
(`values.field_column`, `frames.typed_column`): anything it cannot read with certainty (a
number where text is expected, typed JSON beside text in one column, a timestamp in
another form, garbage) sends that batch, or that column, down the slow path, which parses
each row with orjson and applies the same rules value by value. Either path yields the
same table; a snapshot never fails on what a server sent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.json as pj

from imednet_flows.cache.collections import Collection, Kind, snake
from imednet_flows.frames import RECORD_COLUMNS, records_table, typed_column, variable_columns
from imednet_flows.values import TIMESTAMP, field_column

RAW = "raw"

KIND_TYPES: dict[Kind, pa.DataType] = {
    "int": pa.int64(),
    "str": pa.string(),
    "bool": pa.bool_(),
    "float": pa.float64(),
    "ts": TIMESTAMP,
    "date": pa.date32(),
}
#: What the JSON reader is asked for: timestamps and dates come as text and are typed by
#: the rules of `values`, which know the API's forms.
_READ_TYPES: dict[Kind, pa.DataType] = {**KIND_TYPES, "ts": pa.string(), "date": pa.string()}
_MIN_BLOCK = 1 << 20
#: Parsed batches are short-lived and large: the system allocator hands them back at once,
#: where Arrow's default pool keeps them, which made a snapshot's peak memory grow by
#: more than its batches (benchmarks/sync_throughput.py, peak RSS growth).
JSON_POOL = pa.system_memory_pool()


class _SystemAllocator:
    """Arrow's default pool is the system allocator while any `system_allocator()` block
    runs, and what it was before once the last one ends.

    A snapshot allocates and frees batch after batch; Arrow's default pool (mimalloc) keeps
    what was freed, so a full snapshot of 200,000 records peaked at 140 MB over its start,
    against 100 MB on the system allocator (benchmarks/sync_throughput.py). Every buffer
    remembers the pool it came from, so other Arrow work in the process meanwhile is safe:
    it merely allocates from the system allocator too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._before: pa.MemoryPool | None = None

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._before = pa.default_memory_pool()
                pa.set_memory_pool(pa.system_memory_pool())
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._before is not None:
                    pa.set_memory_pool(self._before)
                    self._before = None


system_allocator = _SystemAllocator()


# ------------------------------------------------------------------------------ schemas


def collection_schema(spec: Collection, raw: bool = True) -> pa.Schema:
    """Typed fields in the collection's order, derived columns, then ``raw``."""
    fields = [pa.field(name, KIND_TYPES[kind]) for name, kind in spec.fields]
    fields += [pa.field(name, KIND_TYPES[kind]) for name, kind, _ in spec.derived]
    if raw:
        fields.append(pa.field(RAW, pa.string()))
    return pa.schema(fields)


def derived_sql_columns(spec: Collection) -> list[str | None]:
    """Per derived column, the SQLite column that already holds it (queries' ``is_open``),
    so it is read with the row instead of computed from parsed JSON; None where none does."""
    names = {c.name for c in spec.columns}
    return [snake(name) if snake(name) in names else None for name, _, _ in spec.derived]


def form_columns(variables: Sequence[Mapping[str, Any]], form_key: str) -> list[tuple[str, str]]:
    """(column name, variableType) of a form's typed table, as `frames.variable_columns`."""
    return variable_columns(variables, [form_key])


def form_schema(variables: Sequence[Mapping[str, Any]], form_key: str) -> pa.Schema:
    """Record metadata columns, then one typed column per variable of the form."""
    return records_table([], variables, [form_key]).schema


# ------------------------------------------------------------------------------ parsing


def _read_json(raws: Sequence[str], schema: pa.Schema) -> pa.Table | None:
    """The rows parsed by Arrow against `schema`, or None if Arrow cannot read them as
    asked (a type that differs, a row that is not one JSON object on one line)."""
    data = "\n".join(raws).encode()
    block = max(_MIN_BLOCK, 4 * max(map(len, raws)) + 16)
    try:
        table = pj.read_json(
            pa.BufferReader(data),
            read_options=pj.ReadOptions(block_size=block, use_threads=False),
            parse_options=pj.ParseOptions(
                explicit_schema=schema,
                unexpected_field_behavior="ignore",
                newlines_in_values=False,
            ),
            memory_pool=JSON_POOL,
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    return table if table.num_rows == len(raws) else None


def _loads(raw: str) -> dict[str, Any]:
    """A row's JSON for the slow path; what is not an object types as all-null (its
    ``raw`` column still holds it as it was)."""
    try:
        item = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return item if isinstance(item, dict) else {}


def _column(table: pa.Table, name: str) -> pa.Array:
    return table.column(name).combine_chunks()


# ------------------------------------------------------------------------------ collections


def collection_table(
    spec: Collection,
    raws: Sequence[str],
    derived: Mapping[str, Sequence[Any]] | None = None,
    raw: bool = True,
) -> pa.Table:
    """Rows' ``raw`` texts (one per row) as the collection's typed table.

    `derived` may hold a derived column's values already known (from SQLite); the others
    are computed from the parsed rows.
    """
    schema = collection_schema(spec, raw)
    if not raws:
        return schema.empty_table()
    read = pa.schema([pa.field(n, _READ_TYPES[k]) for n, k in spec.fields])
    parsed = _read_json(raws, read)
    items: list[dict[str, Any]] | None = None
    if parsed is None:
        items = [_loads(r) for r in raws]
    arrays: list[pa.Array] = []
    for name, kind in spec.fields:
        values: Sequence[Any] | pa.Array
        if parsed is not None:
            values = _column(parsed, name)
        else:
            assert items is not None
            values = [item.get(name) for item in items]
        arrays.append(field_column(values, KIND_TYPES[kind]))
    for name, kind, function in spec.derived:
        known = (derived or {}).get(name)
        if known is None:
            if items is None:
                items = [_loads(r) for r in raws]
            known = [function(item) for item in items]
        arrays.append(field_column(known, KIND_TYPES[kind]))
    if raw:
        arrays.append(pa.array(raws, pa.string()))
    return pa.Table.from_arrays(arrays, schema=schema)


# ------------------------------------------------------------------------------ form tables


def form_table(
    raws: Sequence[str], variables: Sequence[Mapping[str, Any]], form_key: str
) -> pa.Table:
    """Records' ``raw`` texts (all of `form_key`) as the form's typed table: metadata columns
    plus one typed column per variable, equal to `frames.records_table` of the parsed
    records. recordData values may be the API's text or typed JSON, mixed in one column."""
    columns = form_columns(variables, form_key)
    if not raws:
        return form_schema(variables, form_key).empty_table()
    meta = [pa.field(n, pa.string() if pa.types.is_timestamp(t) else t) for n, t in RECORD_COLUMNS]
    keys = [_variable_key(name) for name, _ in columns]
    read = pa.schema(meta)
    if keys:
        read = read.append(
            pa.field("recordData", pa.struct([pa.field(k, pa.string()) for k in keys]))
        )
    parsed = _read_json(raws, read)
    if parsed is None:
        records = [_record(_loads(r)) for r in raws]
        return records_table(records, variables, [form_key])
    arrays = [field_column(_column(parsed, n), t) for n, t in RECORD_COLUMNS]
    if keys:
        data = _column(parsed, "recordData").flatten()  # parent nulls propagate to children
        arrays += [typed_column(data[i], vtype) for i, (_, vtype) in enumerate(columns)]
    return pa.Table.from_arrays(arrays, schema=form_schema(variables, form_key))


def _variable_key(column: str) -> str:
    """A variable column's recordData key (`frames.variable_columns` prefixes names that
    collide with metadata columns with ``var_``)."""
    meta = {n for n, _ in RECORD_COLUMNS}
    return column[4:] if column.startswith("var_") and column[4:] in meta else column


def _record(item: dict[str, Any]) -> dict[str, Any]:
    """A parsed record whose recordData `records_table` can walk."""
    if not isinstance(item.get("recordData"), dict):
        item["recordData"] = {}
    return item


# ------------------------------------------------------------------------------ from SQLite


def select_columns(spec: Collection) -> list[str]:
    """What to select for `rows_table`: the id, ``raw``, then each derived column's SQLite
    column (NULL where none holds it, so it is computed from the row)."""
    derived = [c or "NULL" for c in derived_sql_columns(spec)]
    return [spec.id_column, RAW, *derived]


def rows_table(spec: Collection, rows: Sequence[Sequence[Any]], raw: bool = True) -> pa.Table:
    """Rows selected as `select_columns` says, as the collection's typed table."""
    raws = [row[1] for row in rows]
    derived: dict[str, Sequence[Any]] = {}
    for offset, ((name, _, _), column) in enumerate(
        zip(spec.derived, derived_sql_columns(spec), strict=True)
    ):
        if column is not None:
            derived[name] = [row[2 + offset] for row in rows]
    return collection_table(spec, raws, derived, raw)


def record_meta_table(raws: Sequence[str]) -> pa.Table:
    """Records' metadata columns only (`frames.RECORD_COLUMNS`), whatever their forms."""
    return form_table(raws, [], "")
