"""Tables of the cache, how API rows map onto them, and schema migrations.

One SQLite file holds every study. WAL mode lets readers query while a sync
writes; writers are serialised by a FileLock beside the file, never by
SQLite's own busy waiting.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from imednet_flows.timestamps import BadTimestamp, format_timestamp, parse_instant

SCHEMA_VERSION = 2


_CANONICAL = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def canonical_ts(value: Any) -> str | None:
    """Any API timestamp form as 'YYYY-MM-DD HH:MM:SS' UTC, so text order is time order."""
    if not value or not isinstance(value, str):
        return None
    if _CANONICAL.fullmatch(value):  # the API's usual form: nothing to convert
        return value
    try:
        return format_timestamp(parse_instant(value.strip())[0])
    except BadTimestamp:
        return None


def query_open(item: dict[str, Any]) -> int | None:
    """1 open, 0 closed, None without comments: the latest comment decides (as the SDK)."""
    comments = item.get("queryComments") or []
    if not comments:
        return None
    latest = max(comments, key=lambda c: c.get("sequence") or 0)
    return 0 if latest.get("closed") else 1


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    extract: Callable[[dict[str, Any]], Any]


def _field(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda item: item.get(name)


def _flag(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda item: 1 if item.get(name) else 0


def _stamp(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda item: canonical_ts(item.get(name))


def _json(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda item: orjson.dumps(item.get(name) or {}).decode()


@dataclass(frozen=True)
class EntitySpec:
    """One cached entity: API route, id, and the columns kept beside the raw JSON."""

    name: str
    route: str
    id_field: str
    id_column: str
    columns: tuple[Column, ...]
    #: Synced by watermark (dateModified) and reconciled for hard deletes.
    incremental: bool = True

    @property
    def column_names(self) -> list[str]:
        return ["study_key", self.id_column, *(c.name for c in self.columns), "raw"]

    def to_row(self, study_key: str, item: dict[str, Any]) -> tuple[Any, ...]:
        return (
            study_key,
            item[self.id_field],
            *(c.extract(item) for c in self.columns),
            orjson.dumps(item).decode(),
        )


def _common(deleted: bool = True) -> tuple[Column, ...]:
    cols = [
        Column("date_created", "TEXT", _stamp("dateCreated")),
        Column("date_modified", "TEXT", _stamp("dateModified")),
    ]
    if deleted:
        cols.insert(0, Column("deleted", "INTEGER NOT NULL", _flag("deleted")))
    return tuple(cols)


RECORDS = EntitySpec(
    "records",
    "records",
    "recordId",
    "record_id",
    (
        Column("form_key", "TEXT", _field("formKey")),
        Column("form_id", "INTEGER", _field("formId")),
        Column("subject_key", "TEXT", _field("subjectKey")),
        Column("subject_id", "INTEGER", _field("subjectId")),
        Column("site_id", "INTEGER", _field("siteId")),
        Column("interval_id", "INTEGER", _field("intervalId")),
        Column("visit_id", "INTEGER", _field("visitId")),
        Column("record_status", "TEXT", _field("recordStatus")),
        *_common(),
        Column("record_data", "TEXT NOT NULL", _json("recordData")),
    ),
)
SUBJECTS = EntitySpec(
    "subjects",
    "subjects",
    "subjectId",
    "subject_id",
    (
        Column("subject_key", "TEXT", _field("subjectKey")),
        Column("site_id", "INTEGER", _field("siteId")),
        Column("site_name", "TEXT", _field("siteName")),
        Column("subject_status", "TEXT", _field("subjectStatus")),
        *_common(),
    ),
)
VISITS = EntitySpec(
    "visits",
    "visits",
    "visitId",
    "visit_id",
    (
        Column("subject_id", "INTEGER", _field("subjectId")),
        Column("subject_key", "TEXT", _field("subjectKey")),
        Column("interval_id", "INTEGER", _field("intervalId")),
        Column("interval_name", "TEXT", _field("intervalName")),
        Column("visit_date", "TEXT", _field("visitDate")),
        *_common(),
    ),
)
QUERIES = EntitySpec(
    "queries",
    "queries",
    "annotationId",
    "annotation_id",
    (
        Column("subject_key", "TEXT", _field("subjectKey")),
        Column("record_id", "INTEGER", _field("recordId")),
        Column("variable", "TEXT", _field("variable")),
        Column("annotation_type", "TEXT", _field("annotationType")),
        Column("is_open", "INTEGER", query_open),
        *_common(deleted=False),
    ),
)
FORMS = EntitySpec(
    "forms",
    "forms",
    "formId",
    "form_id",
    (
        Column("form_key", "TEXT", _field("formKey")),
        Column("form_name", "TEXT", _field("formName")),
        Column("date_modified", "TEXT", _stamp("dateModified")),
    ),
    incremental=False,
)
VARIABLES = EntitySpec(
    "variables",
    "variables",
    "variableId",
    "variable_id",
    (
        Column("form_id", "INTEGER", _field("formId")),
        Column("form_key", "TEXT", _field("formKey")),
        Column("variable_name", "TEXT", _field("variableName")),
        Column("variable_type", "TEXT", _field("variableType")),
        Column("sequence", "INTEGER", _field("sequence")),
        Column("deleted", "INTEGER NOT NULL", _flag("deleted")),
        Column("date_modified", "TEXT", _stamp("dateModified")),
    ),
    incremental=False,
)

#: Synced incrementally, in this order.
INCREMENTAL = (SUBJECTS, VISITS, RECORDS, QUERIES)
#: Study structure: small, re-listed whole each run (the API has no deletes to miss there).
STRUCTURE = (FORMS, VARIABLES)
ENTITIES = {spec.name: spec for spec in (*INCREMENTAL, *STRUCTURE)}


def table_ddl(spec: EntitySpec) -> str:
    cols = ",\n  ".join(f"{c.name} {c.sql_type}" for c in spec.columns)
    return (
        f"CREATE TABLE IF NOT EXISTS {spec.name} (\n  study_key TEXT NOT NULL,\n"
        f"  {spec.id_column} INTEGER NOT NULL,\n  {cols},\n  raw TEXT NOT NULL,\n"
        f"  PRIMARY KEY (study_key, {spec.id_column})\n) WITHOUT ROWID"
    )


def _v1(conn: sqlite3.Connection) -> None:
    for spec in ENTITIES.values():
        conn.execute(table_ddl(spec))
    # Not executescript: it commits first, and a migration must be one transaction.
    ddl = """
        CREATE INDEX IF NOT EXISTS records_by_form ON records (study_key, form_key);
        CREATE INDEX IF NOT EXISTS records_by_subject ON records (study_key, subject_key);
        CREATE INDEX IF NOT EXISTS visits_by_subject ON visits (study_key, subject_key);
        CREATE INDEX IF NOT EXISTS queries_by_subject ON queries (study_key, subject_key);
        CREATE TABLE IF NOT EXISTS sync_state (
            study_key TEXT NOT NULL,
            entity TEXT NOT NULL,
            watermark TEXT,
            last_success TEXT,
            row_count INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (study_key, entity)
        ) WITHOUT ROWID;
        -- Bumped whenever a form's records change, so snapshots reuse unchanged form files.
        CREATE TABLE IF NOT EXISTS form_versions (
            study_key TEXT NOT NULL,
            form_key TEXT NOT NULL,
            version INTEGER NOT NULL,
            PRIMARY KEY (study_key, form_key)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS sync_runs (
            run_id INTEGER PRIMARY KEY AUTOINCREMENT,
            study_key TEXT NOT NULL,
            started TEXT NOT NULL,
            finished TEXT NOT NULL,
            changed INTEGER NOT NULL,
            summary TEXT NOT NULL
        );
    """
    for statement in ddl.split(";"):
        if statement.strip():
            conn.execute(statement)


def _v2(conn: sqlite3.Connection) -> None:
    """A data version per study, bumped by every merge that changed something, so a
    snapshot can tell it is stale even when the run that changed the data died after
    committing and before publishing."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS study_versions (study_key TEXT PRIMARY KEY, "
        "version INTEGER NOT NULL) WITHOUT ROWID"
    )


#: Migration n brings a database from version n-1 to n. Append, never edit.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1, 2: _v2}


class CacheError(RuntimeError):
    """The cache path or file cannot be used; the message says why and what to do."""


class SchemaTooNew(CacheError):
    pass


def check_cache_path(cache_path: str | Path) -> Path:
    """The path as a Path, or a CacheError naming what is wrong with it: an empty path, a
    folder, or a folder that is a file would otherwise fail deep in SQLite."""
    text = str(cache_path)
    if not text.strip():
        raise CacheError(
            "the cache path is empty: give a file path such as imednet-cache/imednet.sqlite"
        )
    path = Path(text)
    if path.is_dir():
        raise CacheError(
            f"the cache path {path} is a folder, not a file: give a file inside it, such as "
            f"{path / 'imednet.sqlite'}"
        )
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise CacheError(
                f"the cache path {path} lies under {parent}, which is a file, not a folder: "
                "choose another location"
            )
    return path


def _unusable(path: Path, exc: sqlite3.Error) -> CacheError:
    return CacheError(
        f"{path} is not a usable imednet-flows cache (SQLite: {exc}). If it is a damaged "
        "cache, move it aside (keep it for inspection) and run the sync again, which rebuilds "
        "it from the API; if the path is wrong, correct --cache / cache_path."
    )


def _foreign_tables(conn: sqlite3.Connection) -> list[str]:
    """Tables of a database this code did not create (a wrong path must not be migrated)."""
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    ours = {*ENTITIES, "sync_state", "form_versions", "sync_runs", "study_versions"}
    return sorted(n for n in names if n not in ours and not n.startswith("sqlite_"))


def connect(cache_path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection in WAL mode with the schema migrated (writers) or checked (readers).

    isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), so what
    commits together is visible in the code, not implied by the driver. Readers open the
    file by URI, escaped, so '#', '?' or '%' in a path name the file and not URI parts.
    """
    path = check_cache_path(cache_path)
    if readonly and not path.exists():
        raise FileNotFoundError(f"no cache at {path}; run the sync first")
    if not readonly:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if readonly:
            conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        else:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.row_factory = sqlite3.Row
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        foreign = _foreign_tables(conn) if version == 0 else []
    except sqlite3.DatabaseError as exc:
        raise _unusable(path, exc) from exc
    if foreign:
        conn.close()
        raise CacheError(
            f"{path} is a SQLite database of something else (tables: "
            f"{', '.join(foreign[:5])}); it was left untouched. Point the cache path at a new "
            "file."
        )
    if version > SCHEMA_VERSION:
        conn.close()
        raise SchemaTooNew(
            f"cache schema v{version} is newer than this code (v"
            f"{SCHEMA_VERSION}); upgrade imednet-flows"
        )
    if not readonly:
        migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"cache schema v{version} is newer than this code (v"
            f"{SCHEMA_VERSION}); upgrade imednet-flows"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[target](conn)
            conn.execute(f"PRAGMA user_version={target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION
