"""Whether the rows of an interrupted POST /records are in the study.

When a POST gets no answer the API may have applied it anyway, and resending blindly
writes the rows twice. So the target records are read back and compared with what was
posted. A row is `landed` when its target shows the posted values, `absent` only when
nothing it aims at changed since the POST began (a job that applied it would have left that
trace), and `undecided` otherwise: those are reported, never guessed.

Pure functions over records already read: the reading is done in `batches`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from imednet_flows.edc.validation import (
    FORM_FIELDS,
    RECORD_FIELDS,
    SUBJECT_FIELDS,
    Mode,
    RecordItem,
)
from imednet_flows.timestamps import to_datetime

Row = dict[str, Any]


def values_match(posted: Any, seen: Any) -> bool:
    """Whether a read-back value is the posted one. The emulator echoes typed JSON as
    posted; an API that returns everything as strings ("5", "true") matches too."""
    if posted is None or posted == "":
        return seen is None or seen == ""
    if isinstance(posted, bool):
        if isinstance(seen, bool):
            return seen is posted
        return isinstance(seen, str) and seen.strip().lower() == str(posted).lower()
    if isinstance(posted, int | float):
        if isinstance(seen, bool):
            return False
        if isinstance(seen, int | float):
            return seen == posted
        return isinstance(seen, str) and _as_float(seen) == float(posted)
    if isinstance(posted, str) and isinstance(seen, int | float) and not isinstance(seen, bool):
        return _as_float(posted) == float(seen)
    return bool(seen == posted)


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def data_contains(record_data: Mapping[str, Any] | None, posted: Mapping[str, Any]) -> bool:
    data = record_data or {}
    return all(name in data and values_match(v, data[name]) for name, v in posted.items())


def at_or_after(stamp: Any, since: datetime) -> bool | None:
    """None when the API gave no usable timestamp: then nothing can be concluded."""
    moment = to_datetime(stamp)
    return None if moment is None else moment >= since


@dataclass(frozen=True)
class Landing:
    """Each row checked (an index into the list) is in exactly one of three sets.

    `absent` is a strong claim: no record the row aims at has changed since the POST began,
    so a job that applied the row would have left a trace and there is none. A row whose
    target did change, but not to the posted values, is `undecided`, not absent: the values
    may read back in another form, or another user may have edited it since.
    """

    landed: frozenset[int]
    absent: frozenset[int]
    undecided: frozenset[int]


def _matches(record: Row, refs: list[tuple[str, Any]]) -> bool:
    return all(record.get(attr) == value for attr, value in refs)


def landed_rows(
    items: list[RecordItem],
    records: list[Row],
    since: datetime,
    interval_ids: Mapping[str, int] | None = None,
) -> Landing:
    """Compare what was posted with the records read back after an interrupted POST.

    `records` are the records the rows aim at that changed since `since` (the server's
    clock when the POST began); older ones may be among them and are no trace.

    Rows aimed at the same record (same recordId, or the same subject/form/interval slot)
    are judged together against their merged data, later rows winning, because that is
    what the record shows once they are applied. A new record is one-to-one: each record
    created since the POST began can account for one row only.
    """
    landed: set[int] = set()
    absent: set[int] = set()
    undecided: set[int] = set()
    groups: dict[tuple[Any, ...], list[int]] = {}
    new_rows: list[int] = []
    for i, item in enumerate(items):
        mode = item.mode
        if mode is Mode.REGISTER:
            undecided.add(i)  # no subject key: nothing to find the new subject by
        elif mode is Mode.NEW_RECORD:
            new_rows.append(i)
        else:
            key = _slot_key(item, interval_ids or {})
            if key is None:
                undecided.add(i)
            else:
                groups.setdefault(key, []).append(i)
    claimed: set[int] = set()
    for key, members in groups.items():
        merged: dict[str, Any] = {}
        for i in members:
            merged.update(items[i].data)
        verdict = _slot_verdict(key, records, merged, since)
        if isinstance(verdict, int):
            landed.update(members)
            claimed.add(verdict)
        else:
            (absent if verdict is ABSENT else undecided).update(members)
    matched, traced = _match_new_records(items, new_rows, records, since, claimed)
    landed |= matched
    undecided |= traced - matched
    absent |= set(new_rows) - matched - traced
    return Landing(frozenset(landed), frozenset(absent), frozenset(undecided))


#: `_slot_verdict` when no target record changed since the POST.
ABSENT = "absent"
#: `_slot_verdict` when a target changed, but cannot be shown to carry the posted values.
UNDECIDED = "undecided"


def _slot_key(item: RecordItem, interval_ids: Mapping[str, int]) -> tuple[Any, ...] | None:
    """What identifies the target record: its id/oid, or subject+form+interval."""
    if item.mode is Mode.UPDATE_EXISTING:
        return ("record", *item.refs(*RECORD_FIELDS))
    interval_id = item.interval_id
    if interval_id is None:
        interval_id = interval_ids.get(str(item.interval_name))
        if interval_id is None:
            return None
    return (
        "slot",
        tuple(item.refs(*SUBJECT_FIELDS)),
        tuple(item.refs(*FORM_FIELDS)),
        ("intervalId", interval_id),
    )


def _slot_verdict(
    key: tuple[Any, ...], records: list[Row], merged: dict[str, Any], since: datetime
) -> int | str:
    """The recordId that shows the merged data, else ABSENT or UNDECIDED."""
    refs = list(key[1:]) if key[0] == "record" else [*key[1], *key[2], key[3]]
    traced = False
    for record in (r for r in records if _matches(r, refs)):
        fresh = at_or_after(record.get("dateModified"), since)
        if fresh is False:
            continue  # unchanged since the POST: no trace of it
        if fresh and not record.get("deleted") and data_contains(record.get("recordData"), merged):
            return int(record["recordId"])
        traced = True  # changed since (or no usable date), but not to these values
    return UNDECIDED if traced else ABSENT


def _match_new_records(
    items: list[RecordItem],
    rows: list[int],
    records: list[Row],
    since: datetime,
    claimed: set[int],
) -> tuple[set[int], set[int]]:
    """A maximum matching rows -> records created since the POST began (Kuhn's algorithm):
    greedy matching could give row A the record that only row B's data fits.

    Returns the matched rows, and the rows for whose subject and form a record was created
    since (or has no usable date) that no row accounts for: a trace, so not absent.
    """
    options: dict[int, list[int]] = {}
    candidates: dict[int, set[int]] = {}
    for i in rows:
        item = items[i]
        refs = [*item.refs(*SUBJECT_FIELDS), *item.refs(*FORM_FIELDS)]
        options[i] = []
        candidates[i] = set()
        for record in records:
            if record["recordId"] in claimed or not _matches(record, refs):
                continue
            fresh = at_or_after(record.get("dateCreated"), since)
            if fresh is False:
                continue
            candidates[i].add(int(record["recordId"]))
            if (
                fresh
                and not record.get("deleted")
                and data_contains(record.get("recordData"), item.data)
            ):
                options[i].append(int(record["recordId"]))
    owner: dict[int, int] = {}

    def assign(i: int, seen: set[int]) -> bool:
        for record_id in options[i]:
            if record_id in seen:
                continue
            seen.add(record_id)
            if record_id not in owner or assign(owner[record_id], seen):
                owner[record_id] = i
                return True
        return False

    matched = {i for i in rows if assign(i, set())}
    unexplained = {i for i in rows if candidates[i] - set(owner)}
    return matched, unexplained


def since_for(moment: datetime) -> datetime:
    """The API's dates have one-second resolution: a POST that began at 12:00:00.9 may have
    its records stamped 12:00:00, so comparisons start at the whole second."""
    utc = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return utc.replace(microsecond=0)
