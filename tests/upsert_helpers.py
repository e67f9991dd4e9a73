"""What the study shows after an upsert, compared with what was posted, whichever form the
server reads values back in: typed JSON as posted, or text as the real API sends it
(`1` -> "1", `true` -> "true", null -> "")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def same_value(posted: Any, shown: Any) -> bool:
    if not isinstance(shown, str) or isinstance(posted, str):
        return bool(shown == posted)
    if posted is None:
        return shown == ""
    if isinstance(posted, bool):
        return shown.strip().lower() == str(posted).lower()
    try:
        return float(shown) == float(posted)
    except (TypeError, ValueError):
        return False


def shows(record_data: Mapping[str, Any], posted: Mapping[str, Any]) -> bool:
    """Every posted variable reads back as its posted value."""
    return all(
        name in record_data and same_value(v, record_data[name]) for name, v in posted.items()
    )
