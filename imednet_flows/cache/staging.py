"""Staging files: where one run of one cache downloads one study before the merge.

A staging file belongs to exactly one run of one cache. Its name carries a digest of the
cache's resolved path, a digest of the study key and a random run token, and the file
records the same three inside (table ``stage_meta``). The merge refuses a file whose record
does not match the run that asks for it, so neither another cache in the same folder nor a
leftover of a crashed run can ever be merged in place of this run's download.

Leftovers of a cache's earlier runs are removed by its next run while that run holds the
cache's FileLock (see `lock`): no live run of the same cache can own them then, and files
of other caches in the folder are never touched.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from imednet_flows.cache.collections import COLLECTIONS, Collection
from imednet_flows.cache.results import StudyResult

STAGING_DIR = ".staging"
_SUFFIXES = ("", "-wal", "-shm", "-journal")


class StagingMismatch(RuntimeError):
    """A staging file was not written by the run that is merging: nothing is merged."""


@dataclass(frozen=True)
class StagedRun:
    """A fetched run as the merge sees it: whose file, for which cache and study, and the
    run's result, which the merge completes with its counts and the data version."""

    path: Path
    cache_path: Path
    study_key: str
    token: str
    collections: tuple[Collection, ...]
    result: StudyResult
    full_refresh: bool


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def cache_identity(cache_path: str | Path) -> str:
    """The cache as one absolute path, so `d/c.sqlite` and `./d/c.sqlite` are one cache."""
    return str(Path(cache_path).resolve())


def staging_dir(cache_path: str | Path) -> Path:
    return Path(cache_path).resolve().parent / STAGING_DIR


def _prefix(cache_path: str | Path) -> str:
    return f"stage-{_digest(cache_identity(cache_path))}-"


def new_token() -> str:
    return secrets.token_hex(8)


def staging_file(cache_path: str | Path, study_key: str, token: str) -> Path:
    """This run's file for this study; no study key or cache name can steer it elsewhere."""
    return staging_dir(cache_path) / f"{_prefix(cache_path)}{_digest(study_key)}-{token}.sqlite"


def create(path: Path, cache_path: str | Path, study_key: str, token: str) -> sqlite3.Connection:
    """A throwaway file for one study's run, stamped with the run it belongs to: one plain
    table per collection, appended to in arrival order (no key, no index: a page costs one
    append), no journal, no fsync (it is rebuilt from the API if anything goes wrong). A row
    may arrive twice (overlapping pages, a re-read); the later copy is the one that counts
    (`deduplicate`). Refuses to reuse an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if any(Path(f"{path}{s}").exists() for s in _SUFFIXES):
        raise StagingMismatch(f"staging file {path} already exists; it belongs to another run")
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    for spec in COLLECTIONS:
        conn.execute(f"CREATE TABLE {spec.table} ({', '.join(spec.column_names)})")
    conn.execute("CREATE TABLE deletions (entity TEXT, id INTEGER)")
    conn.execute("CREATE TABLE stage_meta (cache TEXT, study_key TEXT, token TEXT)")
    conn.execute(
        "INSERT INTO stage_meta VALUES (?, ?, ?)", (cache_identity(cache_path), study_key, token)
    )
    return conn


def deduplicate(conn: sqlite3.Connection, spec: Collection) -> None:
    """Keep the last copy of each staged row and index the table by id, so a delta's merge
    can join it with the cache (a first load needs neither: see `merge`)."""
    idc = spec.id_column
    conn.execute(
        f"DELETE FROM {spec.table} WHERE rowid NOT IN "
        f"(SELECT MAX(rowid) FROM {spec.table} GROUP BY study_key, {idc})"
    )
    conn.execute(f"CREATE UNIQUE INDEX {spec.table}_id ON {spec.table} (study_key, {idc})")


def verify(
    conn: sqlite3.Connection, schema: str, cache_path: str | Path, study_key: str, token: str
) -> None:
    """Raise unless the staging database attached as `schema` is this run's own."""
    try:
        rows = conn.execute(f"SELECT cache, study_key, token FROM {schema}.stage_meta").fetchall()
    except sqlite3.DatabaseError:
        rows = []
    expected = (cache_identity(cache_path), study_key, token)
    if [tuple(r) for r in rows] != [expected]:
        raise StagingMismatch(
            f"the staging file of study {study_key!r} for cache {cache_identity(cache_path)} "
            "was replaced or written by another run; nothing was merged and the watermark did "
            "not move. Make sure only one sync writes this cache (they share its .lock file) "
            "and run the sync again."
        )


def remove(path: Path) -> None:
    for suffix in _SUFFIXES:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def clear_leftovers(cache_path: str | Path) -> list[Path]:
    """Remove staging files earlier runs of this cache left (call it holding the lock)."""
    folder = staging_dir(cache_path)
    if not folder.is_dir():
        return []
    doomed = sorted(folder.glob(f"{_prefix(cache_path)}*"))
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed
