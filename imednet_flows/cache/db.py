"""The cache file: opening it safely, and bringing its schema up to date.

One SQLite file holds every study. WAL mode lets readers query while a sync writes;
writers are serialised by a FileLock beside the file (`lock`), never by SQLite's own busy
waiting. Every table of a collection has the same shape: ``study_key``, the id, the few
columns readers filter on, and ``raw``, the API's JSON of the row; typed tables are built
from ``raw`` by Arrow (`arrow`), so the per-row work of a sync stays small.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from imednet_flows.cache.collections import COLLECTIONS, query_open

SCHEMA_VERSION = 3

#: Tables that are not a collection's.
BOOKKEEPING = ("sync_state", "sync_runs", "study_versions", "change_log", "studies")


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


def _ours() -> set[str]:
    return {
        *(c.table for c in COLLECTIONS),
        *BOOKKEEPING,
        "form_versions",  # schema v1-v2
    }


def _foreign_tables(conn: sqlite3.Connection) -> list[str]:
    """Tables of a database this code did not create (a wrong path must not be migrated)."""
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    ours = _ours()
    return sorted(n for n in names if n not in ours and not n.startswith(("sqlite_", "_v3_")))


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
        if not path.exists():
            _create(path)
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
    if readonly and 0 < version < SCHEMA_VERSION:
        conn.close()
        raise CacheError(
            f"{path} has cache schema v{version}; this code reads v{SCHEMA_VERSION}. Run the "
            "sync once (it upgrades the cache in place, keeping every row) and read again."
        )
    if not readonly:
        migrate(conn)
    return conn


def _create(path: Path) -> None:
    """A new cache appears whole: built under a temporary name and linked into place.

    Studies of one run open the cache read-only as soon as it exists; a file still being
    created would show them an empty or half-migrated schema, and fail them. Another writer
    that links first wins, and its file is used."""
    building = path.with_name(f".{path.name}.{uuid.uuid4().hex}.new")
    try:
        conn = sqlite3.connect(building, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            migrate(conn)
        finally:
            conn.close()  # the last connection folds the WAL into the file
        try:
            os.link(building, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: a rename, unless one won
            if not path.exists():
                os.replace(building, path)
    finally:
        for leftover in (building, *(Path(f"{building}{s}") for s in ("-wal", "-shm"))):
            leftover.unlink(missing_ok=True)


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _execute_all(conn: sqlite3.Connection, ddl: str) -> None:
    """Not executescript: it commits first, and a migration must be one transaction."""
    for statement in ddl.split(";"):
        if statement.strip():
            conn.execute(statement)


# ------------------------------------------------------------------------------ migrations
# Migration n brings a database from version n-1 to n. Append, never edit: each one spells
# out the shapes of its own time, never today's collection table.

_V1 = """
CREATE TABLE IF NOT EXISTS subjects (study_key TEXT NOT NULL, subject_id INTEGER NOT NULL,
  subject_key TEXT, site_id INTEGER, site_name TEXT, subject_status TEXT,
  deleted INTEGER NOT NULL, date_created TEXT, date_modified TEXT, raw TEXT NOT NULL,
  PRIMARY KEY (study_key, subject_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS visits (study_key TEXT NOT NULL, visit_id INTEGER NOT NULL,
  subject_id INTEGER, subject_key TEXT, interval_id INTEGER, interval_name TEXT,
  visit_date TEXT, deleted INTEGER NOT NULL, date_created TEXT, date_modified TEXT,
  raw TEXT NOT NULL, PRIMARY KEY (study_key, visit_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (study_key TEXT NOT NULL, record_id INTEGER NOT NULL,
  form_key TEXT, form_id INTEGER, subject_key TEXT, subject_id INTEGER, site_id INTEGER,
  interval_id INTEGER, visit_id INTEGER, record_status TEXT, deleted INTEGER NOT NULL,
  date_created TEXT, date_modified TEXT, record_data TEXT NOT NULL, raw TEXT NOT NULL,
  PRIMARY KEY (study_key, record_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queries (study_key TEXT NOT NULL, annotation_id INTEGER NOT NULL,
  subject_key TEXT, record_id INTEGER, variable TEXT, annotation_type TEXT, is_open INTEGER,
  date_created TEXT, date_modified TEXT, raw TEXT NOT NULL,
  PRIMARY KEY (study_key, annotation_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS forms (study_key TEXT NOT NULL, form_id INTEGER NOT NULL,
  form_key TEXT, form_name TEXT, date_modified TEXT, raw TEXT NOT NULL,
  PRIMARY KEY (study_key, form_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS variables (study_key TEXT NOT NULL, variable_id INTEGER NOT NULL,
  form_id INTEGER, form_key TEXT, variable_name TEXT, variable_type TEXT, sequence INTEGER,
  deleted INTEGER NOT NULL, date_modified TEXT, raw TEXT NOT NULL,
  PRIMARY KEY (study_key, variable_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_form ON records (study_key, form_key);
CREATE INDEX IF NOT EXISTS records_by_subject ON records (study_key, subject_key);
CREATE INDEX IF NOT EXISTS visits_by_subject ON visits (study_key, subject_key);
CREATE INDEX IF NOT EXISTS queries_by_subject ON queries (study_key, subject_key);
CREATE TABLE IF NOT EXISTS sync_state (study_key TEXT NOT NULL, entity TEXT NOT NULL,
  watermark TEXT, last_success TEXT, row_count INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (study_key, entity)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS form_versions (study_key TEXT NOT NULL, form_key TEXT NOT NULL,
  version INTEGER NOT NULL, PRIMARY KEY (study_key, form_key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sync_runs (run_id INTEGER PRIMARY KEY AUTOINCREMENT,
  study_key TEXT NOT NULL, started TEXT NOT NULL, finished TEXT NOT NULL,
  changed INTEGER NOT NULL, summary TEXT NOT NULL)
"""


def _v1(conn: sqlite3.Connection) -> None:
    _execute_all(conn, _V1)


def _v2(conn: sqlite3.Connection) -> None:
    """A data version per study, bumped by every merge that changed something, so a
    snapshot can tell it is stale even when the run that changed the data died after
    committing and before publishing."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS study_versions (study_key TEXT PRIMARY KEY, "
        "version INTEGER NOT NULL) WITHOUT ROWID"
    )


# The v3 shapes, spelled out (see the note above migrations).
_V3_TABLES: dict[str, tuple[str, str, list[tuple[str, str, str]]]] = {
    # table: (id column, id type, [(column, type, SQL over the v2 row to fill it)])
    "sites": ("site_id", "INTEGER", []),
    "forms": ("form_id", "INTEGER", [("form_key", "TEXT", "form_key")]),
    "intervals": ("interval_id", "INTEGER", []),
    "variables": ("variable_id", "INTEGER", [("form_key", "TEXT", "form_key")]),
    "users": ("user_id", "TEXT", []),
    "subjects": (
        "subject_id",
        "INTEGER",
        [("subject_key", "TEXT", "subject_key"), ("deleted", "INTEGER NOT NULL", "deleted")],
    ),
    "visits": (
        "visit_id",
        "INTEGER",
        [("subject_key", "TEXT", "subject_key"), ("deleted", "INTEGER NOT NULL", "deleted")],
    ),
    "records": (
        "record_id",
        "INTEGER",
        [
            ("form_key", "TEXT", "form_key"),
            ("subject_key", "TEXT", "subject_key"),
            ("deleted", "INTEGER NOT NULL", "deleted"),
        ],
    ),
    "record_revisions": ("record_revision_id", "INTEGER", [("record_id", "INTEGER", "NULL")]),
    "queries": (
        "annotation_id",
        "INTEGER",
        [
            ("subject_key", "TEXT", "subject_key"),
            ("record_id", "INTEGER", "record_id"),
            ("is_open", "INTEGER", "is_open"),
        ],
    ),
    "codings": ("coding_id", "INTEGER", [("record_id", "INTEGER", "NULL")]),
}
_V3_INDEXES = """
CREATE INDEX IF NOT EXISTS forms_by_form_key ON forms (study_key, form_key);
CREATE INDEX IF NOT EXISTS variables_by_form_key ON variables (study_key, form_key);
CREATE INDEX IF NOT EXISTS subjects_by_subject_key ON subjects (study_key, subject_key);
CREATE INDEX IF NOT EXISTS visits_by_subject_key ON visits (study_key, subject_key);
CREATE INDEX IF NOT EXISTS records_by_form_key ON records (study_key, form_key);
CREATE INDEX IF NOT EXISTS records_by_subject_key ON records (study_key, subject_key);
CREATE INDEX IF NOT EXISTS record_revisions_by_record_id ON record_revisions (study_key, record_id);
CREATE INDEX IF NOT EXISTS queries_by_subject_key ON queries (study_key, subject_key);
CREATE INDEX IF NOT EXISTS codings_by_record_id ON codings (study_key, record_id);
-- Which rows of a study changed in which data version: Parquet snapshots rewrite only the
-- parts those rows fall in. row_id has no type affinity (ints stay ints, uuids text).
CREATE TABLE IF NOT EXISTS change_log (study_key TEXT NOT NULL, version INTEGER NOT NULL,
  collection TEXT NOT NULL, row_id, form_key TEXT);
CREATE INDEX IF NOT EXISTS change_log_by_version ON change_log (study_key, version);
-- The oldest data version the change log still fully describes, per study.
CREATE TABLE IF NOT EXISTS change_log_floor (study_key TEXT PRIMARY KEY,
  version INTEGER NOT NULL) WITHOUT ROWID;
-- Studies seen in GET /studies, for discovery (study_keys=["*"]).
CREATE TABLE IF NOT EXISTS studies (study_key TEXT PRIMARY KEY, raw TEXT NOT NULL,
  first_seen TEXT NOT NULL, last_seen TEXT NOT NULL, missing_since TEXT) WITHOUT ROWID;
DROP TABLE IF EXISTS form_versions
"""


def _v3(conn: sqlite3.Connection) -> None:
    """Every collection of the study, each table slimmed to what readers filter on plus
    the API's JSON; typed columns now come from that JSON. Existing rows are kept (the old
    tables are rebuilt from their own columns); collections new to the cache are fetched
    whole by the next run, as no watermark exists for them."""
    existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.create_function(
        "_query_open", 1, lambda raw: query_open(orjson.loads(raw)), deterministic=True
    )
    for table, (id_column, id_type, columns) in _V3_TABLES.items():
        cols = "".join(f"  {name} {sql_type},\n" for name, sql_type, _ in columns)
        ddl = (
            f"CREATE TABLE _v3_{table} (\n  study_key TEXT NOT NULL,\n  {id_column} {id_type} "
            f"NOT NULL,\n{cols}  raw TEXT NOT NULL,\n  PRIMARY KEY (study_key, {id_column})\n"
            ") WITHOUT ROWID"
        )
        conn.execute(ddl)
        if table in existing:
            names = ", ".join(["study_key", id_column, *(c[0] for c in columns), "raw"])
            sources = [
                "_query_open(raw)" if (table, c[0]) == ("queries", "is_open") else c[2]
                for c in columns
            ]
            selected = ", ".join(["study_key", id_column, *sources, "raw"])
            conn.execute(f"INSERT INTO _v3_{table} ({names}) SELECT {selected} FROM {table}")
            conn.execute(f"DROP TABLE {table}")
        conn.execute(f"ALTER TABLE _v3_{table} RENAME TO {table}")
    _execute_all(conn, _V3_INDEXES)


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1, 2: _v2, 3: _v3}


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
            # Read again under the write lock: another writer that opened the same old
            # cache may have run this step while we waited, and running it twice would
            # fail on its tables or set the version back.
            if conn.execute("PRAGMA user_version").fetchone()[0] >= target:
                conn.execute("COMMIT")
                continue
            MIGRATIONS[target](conn)
            conn.execute(f"PRAGMA user_version={target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION
