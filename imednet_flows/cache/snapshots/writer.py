"""Writing a snapshot set: every collection of one study, and its typed per-form tables.

A set is built from the previous complete one. Its manifest says at which data version of
the study it was written; the cache's change log says which rows changed since. Only the
parts those rows fall in are rebuilt from the cache; every other part is a hard link to the
previous set's file, so a run that changed a few records rewrites a few parts and the
reference collections cost nothing. A table is built whole, streaming batches of rows into
one `ParquetWriter` per part (memory does not grow with the study), when there is no usable
previous set, when the log says "everything" for it or no longer reaches back, when its
columns changed (a variable added to a form), or when its parts would not add up to the
cache's row count.

Everything a set holds is read in one SQLite read transaction, so a sync committing
meanwhile (WAL) cannot make two tables disagree. Files in a set are immutable: hard links
share them between sets, so an edit in place would show through every set.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from imednet_flows.cache import arrow
from imednet_flows.cache.collections import COLLECTIONS, RECORDS, Collection
from imednet_flows.cache.crash import crash_point
from imednet_flows.cache.snapshots.background import BackgroundWriter, PartFile
from imednet_flows.cache.snapshots.parts import (
    PART_ROWS,
    UNSIZED,
    Part,
    Range,
    chunk_sizes,
    parse_parts,
    part_file,
    ranges,
    touched,
)
from imednet_flows.cache.snapshots.paths import (
    MANIFEST,
    TMP_PREFIX,
    apply_retention,
    clean_leftovers,
    complete_sets,
    inside,
    latest_snapshot,
    latest_target,
    new_set_name,
    point_latest,
    read_manifest,
    safe_name,
    study_path,
)
from imednet_flows.cache.store import Changes, changes_since, study_version
from imednet_flows.read_ahead import read_ahead

#: Bumped when the files written for the same data change; a set of another format is
#: never reused.
FORMAT_VERSION = 2
#: Rows read from SQLite and typed at a time: one Parquet row group each. Half of 8,192
#: took a full snapshot's peak memory from 100 MB to 83 MB over its start at 200,000
#: records, for files 3 % larger and about the same time.
BATCH_ROWS = 4_096
#: Chosen by benchmarks/snapshot_throughput.py: zstd at level 1 writes about as fast as
#: lz4 and snappy, reads as fast, and makes the smallest files of the three. Without
#: Parquet's dictionary pages zstd alone packs the repeated values (form keys, statuses)
#: better, and an edited part is written about 20 % and read about 30 % faster: the raw
#: JSON column, all distinct values, was dictionary-encoded first and then given up on.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 1,
    "use_dictionary": False,
}
FORMS_DIR = "forms"
#: A part is patched (read, changed rows dropped and re-read from the cache, written) only
#: while its changed rows are under 1/PATCH_SHARE of it; more, and it is rebuilt.
PATCH_SHARE = 4
#: Ids per `IN (...)` when reading changed rows (well under SQLite's variable limit).
ID_CHUNK = 500
#: Parts are shared by hard links between sets: read-only, so an edit in place (which
#: would show through every set) takes a deliberate chmod first.
READ_ONLY = 0o444


class SnapshotResult(BaseModel):
    """What one `write_snapshot` produced; file paths are relative to `path`."""

    path: Path
    #: The study's data version the set shows.
    data_version: int = 0
    files_written: list[str] = Field(default_factory=list)
    #: Parts taken over from the previous set (hard links, or copies where links fail).
    files_reused: list[str] = Field(default_factory=list)
    bytes_written: int = 0
    #: Rows per collection, keyed by its API name.
    rows: dict[str, int] = Field(default_factory=dict)
    #: Rows per typed form table, keyed by form key.
    form_rows: dict[str, int] = Field(default_factory=dict)
    #: Why every table was built whole (None when the set was built from the previous one).
    rebuilt: str | None = None
    #: Older sets deleted by retention.
    removed: list[str] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class _Table:
    """One table of a set: where its rows come from and how they are typed."""

    #: Path inside the set: ``records.parquet`` or ``forms/VS.parquet``.
    rel: str
    schema: pa.Schema
    sql_table: str
    id_column: str
    #: Selected per row: the id first, then what `convert` needs.
    columns: tuple[str, ...]
    #: The id's column in the Arrow table (the API's name: ``recordId``).
    arrow_id: str
    #: The rows of this table: ``study_key=?`` and, for a form, ``form_key=?``.
    where: str
    args: tuple[Any, ...]
    convert: Callable[[list[tuple[Any, ...]]], pa.Table]
    is_form: bool = False

    @property
    def signature(self) -> str:
        """Equal signatures, same columns and file settings: parts may be shared."""
        blob = json.dumps(
            [FORMAT_VERSION, self.schema.to_string(), PARQUET_OPTIONS], sort_keys=True
        ).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class _Step:
    """One range of a table: built from the cache (no `part`), the previous set's `part`
    linked (no `changed`), or that part patched with the `changed` ids in its range."""

    range: Range
    part: Part | None = None
    changed: list[Any] | None = None


def _without(old: pa.Table, table: _Table, step: _Step) -> pa.Table | None:
    """A previous part's rows less the changed ids; None if the part does not cast to this
    table's schema without loss, has another row count, or the ids are not of the id
    column's type."""
    assert step.part is not None and step.changed is not None
    if old.num_rows != step.part.rows:
        return None
    try:
        # Parquet has no seconds unit: timestamp[s] columns come back as ms, whole seconds.
        old = old.cast(table.schema)
        ids = old.column(table.arrow_id)
        changed = pa.array(step.changed, ids.type)
    except (pa.ArrowException, KeyError, TypeError, ValueError, OverflowError):
        return None
    return old.filter(pc.invert(pc.is_in(ids, value_set=changed)))


def _collection_table(spec: Collection, study_key: str) -> _Table:
    return _Table(
        rel=f"{spec.name}.parquet",
        schema=arrow.collection_schema(spec),
        sql_table=spec.table,
        id_column=spec.id_column,
        columns=tuple(arrow.select_columns(spec)),
        arrow_id=spec.id_field,
        where="study_key=?",
        args=(study_key,),
        convert=lambda rows: arrow.rows_table(spec, rows),
    )


def _form_table(form_key: str, variables: list[dict[str, Any]], study_key: str) -> _Table:
    return _Table(
        rel=f"{FORMS_DIR}/{safe_name(form_key)}.parquet",
        schema=arrow.form_schema(variables, form_key),
        sql_table=RECORDS.table,
        id_column=RECORDS.id_column,
        columns=(RECORDS.id_column, arrow.RAW),
        arrow_id=RECORDS.id_field,
        where="study_key=? AND form_key=?",
        args=(study_key, form_key),
        convert=lambda rows: arrow.form_table([r[1] for r in rows], variables, form_key),
        is_form=True,
    )


def _cursor(conn: sqlite3.Connection, sql: str, args: Iterable[Any] = ()) -> sqlite3.Cursor:
    """A cursor yielding plain tuples whatever the caller's row_factory."""
    cursor = conn.cursor()
    cursor.row_factory = None
    return cursor.execute(sql, tuple(args))


class _SetWriter:
    """Writes the tables of one set into its temporary directory."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        tmp: Path,
        previous: Path | None,
        batch_rows: int,
        part_rows: int,
        result: SnapshotResult,
    ) -> None:
        self.conn = conn
        self.tmp = tmp
        self.previous = previous
        self.batch_rows = batch_rows
        self.part_rows = part_rows
        self.result = result
        self.form_parts_written = 0
        self.background = BackgroundWriter()

    # -- one table ----------------------------------------------------------------------
    def write(
        self, table: _Table, previous: dict[str, Any] | None, changed: set[Any] | None
    ) -> dict[str, Any]:
        """Write `table` from the previous set's entry and the ids changed since (None:
        any row may have changed); return its manifest entry."""
        old = parse_parts(previous) if self._usable(previous, table) else None
        plan = None if old is None or changed is None else touched(old, changed)
        if old is None or plan is None:
            parts = self._build(table, [_Step(Range())], split_above=self.part_rows)
        else:
            steps = [_Step(r, old[k], plan.get(k)) for k, r in enumerate(ranges(old))]
            parts = self._build(table, steps, split_above=2 * self.part_rows)
            if sum(p.rows for p in parts) != self._count(table, Range()):
                # The log missed something (or the cache was rebuilt): trust only the cache.
                self.background.wait()
                self._forget(table, parts)
                parts = self._build(table, [_Step(Range())], split_above=self.part_rows)
        return {
            "file": table.rel,
            "rows": sum(p.rows for p in parts),
            "signature": table.signature,
            "parts": [p.entry() for p in parts],
        }

    def _usable(self, previous: dict[str, Any] | None, table: _Table) -> bool:
        return (
            self.previous is not None
            and isinstance(previous, dict)
            and previous.get("file") == table.rel
            and previous.get("signature") == table.signature
        )

    def _build(self, table: _Table, steps: list[_Step], split_above: int) -> list[Part]:
        directory = self.tmp / table.rel
        directory.mkdir(parents=True, exist_ok=True)
        parts: list[Part] = []
        for step in steps:
            done: list[Part] | None = None
            if step.part is not None and step.changed is None:
                linked = self._reuse(table, step.part, len(parts))
                done = None if linked is None else [linked]
            elif step.part is not None:
                done = self._patch(table, step, split_above, len(parts))
            if done is None:
                done = self._write_range(table, step.range, split_above, len(parts))
            parts += done
        if not parts:  # an empty table still has a file: readers need its columns
            parts.append(self._write_part(table, 0, None, []))
        first = parts[0]
        parts[0] = Part(None, first.rows, first.file, first.bytes)
        return parts

    def _forget(self, table: _Table, parts: list[Part]) -> None:
        for part in parts:
            rel = f"{table.rel}/{part.file}"
            (self.tmp / rel).unlink(missing_ok=True)
            for listed in (self.result.files_written, self.result.files_reused):
                if rel in listed:
                    listed.remove(rel)

    # -- reuse --------------------------------------------------------------------------
    def _reuse(self, table: _Table, part: Part, number: int) -> Part | None:
        """The previous set's part, hard-linked (copied where links fail) under this set's
        numbering; None if it is gone or not the file the manifest describes."""
        assert self.previous is not None
        source = self.previous / table.rel / part.file
        name = part_file(number)
        target = self.tmp / table.rel / name
        try:
            if source.is_symlink() or source.stat().st_size != part.bytes:
                return None
        except OSError:
            return None
        try:
            os.link(source, target)
        except OSError:
            try:
                shutil.copyfile(source, target)
                target.chmod(READ_ONLY)
            except OSError:
                target.unlink(missing_ok=True)
                return None
            self.result.bytes_written += part.bytes
        self.result.files_reused.append(f"{table.rel}/{name}")
        return Part(part.lo, part.rows, name, part.bytes)

    # -- patching -----------------------------------------------------------------------
    def _patch(
        self, table: _Table, step: _Step, split_above: int, number: int
    ) -> list[Part] | None:
        """The previous set's part with its changed rows replaced by the cache's: Arrow
        work on one part and a SQLite read of the changed rows only, instead of typing
        every row of the range again. None when that is not certain to give the rebuilt
        part's rows (another schema, ids that do not compare, a part grown past
        `split_above`): the caller then rebuilds the range from the cache."""
        assert self.previous is not None and step.part is not None and step.changed
        if len(step.changed) * PATCH_SHARE > step.part.rows:
            return None
        try:
            kept = _without(pq.read_table(self.previous / table.rel / step.part.file), table, step)
        except (OSError, pa.ArrowException):
            return None
        if kept is None:
            return None
        rows = self._rows_by_id(table, step.range, sorted(step.changed))
        fresh = table.convert(rows) if rows else table.schema.empty_table()
        merged = pa.concat_tables([kept, fresh]).sort_by(table.arrow_id)
        if merged.num_rows > split_above:
            return None
        if merged.num_rows == 0:
            return []
        # The whole part is in memory already, so it costs nothing to write it as one row
        # group, and per-row-group work (a column chunk, statistics and a compressor each)
        # made four of them take about 30 % longer to write.
        return [self._write_part(table, number, step.range.lo, [merged], merged.num_rows)]

    def _rows_by_id(self, table: _Table, rng: Range, ids: list[Any]) -> list[tuple[Any, ...]]:
        """The cache's rows of `ids` that lie in `rng` (deleted ones are simply absent)."""
        where, args = self._range_sql(table, rng, lookup=True)
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(ids), ID_CHUNK):
            chunk = ids[start : start + ID_CHUNK]
            sql = (
                f"SELECT {', '.join(table.columns)} FROM {table.sql_table} WHERE {where} "
                f"AND {table.id_column} IN ({', '.join('?' * len(chunk))})"
            )
            rows += _cursor(self.conn, sql, [*args, *chunk]).fetchall()
        return rows

    # -- writing ------------------------------------------------------------------------
    def _range_sql(self, table: _Table, rng: Range, lookup: bool = False) -> tuple[str, list[Any]]:
        """The rows of `table` in `rng`. With `lookup` (a few ids will be asked for), the range
        terms are kept out of SQLite's index choice (a unary +): else it walks the whole
        range, reading each row, instead of looking up each id by primary key (a form's
        part spans the records of every form in its range)."""
        where, args = table.where, list(table.args)
        column = f"+{table.id_column}" if lookup else table.id_column
        if rng.lo is not None:
            where += f" AND {column}>=?"
            args.append(rng.lo)
        if rng.hi is not None:
            where += f" AND {column}<?"
            args.append(rng.hi)
        return where, args

    def _count(self, table: _Table, rng: Range) -> int:
        where, args = self._range_sql(table, rng)
        sql = f"SELECT COUNT(*) FROM {table.sql_table} WHERE {where}"
        return int(_cursor(self.conn, sql, args).fetchone()[0])

    def _write_range(self, table: _Table, rng: Range, split_above: int, number: int) -> list[Part]:
        """The cache's rows in `rng`, streamed into one part, or several of at most
        part_rows rows when there are more than `split_above`; none if the range is empty."""
        total = self._count(table, rng)
        if total == 0:
            return []
        where, args = self._range_sql(table, rng)
        cursor = _cursor(
            self.conn,
            f"SELECT {', '.join(table.columns)} FROM {table.sql_table} WHERE {where} "
            f"ORDER BY {table.id_column}",
            args,
        )
        sizes = chunk_sizes(total, self.part_rows, split_above)
        parts = []
        for index, size in enumerate(sizes):
            rows = self._batches(cursor, size, last=index == len(sizes) - 1)
            # The next batch leaves SQLite while this one is typed, and the one before is
            # encoded (`_write_part`): three steps on two cores instead of one after another.
            with read_ahead(rows, "snapshot-read") as batches:
                first = next(batches, [])
                lo = rng.lo if index == 0 or not first else first[0][0]
                tables = (table.convert(b) for b in itertools.chain([first], batches) if b)
                parts.append(self._write_part(table, number + index, lo, tables))
        return parts

    def _batches(
        self, cursor: sqlite3.Cursor, size: int, last: bool
    ) -> Iterable[list[tuple[Any, ...]]]:
        """Up to `size` rows in batches (the last part takes whatever is left)."""
        taken = 0
        while last or taken < size:
            rows = cursor.fetchmany(self.batch_rows if last else min(self.batch_rows, size - taken))
            if not rows:
                return
            taken += len(rows)
            yield rows

    def _write_part(
        self,
        table: _Table,
        number: int,
        lo: Any,
        tables: Iterable[pa.Table],
        row_group_rows: int | None = None,
    ) -> Part:
        """Queue the part's batches for the writing thread; its size is known at `finish`.
        A batch is a row group unless `row_group_rows` says otherwise."""
        name = part_file(number)
        part = PartFile(self.tmp / table.rel / name, table.schema, PARQUET_OPTIONS)
        rows = 0
        for typed in tables:
            if typed.num_rows:
                self.background.submit(part.write, typed, row_group_rows or self.batch_rows)
                rows += typed.num_rows
        self.background.submit(part.close, rows == 0, READ_ONLY)
        self.result.files_written.append(f"{table.rel}/{name}")
        if table.is_form:
            self.form_parts_written += 1
            if self.form_parts_written == 1:
                crash_point("snapshot.mid-form")
        return Part(lo, rows, name, UNSIZED)

    def finish(self, entries: Iterable[dict[str, Any]]) -> None:
        """Wait for every queued write, then give the written parts of `entries` their
        sizes (checked before a later set reuses them)."""
        self.background.wait()
        for entry in entries:
            for part in entry["parts"]:
                if part["bytes"] == UNSIZED:
                    part["bytes"] = (self.tmp / entry["file"] / part["file"]).stat().st_size
                    self.result.bytes_written += part["bytes"]


