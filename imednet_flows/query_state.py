"""Whether a query is open: its latest comment decides, as in the SDK.

Stated once, here, for the open-queries report (`queries.py`) and the cache's `is_open`
column (`cache/collections.py`), so a query open in one is open in the other. No Prefect
and no cache imports: both sides depend on this module, never on each other.
"""

from __future__ import annotations

from typing import Any


def latest_comment(query: dict[str, Any]) -> dict[str, Any] | None:
    """The comment with the highest ``sequence`` (comments may arrive in any order)."""
    comments = query.get("queryComments") or []
    return max(comments, key=lambda c: c.get("sequence") or 0) if comments else None


def query_open(query: dict[str, Any]) -> int | None:
    """1 open, 0 closed, None without comments (open or closed cannot be told); an int, not
    a bool, because SQLite stores it."""
    latest = latest_comment(query)
    if latest is None:
        return None
    return 0 if latest.get("closed") else 1
