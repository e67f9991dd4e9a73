"""The API's timestamps: one parser and one canonical form for the whole project.

iMednet sends 'YYYY-MM-DD HH:MM:SS' (UTC, no zone) and accepts ISO 8601 with a zone in
filters. Watermarks, filters, checks and typed tables all compare instants, so every
timestamp goes through here: parsed to an aware UTC datetime, or written in the canonical
fixed-width form whose string order is time order. Stdlib only.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

_TIMESTAMP_RE: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[ T]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?(Z|[+-][0-9]{2}:[0-9]{2})?)?"
)


class BadTimestamp(Exception):
    """Why a timestamp was rejected; callers word the FilterError for their context."""


def parse_instant(value: str) -> tuple[datetime, bool]:
    """Parse `value` to a UTC datetime plus "has a non-zero sub-second part".

    The flag is computed from the digits, not from the microseconds kept in the datetime, so a
    fraction below one microsecond still counts when deciding how it compares to whole seconds.
    Beyond the contract's forms, the space form may carry a fraction and an offset too: that is
    what `str(datetime)` produces when the SDK sends a datetime unquoted.
    """
    match = _TIMESTAMP_RE.fullmatch(value)
    if match is None:
        raise BadTimestamp(
            "accepted forms are YYYY-MM-DD HH:MM:SS, "
            "YYYY-MM-DDTHH:MM:SS[.fff](Z|+hh:mm|-hh:mm) and YYYY-MM-DD"
        )
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    digits = fraction or ""
    try:
        parsed = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int(digits[:6].ljust(6, "0")),
            tzinfo=_zone(zone),
        ).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise BadTimestamp(str(exc)) from None
    return parsed, digits.strip("0") != ""


def _zone(zone: str | None) -> timezone:
    """A missing zone means UTC: the API's canonical form carries none and is UTC by contract."""
    if zone is None or zone == "Z":
        return UTC
    sign = -1 if zone[0] == "-" else 1
    offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    if offset >= timedelta(hours=24) or int(zone[4:6]) >= 60:
        raise ValueError(f"offset {zone} out of range")
    return timezone(sign * offset)


def format_timestamp(dt: datetime) -> str:
    """Canonical API form 'YYYY-MM-DD HH:MM:SS' in UTC; naive input is taken as UTC.

    Built field by field rather than with strftime because glibc's `%Y` does not pad years
    below 1000, and a fixed-width form is what makes string order equal chronological order.
    """
    utc = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d} "
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}"
    )


def canonical_ts(value: Any) -> str | None:
    """Any API timestamp form as 'YYYY-MM-DD HH:MM:SS' UTC, or None for blanks and garbage."""
    if not value or not isinstance(value, str):
        return None
    if len(value) == 19 and value[10] == " " and _CANONICAL.fullmatch(value):
        return value  # the API's usual form: nothing to convert
    try:
        return format_timestamp(parse_instant(value.strip())[0])
    except BadTimestamp:
        return None


def to_datetime(value: Any) -> datetime | None:
    """An aware UTC datetime for any API timestamp form; None for blanks and garbage."""
    if not value or not isinstance(value, str):
        return None
    try:
        return parse_instant(value.strip())[0]
    except BadTimestamp:
        return None


_CANONICAL: Final = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