# ------------------------------------------------------------------------------ the set


@dataclass(frozen=True)
class _Baseline:
    """What a new set builds on: the previous set and what changed since it, or why
    nothing of it is used."""

    manifest: dict[str, Any] | None
    changes: Changes | None
    reason: str | None


def _baseline(
    conn: sqlite3.Connection, study_key: str, previous: Path | None, version: int
) -> _Baseline:
    if previous is None:
        return _Baseline(None, None, "there is no earlier complete set")
    try:
        manifest = read_manifest(previous)
    except (OSError, ValueError):
        return _Baseline(None, None, f"the manifest of {previous.name} cannot be read")
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT_VERSION
        or manifest.get("study_key") != study_key
    ):
        return _Baseline(None, None, f"{previous.name} was written in another format")
    since = manifest.get("data_version")
    if not isinstance(since, int) or since > version:
        return _Baseline(
            None,
            None,
            f"{previous.name} shows data version {since}, which this cache's version "
            f"{version} does not follow (a rebuilt cache?)",
        )
    changes = changes_since(conn, study_key, since)
    if changes is None:
        return _Baseline(
            None, None, f"the cache's change log no longer reaches back to version {since}"
        )
    return _Baseline(manifest, changes, None)


def _changed_ids(changes: Changes | None, collection: str) -> set[Any] | None:
    if changes is None:
        return None
    rows = changes.of(collection)
    return None if rows is None else {row_id for row_id, _ in rows}


def _changed_by_form(changes: Changes | None) -> dict[str, set[Any]] | None:
    """Changed record ids per form key; None if any record may have changed, or a change
    carries no form key (the record could have been in any form's table)."""
    if changes is None:
        return None
    rows = changes.of(RECORDS.name)
    if rows is None:
        return None
    out: dict[str, set[Any]] = {}
    for row_id, form_key in rows:
        if form_key is None:
            return None
        out.setdefault(form_key, set()).add(row_id)
    return out


def _variables(conn: sqlite3.Connection, study_key: str) -> list[dict[str, Any]]:
    return [
        orjson.loads(r[0])
        for r in _cursor(
            conn, "SELECT raw FROM variables WHERE study_key=? ORDER BY variable_id", (study_key,)
        )
    ]


def _form_keys(conn: sqlite3.Connection, study_key: str) -> list[str]:
    """Every form the API lists and every form a record names: a form without records still
    gets a (0-row) table with its typed columns."""
    listed = _cursor(
        conn, "SELECT form_key FROM forms WHERE study_key=? AND form_key IS NOT NULL", (study_key,)
    )
    used = _cursor(conn, _FORMS_USED, (study_key,))
    return sorted({r[0] for r in listed} | {r[0] for r in used if r[0] is not None})


#: The distinct form keys of a study's records, one index lookup per form: `SELECT
#: DISTINCT` walks the index entry of every record (20 ms at 200k records, every snapshot;
#: this takes 0.1 ms).
_FORMS_USED = """
WITH RECURSIVE used(form_key) AS (
  SELECT MIN(form_key) FROM records WHERE study_key=?1
  UNION ALL
  SELECT (SELECT MIN(form_key) FROM records WHERE study_key=?1 AND form_key>used.form_key)
  FROM used WHERE used.form_key IS NOT NULL
)
SELECT form_key FROM used
"""


def _write_tables(
    conn: sqlite3.Connection,
    study_key: str,
    writer: _SetWriter,
    baseline: _Baseline,
) -> tuple[dict[str, Any], dict[str, Any]]:
    old = baseline.manifest or {}
    old_collections = old.get("collections") or {}
    old_forms = old.get("forms") or {}
    collections: dict[str, Any] = {}
    for spec in COLLECTIONS:
        entry = writer.write(
            _collection_table(spec, study_key),
            old_collections.get(spec.name),
            _changed_ids(baseline.changes, spec.name),
        )
        collections[spec.name] = entry
        writer.result.rows[spec.name] = entry["rows"]
    variables = _variables(conn, study_key)
    by_form = _changed_by_form(baseline.changes)
    forms: dict[str, Any] = {}
    for form_key in _form_keys(conn, study_key):
        table = _form_table(form_key, variables, study_key)
        inside(writer.tmp / FORMS_DIR, Path(table.rel).name)
        changed = None if by_form is None else by_form.get(form_key, set())
        entry = writer.write(table, old_forms.get(form_key), changed)
        forms[form_key] = entry
        writer.result.form_rows[form_key] = entry["rows"]
    writer.finish([*collections.values(), *forms.values()])
    return collections, forms


