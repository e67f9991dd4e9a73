"""Comparing the cache with the emulator's truth, row for row, for every collection."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from imednet_flows.cache.collections import COLLECTIONS, collection
from imednet_flows.emulator import EmulatorServer


def cache_rows(cache_path: Path, study_key: str, name: str) -> dict[Any, dict]:
    """A collection's cached rows of one study, id -> the API's JSON, read without locks."""
    spec = collection(name)
    conn = sqlite3.connect(f"{Path(cache_path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {
            row[0]: json.loads(row[1])
            for row in conn.execute(
                f"SELECT {spec.id_column}, raw FROM {spec.table} WHERE study_key=?", (study_key,)
            )
        }
    finally:
        conn.close()


def assert_cache_equals_truth(
    server: EmulatorServer, cache_path: Path, study_key: str, skipped: tuple[str, ...] = ()
) -> None:
    """Every collection of the study holds exactly the server's rows (`skipped` ones aside)."""
    for spec in COLLECTIONS:
        if spec.name in skipped:
            continue
        truth = {r[spec.id_field]: r for r in server.emulator.rows(study_key, spec.route)}
        cached = cache_rows(cache_path, study_key, spec.name)
        assert cached.keys() == truth.keys(), (
            f"{spec.name}: missing {sorted(truth.keys() - cached.keys())[:10]}, "
            f"extra {sorted(cached.keys() - truth.keys())[:10]}"
        )
        differing = [i for i in truth if truth[i] != cached[i]]
        assert not differing, f"{spec.name}: stale rows {differing[:10]}"


def integrity_ok(cache_path: Path) -> bool:
    conn = sqlite3.connect(cache_path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
