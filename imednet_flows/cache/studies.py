"""Which studies a sync covers: given keys, or every study the API key can see.

With discovery (``study_keys=["*"]``) each run lists ``GET /studies`` and keeps what it saw
in the cache's ``studies`` table. A study that drops out of the listing is reported (it may
be archived, or the key may have lost access) and its rows stay in the cache, unless the
caller asks to prune it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

import orjson

from imednet_flows.cache import store
from imednet_flows.cache.collections import COLLECTIONS
from imednet_flows.edc import paging
from imednet_flows.edc.client import ImednetClient
from imednet_flows.edc.errors import ImednetFlowsError

ALL = "*"


class StudySelectionError(ImednetFlowsError, ValueError):
    """The study keys asked for cannot be synced as given; nothing was written."""


def wants_discovery(study_keys: list[str]) -> bool:
    """True for ["*"]; refuses "*" mixed with explicit keys and blank keys."""
    keys = [k for k in study_keys]
    if ALL in keys:
        if len(keys) > 1:
            raise StudySelectionError(
                'study_keys mixes "*" (every study the key can see) with explicit keys '
                f'{[k for k in keys if k != ALL]}; give either ["*"] or the keys'
            )
        return True
    for key in keys:
        if not key.strip():
            raise StudySelectionError(
                "a study key is empty; give it as iMednet shows it, e.g. PHX-101"
            )
    return False


def list_studies(client: ImednetClient) -> list[dict[str, Any]]:
    """Every study the API key can see (GET /studies, all pages); none is an error, raised
    before anything is written."""
    studies = [s for s in paging.list_studies(client) if isinstance(s, dict)]
    if not any(isinstance(s.get("studyKey"), str) and s["studyKey"].strip() for s in studies):
        raise _none_visible()
    return studies


def _none_visible() -> StudySelectionError:
    return StudySelectionError(
        "the API key can see no study (GET /studies is empty); nothing was written. Check "
        "the key's study permissions in iMednet, or give study keys explicitly."
    )


@dataclass
class Discovery:
    visible: list[str] = field(default_factory=list)
    #: Listed for the first time in this cache.
    new: list[str] = field(default_factory=list)
    #: Known to this cache (seen before, or with cached rows) but not listed now.
    missing: list[str] = field(default_factory=list)


def cached_study_keys(conn: sqlite3.Connection) -> set[str]:
    keys = {r[0] for r in conn.execute("SELECT study_key FROM studies")}
    keys |= {r[0] for r in conn.execute("SELECT study_key FROM sync_state")}
    return keys


def record_listing(conn: sqlite3.Connection, studies: list[dict[str, Any]], now: str) -> Discovery:
    """Keep the listing in the cache (inside the caller's transaction) and compare it with
    what the cache knows."""
    if not studies:
        raise _none_visible()
    listed: dict[str, dict[str, Any]] = {}
    for study in studies:
        key = study.get("studyKey")
        if isinstance(key, str) and key.strip():
            listed[key] = study
    known_before = {r[0] for r in conn.execute("SELECT study_key FROM studies")}
    result = Discovery(visible=sorted(listed))
    result.new = sorted(set(listed) - known_before)
    result.missing = sorted(cached_study_keys(conn) - set(listed))
    conn.executemany(
        "INSERT INTO studies (study_key, raw, first_seen, last_seen, missing_since) "
        "VALUES (?, ?, ?, ?, NULL) ON CONFLICT (study_key) DO UPDATE SET raw=excluded.raw, "
        "last_seen=excluded.last_seen, missing_since=NULL",
        [(k, orjson.dumps(s).decode(), now, now) for k, s in listed.items()],
    )
    conn.executemany(
        "UPDATE studies SET missing_since=COALESCE(missing_since, ?) WHERE study_key=?",
        [(now, k) for k in result.missing],
    )
    return result


def prune(conn: sqlite3.Connection, study_keys: list[str]) -> int:
    """Delete every cached row of these studies (inside the caller's transaction)."""
    tables = [
        *(c.table for c in COLLECTIONS),
        "sync_state",
        "study_versions",
        "change_log",
        "change_log_floor",
        "studies",
    ]
    return sum(store.forget_study(conn, key, tables) for key in study_keys)