def _check_arguments(
    conn: sqlite3.Connection, retention: int, batch_rows: int, part_rows: int
) -> None:
    if retention < 1:
        raise ValueError("retention must keep at least one set")
    if batch_rows < 1 or part_rows < 1:
        raise ValueError("batch_rows and part_rows must be positive")
    if conn.in_transaction:
        raise RuntimeError("write_snapshot needs a connection outside any transaction")


def _previous_set(study_dir: Path) -> Path | None:
    """The set ``latest`` points at, else the newest complete one: what a new set builds on."""
    previous = latest_target(study_dir)
    if previous is None:
        sets = complete_sets(study_dir)
        previous = sets[-1] if sets else None
    return previous


def _manifest(
    study_key: str,
    name: str,
    now: datetime,
    version: int,
    result: SnapshotResult,
    collections: dict[str, Any],
    forms: dict[str, Any],
) -> dict[str, Any]:
    """What a set holds and at which data version: readers and the next set rely on it."""
    return {
        "format": FORMAT_VERSION,
        "study_key": study_key,
        "name": name,
        "created": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "data_version": version,
        "rows": result.rows,
        "collections": collections,
        "forms": forms,
    }


def write_snapshot(
    conn: sqlite3.Connection,
    study_key: str,
    snapshot_dir: str | Path,
    retention: int = 5,
    batch_rows: int = BATCH_ROWS,
    part_rows: int = PART_ROWS,
) -> SnapshotResult:
    """Write a complete Parquet set for `study_key` and point ``latest`` at it.

    `conn` must not be inside a transaction: the whole set is read in one read transaction
    opened here, so it is consistent even while another connection commits. Writers for one
    study must be serialised by the caller (the sync's FileLock); readers need no lock.
    """
    _check_arguments(conn, retention, batch_rows, part_rows)
    started = time.monotonic()
    study_dir = study_path(snapshot_dir, study_key)
    study_dir.mkdir(parents=True, exist_ok=True)
    clean_leftovers(study_dir)

    now = datetime.now(UTC)
    name = new_set_name(study_dir, now)
    final = inside(study_dir, name)
    tmp = inside(study_dir, TMP_PREFIX + name)
    previous = _previous_set(study_dir)

    result = SnapshotResult(path=final)
    (tmp / FORMS_DIR).mkdir(parents=True)
    # store's queries index rows by position: plain tuples whatever the caller set.
    row_factory, conn.row_factory = conn.row_factory, None
    conn.execute("BEGIN")
    try:
        version = study_version(conn, study_key)
        baseline = _baseline(conn, study_key, previous, version)
        writer = _SetWriter(
            conn,
            tmp,
            previous if baseline.manifest is not None else None,
            batch_rows,
            part_rows,
            result,
        )
        with arrow.system_allocator(), contextlib.closing(writer.background):
            collections, forms = _write_tables(conn, study_key, writer, baseline)
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
        conn.row_factory = row_factory
    result.data_version = version
    result.rebuilt = baseline.reason

    manifest = _manifest(study_key, name, now, version, result, collections, forms)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))

    crash_point("snapshot.before-rename")
    os.rename(tmp, final)
    crash_point("snapshot.before-latest")
    point_latest(study_dir, name)

    result.removed = apply_retention(study_dir, retention)
    result.seconds = time.monotonic() - started
    return result


def snapshot_is_current(conn: sqlite3.Connection, snapshot_dir: str | Path, study_key: str) -> bool:
    """Whether ``latest`` shows the cache's data as it is now. Decided from stored versions,
    not from what the current run changed: a run killed after its commit but before its
    snapshot leaves data newer than ``latest``, and the next run must publish it. Leftovers
    of such a run are cleared here too."""
    study_dir = study_path(snapshot_dir, study_key)
    if study_dir.exists():
        clean_leftovers(study_dir)
    latest = latest_snapshot(snapshot_dir, study_key)
    if latest is None:
        return False
    try:
        recorded = read_manifest(latest).get("data_version")
    except (OSError, ValueError):
        return False
    return recorded == study_version(conn, study_key)


__all__ = ["FORMAT_VERSION", "SnapshotResult", "snapshot_is_current", "write_snapshot"]
