"""Schema migrations when two writers open the same old cache at the same moment."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from imednet_flows.cache import db
from imednet_flows.cache.db import SCHEMA_VERSION, connect, migrate


def test_two_writers_migrating_one_old_cache_run_each_step_once(tmp_path: Path) -> None:
    """Writer B reads the old version, then waits for the write lock while writer A runs
    every migration and writes; B must see A's work under the lock: no step runs again
    (a second v3 rebuild copies every row of a large cache while holding the lock) and no
    row is lost."""
    path = tmp_path / "cache.sqlite"
    sqlite3.connect(path).close()  # an empty file: schema v0
    late = sqlite3.connect(path, isolation_level=None)
    late.execute("PRAGMA busy_timeout=10000")
    overtaken: list[bool] = []
    rebuilt: list[str] = []

    def other_writer_first(statement: str) -> None:
        if overtaken and statement.lstrip().startswith(("CREATE", "ALTER", "DROP", "INSERT")):
            rebuilt.append(statement.strip().splitlines()[0])
        if statement == "BEGIN IMMEDIATE" and not overtaken:
            overtaken.append(True)
            first = connect(path)  # writer A migrates the whole way, then writes
            with first:
                first.execute("BEGIN IMMEDIATE")
                first.execute("INSERT INTO sites (study_key, site_id, raw) VALUES ('S', 1, '{}')")
                first.execute("COMMIT")
            first.close()

    late.set_trace_callback(other_writer_first)
    assert migrate(late) == SCHEMA_VERSION
    late.set_trace_callback(None)
    assert overtaken, "the interleaving under test never happened"
    assert rebuilt == [], f"migration steps ran twice: {rebuilt[:3]}"
    assert late.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    late.close()
    conn = connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [tuple(r) for r in conn.execute("SELECT study_key, site_id FROM sites")] == [("S", 1)]
    conn.close()


def test_a_new_cache_is_never_seen_half_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Studies of one run open the cache read-only as soon as it exists, while the first
    merge creates it. At every step of the creation a reader must find no file or the whole
    schema: a half-migrated one failed the study ("has cache schema v2")."""
    path = tmp_path / "cache.sqlite"
    seen: list[str] = []

    def read_now() -> None:
        if not path.exists():
            seen.append("none")
            return
        conn = connect(path, readonly=True)  # a half-created schema raises here
        seen.append(f"v{conn.execute('PRAGMA user_version').fetchone()[0]}")
        conn.close()

    def watched(step: Callable[[sqlite3.Connection], None]) -> Callable[..., None]:
        def run(conn: sqlite3.Connection) -> None:
            read_now()
            step(conn)
            read_now()

        return run

    for version, step in list(db.MIGRATIONS.items()):
        monkeypatch.setitem(db.MIGRATIONS, version, watched(step))
    writer = connect(path)
    read_now()
    writer.close()
    assert seen == ["none"] * (2 * SCHEMA_VERSION) + [f"v{SCHEMA_VERSION}"]
    assert not list(tmp_path.glob(".cache.sqlite.*")), "the file built under another name is left"
