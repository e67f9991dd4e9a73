"""Switches that make the emulator break, on purpose, what the sync assumes of the API.

A real server (an iMednet environment, a proxy, a future API version) can send a
clock in local time, miscount its rows, cap its pages or ignore a filter term,
and every run would still look green while the cache went wrong. These
switches make each of those servers reproducible, so each check of
`imednet_flows.edc.server_checks` can be shown to fail loudly. They apply to
list responses only, through one hook in the app's `_list`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from typing import Any

from imednet_flows.emulator.checks import is_int, is_number
from imednet_flows.emulator.entities import Entity
from imednet_flows.filter_syntax import (
    FilterError,
    parse_dnf,
    parse_timestamp,
    render_term,
)
from imednet_flows.timestamps import format_timestamp

TIMESTAMP_MODES = ("", "missing", "garbage")
#: What a server sends when its clock is formatted for people rather than for the contract.
GARBAGE_TIMESTAMP = "06/05/2025 09:12:09 PM"
#: In `ignore_filters`, the listed entity's own id field (recordId, subjectId, ...).
ID_ALIAS = "id"

Payload = dict[str, Any]


@dataclass
class Quirks:
    """All off by default. `clock_offset` > 0 puts `metadata.timestamp` ahead of the
    emulator's clock, < 0 behind it (a server answering in local time west of UTC)."""

    #: "" honest, "missing" (no metadata.timestamp), "garbage" (not a timestamp).
    timestamp: str = ""
    clock_offset: float = 0.0
    #: Added to pagination.totalElements (rows and pages stay as they are).
    total_elements_offset: int = 0
    #: Serve at most this many rows per page (0: no cap) ...
    page_size_cap: int = 0
    #: ... and report the size that was asked rather than the cap.
    page_size_lie: bool = False
    #: Filter terms on these attributes are dropped before filtering ("id": the id field).
    ignore_filters: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.timestamp not in TIMESTAMP_MODES:
            raise ValueError(
                f"quirks.timestamp must be one of {TIMESTAMP_MODES}, got {self.timestamp!r}"
            )
        if not is_number(self.clock_offset):
            raise ValueError(f"quirks.clock_offset must be a number, got {self.clock_offset!r}")
        for name in ("total_elements_offset", "page_size_cap"):
            if not is_int(value := getattr(self, name)):
                raise ValueError(f"quirks.{name} must be an integer, got {value!r}")
        if self.page_size_cap < 0:
            raise ValueError("quirks.page_size_cap must be >= 0 (0: no cap)")
        if not isinstance(self.page_size_lie, bool):
            raise ValueError("quirks.page_size_lie must be true or false")
        if not isinstance(self.ignore_filters, list | tuple) or not all(
            isinstance(a, str) and a for a in self.ignore_filters
        ):
            raise ValueError("quirks.ignore_filters must be a list of attribute names")
        self.ignore_filters = list(self.ignore_filters)

    @classmethod
    def from_json(cls, value: Any) -> Quirks:
        """From the admin route's JSON object; unknown names are refused, not ignored."""
        if isinstance(value, Quirks):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"quirks must be an object, got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown quirks {unknown}; known: {sorted(known)}")
        return cls(**value)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def active(self) -> bool:
        return self != Quirks()


def listing_quirks(
    quirks: Quirks, entity: Entity, filter_text: str, size: int
) -> tuple[str, int, Callable[[Payload], Payload]]:
    """The filter and page size to serve with, and what to do to the finished payload."""
    if not quirks.active:
        return filter_text, size, _unchanged
    asked = size
    if quirks.page_size_cap:
        size = min(size, quirks.page_size_cap)
    if quirks.ignore_filters and filter_text:
        ignored = {entity.id_field if a == ID_ALIAS else a for a in quirks.ignore_filters}
        filter_text = _without_terms(filter_text, ignored)

    def finish(payload: Payload) -> Payload:
        metadata, pagination = payload["metadata"], payload["pagination"]
        if quirks.timestamp == "missing":
            del metadata["timestamp"]
        elif quirks.timestamp == "garbage":
            metadata["timestamp"] = GARBAGE_TIMESTAMP
        elif quirks.clock_offset:
            shifted = parse_timestamp(metadata["timestamp"]) + timedelta(
                seconds=quirks.clock_offset
            )
            metadata["timestamp"] = format_timestamp(shifted)
        if quirks.page_size_lie and size != asked:
            pagination["size"] = asked
            pagination["totalPages"] = math.ceil(pagination["totalElements"] / asked)
        pagination["totalElements"] += quirks.total_elements_offset
        return payload

    return filter_text, size, finish


def _unchanged(payload: Payload) -> Payload:
    return payload


def _without_terms(filter_text: str, attributes: set[str]) -> str:
    """The filter with every term on `attributes` dropped; a group left empty matches all."""
    try:
        groups = parse_dnf(filter_text, "filter")
    except FilterError:
        return filter_text  # the listing reports it as the API would
    kept = [[render_term(t) for t in group if t.attribute not in attributes] for group in groups]
    if any(not group for group in kept):
        return ""
    return ",".join(";".join(group) for group in kept)
