"""Parquet snapshots of one study's cache: a user-facing, crash-safe file contract.

Layout (``snapshot_dir/study_dir/``)::

    latest -> 20261129T074500Z          relative symlink, swapped atomically
    20261129T074500Z/                   one complete set per run, named by UTC run time
        manifest.json                   created, row counts, per-form version + signature
        records.parquet                 record metadata + ``recordData`` as a JSON string
        subjects.parquet  visits.parquet  queries.parquet
        forms/{form}.parquet            metadata + one typed column per variable of the form
    20261128T074500Z/ ...               older sets, ``retention`` kept in all
    .tmp-<name>/                        a set being written (only during a run or after a crash)

Why it is built this way:

* ``latest`` only ever points at a directory that was complete before it was renamed into
  place, and the symlink itself is replaced with ``os.replace``: a crash at any moment leaves
  readers on the previous complete set. Leftover ``.tmp-*`` entries are removed by the next
  run (writers are serialised by the caller, i.e. the sync's FileLock).
* All reads for one set happen in one SQLite read transaction, so a sync committing
  meanwhile (WAL) cannot make ``records.parquet`` disagree with ``forms/*.parquet``.
* Rows are streamed with ``fetchmany(batch_rows)`` into ``ParquetWriter``\\ s, so memory is
  bounded by the batch size, not by the study size.
* A form file is hard-linked from the previous set when nothing that shapes it changed
  (form version, variables signature, and a cheap records fingerprint), so a run that
  touched one form rewrites one form file. Files in a set are therefore immutable: never
  edit them in place, since an edit would show through every hard link.

Choices where the brief left room:

* Soft-deleted records are kept in every file with ``deleted = true`` (a snapshot mirrors
  the cache; filter on ``deleted`` for analysis). ``records.parquet`` is ordered by
  (``formKey``, ``recordId``), form files by ``recordId``.
* ``subjects``/``visits``/``queries`` carry their typed cache columns under the API's
  camelCase names (``dateCreated`` as timestamp UTC, ``deleted``/``isOpen`` as bool,
  ``visitDate`` as date) plus ``raw``, the full API JSON as a string, so fields the cache
  does not type (keywords, startDate, queryComments, ...) are not lost.
* Timestamps are second-precision UTC instants; Parquet has no seconds unit, so files
  carry them as ``timestamp[ms, tz=UTC]``.
* Forms listed by the API but without records get a schema-only (0-row) file, so every
  form of the study has a file with its typed columns.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from imednet_flows.cache.crash import crash_point
from imednet_flows.cache.schema import QUERIES, RECORDS, SUBJECTS, VISITS, EntitySpec
from imednet_flows.cache.store import study_version
from imednet_flows.frames import RECORD_COLUMNS, records_table, variable_columns
from imednet_flows.values import coerce

#: Bumped when the content of a file for the same data changes; part of every reuse key.
FORMAT_VERSION = 1
LATEST = "latest"
MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
LINK_TMP_PREFIX = ".latest-tmp-"
COMPRESSION = "zstd"

_SET_NAME = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?$")
_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME = 80
_TS_TYPE = pa.timestamp("s", tz="UTC")


class UnsafeSnapshotPath(ValueError):
    """A study or form key would have resolved outside its snapshot directory."""


@dataclass
class SnapshotResult:
    """What one ``write_snapshot`` produced; paths in the lists are relative to ``path``."""

    path: Path
    files_written: list[str] = field(default_factory=list)
    files_reused: list[str] = field(default_factory=list)
    #: Rows per top-level file: records, subjects, visits, queries.
    rows: dict[str, int] = field(default_factory=dict)
    #: Rows per form file, keyed by form key.
    form_rows: dict[str, int] = field(default_factory=dict)
    #: Older sets deleted by retention.
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.path.name


# --------------------------------------------------------------------------------------
# Names and paths
# --------------------------------------------------------------------------------------


def safe_name(key: str) -> str:
    """A directory/file name for a key, distinct for distinct keys.

    Keys made only of ``[A-Za-z0-9._-]`` (not starting with a dot) are used as they are,
    so ``PHX-101`` stays readable. Anything else is sanitised and suffixed with ``~`` and a
    hash of the original key; ``~`` never survives sanitising, so a suffixed name can never
    equal an unchanged one, and two suffixed names differ unless their hashes collide.
    (On a case-insensitive file system, keys differing only in case still share a name.)
    """
    cleaned = _SAFE_CHARS.sub("_", key).lstrip(".")[:_MAX_NAME]
    if cleaned == key and cleaned:
        return cleaned
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{cleaned or 'key'}~{digest}"


def _inside(base: Path, name: str) -> Path:
    """``base/name``, refusing anything that does not resolve to a direct child of base."""
    root = base.resolve()
    target = (root / name).resolve()
    if target.parent != root or name in ("", ".", ".."):
        raise UnsafeSnapshotPath(f"{name!r} resolves outside {root}")
    return target


def study_path(snapshot_dir: str | Path, study_key: str) -> Path:
    """The study's directory under ``snapshot_dir`` (not created)."""
    return _inside(Path(snapshot_dir), safe_name(study_key))


def _set_key(name: str) -> tuple[str, int] | None:
    match = _SET_NAME.match(name)
    return (match.group(1), int(match.group(2) or 0)) if match else None


def _set_name(key: tuple[str, int]) -> str:
    return key[0] if key[1] == 0 else f"{key[0]}-{key[1]}"


def complete_sets(study_dir: Path) -> list[Path]:
    """Complete sets, oldest first: run-time-named directories holding a manifest."""
    if not study_dir.is_dir():
        return []
    found = []
    for entry in study_dir.iterdir():
        key = _set_key(entry.name)
        if key and not entry.is_symlink() and (entry / MANIFEST).is_file():
            found.append((key, entry))
    return [path for _, path in sorted(found)]


def _latest_target(study_dir: Path) -> Path | None:
    link = study_dir / LATEST
    if not link.is_symlink():
        return None
    target = (study_dir / os.readlink(link)).resolve()
    if target.parent != study_dir.resolve() or not (target / MANIFEST).is_file():
        return None
    return target


def latest_snapshot(snapshot_dir: str | Path, study_key: str) -> Path | None:
    """The complete set ``latest`` points to, as its concrete (stable) directory, or None.

    The concrete path rather than ``.../latest`` so a caller reading several files is not
    switched to a newer set half-way; it stays valid until retention deletes it.
    """
    return _latest_target(study_path(snapshot_dir, study_key))


def read_manifest(set_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(set_dir) / MANIFEST).read_text())


def _new_set_name(study_dir: Path, now: datetime) -> str:
    """The run time, made unique and later than every existing set, so names sort by age
    even if the clock steps back."""
    key = (now.strftime("%Y%m%dT%H%M%SZ"), 0)
    for existing in complete_sets(study_dir)[-1:]:
        last = _set_key(existing.name)
        if last is not None and key <= last:
            key = (last[0], last[1] + 1)

    def taken(key: tuple[str, int]) -> bool:
        name = _set_name(key)
        return (study_dir / name).exists() or (study_dir / (TMP_PREFIX + name)).exists()

    while taken(key):
        key = (key[0], key[1] + 1)
    return _set_name(key)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _clean_leftovers(study_dir: Path) -> None:
    """Remove what a crashed or failed run left: temporary sets and temporary links."""
    for entry in study_dir.iterdir():
        if entry.name.startswith((TMP_PREFIX, LINK_TMP_PREFIX)):
            _remove(entry)


# --------------------------------------------------------------------------------------
# Arrow conversion of cache rows (shared with the reader)
# --------------------------------------------------------------------------------------


def camel(name: str) -> str:
    """Cache column name to the API's field name: ``date_created`` -> ``dateCreated``."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _column_type(spec: EntitySpec, name: str) -> pa.DataType:
    if name in ("date_created", "date_modified"):
        return _TS_TYPE
    if name in ("deleted", "is_open"):
        return pa.bool_()
    if name == "visit_date":
        return pa.date32()
    if name == "raw":
        return pa.string()
    sql_type = {c.name: c.sql_type for c in spec.columns}.get(name, "INTEGER")
    return pa.int64() if sql_type.startswith("INTEGER") else pa.string()


def entity_columns(spec: EntitySpec, include_raw: bool = True) -> list[str]:
    """Cache columns exported for an entity: all but ``study_key`` (a file is one study)."""
    names = spec.column_names[1:]
    return names if include_raw else names[:-1]


def entity_schema(spec: EntitySpec, include_raw: bool = True) -> pa.Schema:
    return pa.schema(
        [pa.field(camel(n), _column_type(spec, n)) for n in entity_columns(spec, include_raw)]
    )


def column_array(values: list[Any], kind: pa.DataType) -> pa.Array:
    """Cache values (SQLite's None/int/float/str) as an Arrow array of ``kind``.

    Vectorised where the cache guarantees the input form: timestamps are canonical
    'YYYY-MM-DD HH:MM:SS' UTC text (Arrow's ISO cast; a naive value is UTC by definition)
    and flags are 0/1. Dates come from the API unchecked, so they go through values.coerce.
    """
    if kind == _TS_TYPE:
        return pa.array(values, pa.string()).cast(pa.timestamp("s")).cast(kind)
    if kind == pa.bool_():
        return pa.array(values, pa.int64()).cast(kind)
    if kind == pa.date32():
        return pa.array([coerce(v, "DATE") for v in values], kind)
    return pa.array(values, kind)


def entity_table(
    spec: EntitySpec, rows: Iterable[tuple[Any, ...]], include_raw: bool = True
) -> pa.Table:
    """Rows selected in ``entity_columns`` order as a typed Arrow table."""
    schema = entity_schema(spec, include_raw)
    columns = list(zip(*rows, strict=True)) or [() for _ in schema]
    return pa.Table.from_arrays(
        [column_array(list(col), f.type) for col, f in zip(columns, schema, strict=True)],
        schema=schema,
    )


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def record_select() -> tuple[list[str], str]:
    """(API names, SQL expressions) for frames.RECORD_COLUMNS, then ``record_data``.

    Metadata the cache keeps as a column is read from it (timestamps already canonical);
    the rest (recordOid, recordType) is pulled from ``raw`` by SQLite, so no Python JSON
    parsing is needed for ``records.parquet``.
    """
    cached = set(RECORDS.column_names)
    names, exprs = [], []
    for name, _ in RECORD_COLUMNS:
        column = _snake(name)
        names.append(name)
        exprs.append(column if column in cached else f"json_extract(raw, '$.{name}')")
    return names, ", ".join([*exprs, "record_data"])


_BOOL_META = {name for name, kind in RECORD_COLUMNS if kind == pa.bool_()}
RECORD_META_SCHEMA = pa.schema([pa.field(n, t) for n, t in RECORD_COLUMNS])
RECORDS_FILE_SCHEMA = RECORD_META_SCHEMA.append(pa.field("recordData", pa.string()))


def record_dict(names: list[str], row: tuple[Any, ...], parse_data: bool) -> dict[str, Any]:
    """A record dict shaped as frames.records_table expects, from a ``record_select`` row."""
    out = dict(zip(names, row, strict=False))
    for name in _BOOL_META:
        if out[name] is not None:
            out[name] = bool(out[name])
    if parse_data:
        out["recordData"] = orjson.loads(row[-1])
    return out


def record_meta_table(rows: list[tuple[Any, ...]], with_data: bool = False) -> pa.Table:
    """The frames.RECORD_COLUMNS columns of ``record_select`` rows, built column-wise.

    records.parquet has the metadata of every record, so it skips the per-value Python
    path of records_table; the tests check both paths give the same metadata.
    """
    schema = RECORDS_FILE_SCHEMA if with_data else RECORD_META_SCHEMA
    columns = list(zip(*rows, strict=True)) or [() for _ in range(len(RECORD_COLUMNS) + 1)]
    return pa.Table.from_arrays(
        [column_array(list(col), f.type) for col, f in zip(columns, schema, strict=False)],
        schema=schema,
    )


# --------------------------------------------------------------------------------------
# Writing a set
# --------------------------------------------------------------------------------------


def _query(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
    """A cursor yielding plain tuples whatever the caller's row_factory (zip(*rows) and
    positional access rely on it, and tuples are the cheapest rows to build)."""
    cursor = conn.cursor()
    cursor.row_factory = None
    return cursor.execute(sql, args)


def _fetch_batches(cursor: sqlite3.Cursor, batch_rows: int) -> Iterator[list[Any]]:
    while True:
        rows = cursor.fetchmany(batch_rows)
        if not rows:
            return
        yield rows


def _write_entity(
    conn: sqlite3.Connection, spec: EntitySpec, study_key: str, target: Path, batch_rows: int
) -> int:
    sql = (
        f"SELECT {', '.join(entity_columns(spec))} FROM {spec.name} "
        f"WHERE study_key=? ORDER BY {spec.id_column}"
    )
    rows = 0
    with pq.ParquetWriter(target, entity_schema(spec), compression=COMPRESSION) as writer:
        for batch in _fetch_batches(_query(conn, sql, (study_key,)), batch_rows):
            writer.write_table(entity_table(spec, batch))
            rows += len(batch)
    return rows


def _variables(conn: sqlite3.Connection, study_key: str) -> list[dict[str, Any]]:
    return [
        orjson.loads(r[0])
        for r in _query(
            conn, "SELECT raw FROM variables WHERE study_key=? ORDER BY variable_id", (study_key,)
        )
    ]


def variables_signature(variables: list[dict[str, Any]], form_key: str) -> str:
    """A hash of the typed columns a form file gets: equal signatures, equal schemas."""
    columns = variable_columns(variables, [form_key])
    blob = json.dumps([FORMAT_VERSION, columns], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class _FormPlan:
    key: str
    file: str
    version: int | None
    signature: str
    rows: int
    max_modified: str | None
    reuse_from: Path | None = None

    def entry(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "version": self.version,
            "variables_signature": self.signature,
            "rows": self.rows,
            "max_modified": self.max_modified,
            "reused": self.reuse_from is not None,
        }

    def matches(self, previous: dict[str, Any] | None) -> bool:
        """Reusable only if nothing that shapes the file changed. Rows and max_modified
        guard against a rebuilt cache whose form versions restarted from 1."""
        return previous is not None and all(
            previous.get(k) == v
            for k, v in (
                ("file", self.file),
                ("version", self.version),
                ("variables_signature", self.signature),
                ("rows", self.rows),
                ("max_modified", self.max_modified),
            )
        )


def _plan_forms(
    conn: sqlite3.Connection,
    study_key: str,
    variables: list[dict[str, Any]],
    previous: Path | None,
) -> dict[str, _FormPlan]:
    versions = dict(
        _query(conn, "SELECT form_key, version FROM form_versions WHERE study_key=?", (study_key,))
    )
    stats = {
        r[0]: (r[1], r[2])
        for r in _query(
            conn,
            "SELECT form_key, COUNT(*), MAX(date_modified) FROM records "
            "WHERE study_key=? AND form_key IS NOT NULL GROUP BY form_key",
            (study_key,),
        )
    }
    listed = _query(conn, "SELECT form_key FROM forms WHERE study_key=?", (study_key,))
    keys = {r[0] for r in listed if r[0] is not None} | set(stats)
    old_forms: dict[str, Any] = {}
    if previous is not None:
        try:
            old_forms = read_manifest(previous).get("forms", {})
        except (OSError, ValueError):
            old_forms = {}
    plans: dict[str, _FormPlan] = {}
    for key in sorted(keys):
        rows, max_modified = stats.get(key, (0, None))
        plan = _FormPlan(
            key=key,
            file=f"forms/{safe_name(key)}.parquet",
            version=versions.get(key),
            signature=variables_signature(variables, key),
            rows=rows,
            max_modified=max_modified,
        )
        if previous is not None and plan.matches(old_forms.get(key)):
            plan.reuse_from = previous / plan.file
        plans[key] = plan
    return plans


class _FormWriter:
    """Streams one form's records into its file, typed with frames.records_table."""

    def __init__(self, path: Path, variables: list[dict[str, Any]], form_key: str) -> None:
        self.variables = [v for v in variables if v.get("formKey") == form_key]
        self.form_key = form_key
        self.buffer: list[dict[str, Any]] = []
        self.rows = 0
        schema = records_table([], self.variables, [form_key]).schema
        self.writer = pq.ParquetWriter(path, schema, compression=COMPRESSION)

    def add(self, record: dict[str, Any], batch_rows: int) -> None:
        self.buffer.append(record)
        if len(self.buffer) >= batch_rows:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.writer.write_table(records_table(self.buffer, self.variables, [self.form_key]))
            self.rows += len(self.buffer)
            self.buffer = []

    def close(self) -> int:
        self.flush()
        self.writer.close()
        return self.rows


def _record_cursor(
    conn: sqlite3.Connection, study_key: str, form_key: str | None = None
) -> tuple[list[str], sqlite3.Cursor]:
    names, select = record_select()
    if form_key is None:
        # (form_key, record_id) is the records_by_form index order: no sort step.
        sql = f"SELECT {select} FROM records WHERE study_key=? ORDER BY form_key, record_id"
        return names, _query(conn, sql, (study_key,))
    sql = f"SELECT {select} FROM records WHERE study_key=? AND form_key=? ORDER BY record_id"
    return names, _query(conn, sql, (study_key, form_key))


def _write_records_and_forms(
    conn: sqlite3.Connection,
    study_key: str,
    tmp: Path,
    variables: list[dict[str, Any]],
    plans: dict[str, _FormPlan],
    batch_rows: int,
    result: SnapshotResult,
) -> None:
    """One pass over the study's records in form order: every row goes to records.parquet,
    rows of forms that are not reused also to their form file, closed when the form ends."""
    names, cursor = _record_cursor(conn, study_key)
    form_at = names.index("formKey")
    form: _FormWriter | None = None
    form_plan: _FormPlan | None = None
    total = 0

    def finish_form() -> None:
        nonlocal form, form_plan
        if form is not None and form_plan is not None:
            result.form_rows[form_plan.key] = form.close()
            _form_written(form_plan, result)
        form, form_plan = None, None

    target = tmp / "records.parquet"
    with pq.ParquetWriter(target, RECORDS_FILE_SCHEMA, compression=COMPRESSION) as rw:
        for batch in _fetch_batches(cursor, batch_rows):
            for row in batch:
                key = row[form_at]
                plan = plans.get(key) if key is not None else None
                if form_plan is not plan:
                    finish_form()
                    if plan is not None and plan.reuse_from is None:
                        form_plan = plan
                        form = _FormWriter(tmp / plan.file, variables, plan.key)
                if form is not None:
                    form.add(record_dict(names, row, parse_data=True), batch_rows)
            rw.write_table(record_meta_table(batch, with_data=True))
            total += len(batch)
        finish_form()
    result.rows["records"] = total
    result.files_written.insert(0, "records.parquet")


def _form_written(plan: _FormPlan, result: SnapshotResult) -> None:
    result.files_written.append(plan.file)
    if sum(f.startswith("forms/") for f in result.files_written) == 1:
        crash_point("snapshot.mid-form")


def _write_form_alone(
    conn: sqlite3.Connection,
    study_key: str,
    tmp: Path,
    variables: list[dict[str, Any]],
    plan: _FormPlan,
    batch_rows: int,
    result: SnapshotResult,
) -> None:
    """A form file from its own indexed query (same read transaction): for forms without
    records, and for planned reuse whose hard link failed."""
    names, cursor = _record_cursor(conn, study_key, plan.key)
    form = _FormWriter(tmp / plan.file, variables, plan.key)
    for batch in _fetch_batches(cursor, batch_rows):
        for row in batch:
            form.add(record_dict(names, row, parse_data=True), batch_rows)
    result.form_rows[plan.key] = form.close()
    _form_written(plan, result)


def _finish_forms(
    conn: sqlite3.Connection,
    study_key: str,
    tmp: Path,
    variables: list[dict[str, Any]],
    plans: dict[str, _FormPlan],
    batch_rows: int,
    result: SnapshotResult,
) -> None:
    """Hard-link reused form files; write the forms the record pass did not produce."""
    for plan in plans.values():
        if plan.key in result.form_rows:
            continue
        if plan.reuse_from is not None:
            try:
                os.link(plan.reuse_from, tmp / plan.file)
            except OSError:
                # No hard links on this file system, or the old file is gone: rewrite it.
                plan.reuse_from = None
            else:
                result.files_reused.append(plan.file)
                result.form_rows[plan.key] = plan.rows
                continue
        _write_form_alone(conn, study_key, tmp, variables, plan, batch_rows, result)


def write_snapshot(
    conn: sqlite3.Connection,
    study_key: str,
    snapshot_dir: str | Path,
    retention: int = 5,
    batch_rows: int = 5000,
) -> SnapshotResult:
    """Write a complete Parquet set for ``study_key`` and point ``latest`` at it.

    ``conn`` must not be inside a transaction: the whole set is read in one read
    transaction opened here, so it is consistent even while another connection commits.
    Writers for one study must be serialised by the caller (the sync's FileLock); readers
    need no lock. Returns what was written, reused and removed.
    """
    if retention < 1:
        raise ValueError("retention must keep at least one set")
    if batch_rows < 1:
        raise ValueError("batch_rows must be positive")
    if conn.in_transaction:
        raise RuntimeError("write_snapshot needs a connection outside any transaction")
    started = time.monotonic()
    study_dir = study_path(snapshot_dir, study_key)
    study_dir.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(study_dir)

    now = datetime.now(UTC)
    name = _new_set_name(study_dir, now)
    final = _inside(study_dir, name)
    tmp = _inside(study_dir, TMP_PREFIX + name)
    previous = _latest_target(study_dir)
    if previous is None:
        sets = complete_sets(study_dir)
        previous = sets[-1] if sets else None

    result = SnapshotResult(path=final)
    (tmp / "forms").mkdir(parents=True)
    conn.execute("BEGIN")
    try:
        data_version = study_version(conn, study_key)
        variables = _variables(conn, study_key)
        plans = _plan_forms(conn, study_key, variables, previous)
        for plan in plans.values():
            _inside(tmp / "forms", Path(plan.file).name)
        _write_records_and_forms(conn, study_key, tmp, variables, plans, batch_rows, result)
        _finish_forms(conn, study_key, tmp, variables, plans, batch_rows, result)
        for spec in (SUBJECTS, VISITS, QUERIES):
            target = f"{spec.name}.parquet"
            result.rows[spec.name] = _write_entity(conn, spec, study_key, tmp / target, batch_rows)
            result.files_written.append(target)
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")

    manifest = {
        "format": FORMAT_VERSION,
        "study_key": study_key,
        "name": name,
        "created": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "rows": result.rows,
        "data_version": data_version,
        "forms": {key: plan.entry() for key, plan in plans.items()},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))

    crash_point("snapshot.before-rename")
    os.rename(tmp, final)
    crash_point("snapshot.before-latest")
    link_tmp = study_dir / f"{LINK_TMP_PREFIX}{name}"
    _remove(link_tmp)
    os.symlink(name, link_tmp, target_is_directory=True)
    os.replace(link_tmp, study_dir / LATEST)

    result.removed = _apply_retention(study_dir, retention)
    result.seconds = time.monotonic() - started
    return result


def snapshot_is_current(conn: sqlite3.Connection, snapshot_dir: str | Path, study_key: str) -> bool:
    """Whether `latest` shows the cache's data as it is now. Decided from stored versions,
    not from what the current run changed: a run killed after its commit but before its
    snapshot leaves data newer than `latest`, and the next run must publish it. Leftovers of
    such a run are cleared here too."""
    study_dir = study_path(snapshot_dir, study_key)
    if study_dir.exists():
        _clean_leftovers(study_dir)
    latest = latest_snapshot(snapshot_dir, study_key)
    if latest is None:
        return False
    try:
        recorded = read_manifest(latest).get("data_version")
    except (OSError, ValueError):
        return False
    return recorded == study_version(conn, study_key)


def _apply_retention(study_dir: Path, retention: int) -> list[str]:
    """Delete all but the ``retention`` newest complete sets, never the one latest names."""
    sets = complete_sets(study_dir)
    keep = {p.name for p in sets[-retention:]}
    current = _latest_target(study_dir)
    if current is not None:
        keep.add(current.name)
    removed = []
    for path in sets:
        if path.name not in keep:
            # Renamed first so a crash mid-delete leaves a .tmp-* the next run removes,
            # not a manifest-less directory nothing would ever clean.
            doomed = path.with_name(f"{TMP_PREFIX}old-{path.name}")
            os.rename(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            removed.append(path.name)
    return removed


__all__ = [
    "LATEST",
    "MANIFEST",
    "SnapshotResult",
    "UnsafeSnapshotPath",
    "column_array",
    "complete_sets",
    "entity_columns",
    "entity_schema",
    "entity_table",
    "latest_snapshot",
    "read_manifest",
    "record_dict",
    "record_meta_table",
    "record_select",
    "safe_name",
    "study_path",
    "write_snapshot",
]
