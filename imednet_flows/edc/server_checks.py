"""What the sync assumes of the server, checked on the responses it already has.

The cache is only as right as the server's answers. A server (a real iMednet
environment, a proxy, a future API version) that answers in local time, miscounts
its rows, caps its pages or ignores a filter term would not make a run fail: the
run would store a wrong cache and move its watermark past what it skipped. Each
check here turns one such assumption into a loud `ServerContractError` that names
the request, the ids or timestamps involved and what was expected, before anything
is merged. The checks read only what a response already holds, so they cost no
requests and run on every page; `imednet-flows doctor` runs the same functions.

Every check compares within one response, or a count with the range it was split
from: rows legitimately change between two requests (the sync re-reads with keyset
paging when totals shrink), so no check compares two listings of the same rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any, NoReturn, TypeVar

from imednet_flows.edc.errors import ImednetFlowsError
from imednet_flows.timestamps import BadTimestamp, canonical_ts, format_timestamp, parse_instant

#: How far `metadata.timestamp` may run ahead of this machine's clock. A watermark in the
#: future skips every change made before the clock catches up; up to the sync's overlap
#: (30 s by default) is re-read anyway, and synchronised clocks differ by far less.
MAX_CLOCK_AHEAD = 60.0
#: How much newer than `metadata.timestamp` a row in the same response may be: a server
#: that stamps the response before it runs the query can list a row changed meanwhile.
#: A server on another clock (local time against UTC) is off by whole hours.
ROW_CLOCK_SLACK = 5.0

# The assumptions, as `imednet-flows doctor` lists them.
CLOCK = "server clock"
TOTALS = "totals match pages"
PAGE_SIZE = "page size honoured"
SINCE = "dateModified>= honoured"
ID_FILTER = "id filters honoured"

_T = TypeVar("_T")

ADVICE = (
    "Nothing this study's run fetched was saved and its watermarks did not move. Run "
    "`imednet-flows doctor "
    "--study <key>` to list every assumption this server breaks; if the API is reached "
    "through a proxy or gateway, check that it passes page, size, filter and the response "
    "body through unchanged, otherwise report it to iMednet support with this message"
)


class ServerContractError(ImednetFlowsError):
    """The server broke an assumption the sync relies on; what it sent is not applied."""

    def __init__(self, check: str, request: str, problem: str) -> None:
        self.check = check
        self.request = request
        self.problem = problem
        super().__init__(
            f"the API broke an assumption the sync relies on ({check}): {request} {problem}. "
            f"{ADVICE}."
        )


@dataclass(frozen=True)
class Asked:
    """One list request as sent, so a broken assumption can say which request broke it."""

    path: str
    page: int = 0
    size: int = 0
    filter: str | None = None

    @classmethod
    def of(cls, path: str, params: dict[str, Any]) -> Asked:
        return cls(
            path,
            int(params.get("page", 0)),
            int(params.get("size", 0)),
            params.get("filter"),
        )

    def __str__(self) -> str:
        parts = [f"page {self.page}", f"size {self.size}"]
        if self.filter:
            parts.append(f"filter {self.filter}")
        return f"GET {self.path} ({', '.join(parts)})"


@dataclass(frozen=True)
class Listing:
    """A checked list response."""

    items: list[dict[str, Any]]
    total_pages: int
    total_elements: int
    asked: Asked
    #: `metadata.timestamp` as canonical UTC ('YYYY-MM-DD HH:MM:SS'); None only from
    #: `inspect_listing` when the clock check failed.
    server_now: str | None


def check_listing(
    payload: Any,
    asked: Asked,
    id_field: str | None = None,
    now: datetime | None = None,
    max_ahead: float = MAX_CLOCK_AHEAD,
    stamp_field: str = "dateModified",
) -> Listing:
    """Every per-response assumption: envelope, page size, totals, the server's clock.
    `stamp_field` is the rows' change timestamp (dateCreated for revisions, ...)."""
    listing = inspect_listing(payload, asked, _raise, id_field, now, max_ahead, stamp_field)
    assert listing is not None  # every failure raised
    return listing


def inspect_listing(
    payload: Any,
    asked: Asked,
    failed: Callable[[ServerContractError], None],
    id_field: str | None = None,
    now: datetime | None = None,
    max_ahead: float = MAX_CLOCK_AHEAD,
    stamp_field: str = "dateModified",
) -> Listing | None:
    """The same checks, each failure handed to `failed`; checks that do not depend on a
    failed one still run, so `imednet-flows doctor` can list every assumption a response
    breaks. None when the envelope is unusable."""

    def attempt(check: Callable[..., _T], *args: Any) -> _T | None:
        try:
            return check(*args)
        except ServerContractError as error:
            failed(error)
            return None

    envelope = attempt(check_envelope, payload, asked)
    if envelope is not None:
        items, total_pages, total, size = envelope
        attempt(check_page_size, size, len(items), asked)
        attempt(check_totals, total_pages, total, size, len(items), asked)
    metadata = payload.get("metadata") if isinstance(payload, dict) else None
    server_now = attempt(check_timestamp, metadata, asked, now, max_ahead)
    if envelope is None:
        return None
    if server_now is not None:
        attempt(check_rows_not_after, items, server_now, asked, id_field, stamp_field)
    return Listing(items, total_pages, total, asked, server_now)


def _raise(error: ServerContractError) -> NoReturn:
    raise error


def check_envelope(payload: Any, asked: Asked) -> tuple[list[dict[str, Any]], int, int, int]:
    """The rows, totalPages, totalElements and size of a list response."""
    if not isinstance(payload, dict):
        raise ServerContractError(
            TOTALS, str(asked), f"answered a {type(payload).__name__}, not a list envelope"
        )
    items = payload.get("data")
    if not isinstance(items, list):
        raise ServerContractError(TOTALS, str(asked), "answered without a data list")
    total_pages, total, size = check_pagination(payload.get("pagination"), asked)
    return items, total_pages, total, size


def check_pagination(pagination: Any, asked: Asked) -> tuple[int, int, int]:
    """totalPages, totalElements and size, which the sync pages and counts by."""
    names = ("totalPages", "totalElements", "size")
    if not isinstance(pagination, dict):
        raise ServerContractError(
            TOTALS,
            str(asked),
            "answered without pagination; the sync stops by pagination.totalPages and "
            "counts rows by pagination.totalElements",
        )
    values = [pagination.get(n) for n in names]
    bad = [
        n
        for n, v in zip(names, values, strict=True)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0
    ]
    if bad:
        raise ServerContractError(
            TOTALS,
            str(asked),
            f"answered pagination without a whole number >= 0 for {', '.join(bad)}",
        )
    total_pages, total, size = values
    return total_pages, total, size


def check_page_size(size: int, rows: int, asked: Asked) -> None:
    """The size asked is the size served: the sync pages at 500 and reads a short page as
    the last one, and a reconcile leaf must fit one page."""
    if size != asked.size:
        raise ServerContractError(
            PAGE_SIZE,
            str(asked),
            f"answered pagination.size={size} where {asked.size} was asked; a server that "
            "pages at another size than it is asked for makes the sync stop early or skip rows",
        )
    if rows > size:
        raise ServerContractError(
            PAGE_SIZE, str(asked), f"sent {rows} rows on a page of size {size}"
        )


def check_totals(total_pages: int, total: int, size: int, rows: int, asked: Asked) -> None:
    """totalPages and the rows of this page follow from totalElements and the size.

    An empty result may say totalPages 0 (the contract) or 1: either stops the sync at
    page 0, so neither is refused."""
    if size < 1:
        raise ServerContractError(TOTALS, str(asked), "answered pagination.size=0")
    pages = math.ceil(total / size)
    if total_pages != pages and not (total == 0 and total_pages == 1):
        raise ServerContractError(
            TOTALS,
            str(asked),
            f"answered totalPages={total_pages} where totalElements={total} at size {size} "
            f"makes {pages}",
        )
    expected = min(size, max(0, total - asked.page * size))
    if rows != expected:
        raise ServerContractError(
            TOTALS,
            str(asked),
            f"sent {rows} rows where totalElements={total} at size {size} puts {expected} "
            f"on page {asked.page}: either totalElements is wrong or the server serves fewer "
            "rows per page than the size it reports",
        )


def check_timestamp(
    metadata: Any, asked: Asked, now: datetime | None = None, max_ahead: float = MAX_CLOCK_AHEAD
) -> str:
    """`metadata.timestamp` is the next watermark: it must be there, be a timestamp, and
    not run ahead of this machine's UTC clock. Returns it as canonical UTC."""
    raw = metadata.get("timestamp") if isinstance(metadata, dict) else None
    if raw is None or raw == "":
        raise ServerContractError(
            CLOCK,
            str(asked),
            "answered without metadata.timestamp; the sync takes its watermark (where the "
            "next run starts) from it",
        )
    try:
        if not isinstance(raw, str):
            raise BadTimestamp("not a string")
        stamp = parse_instant(raw.strip())[0]
    except BadTimestamp:
        raise ServerContractError(
            CLOCK,
            str(asked),
            f"answered metadata.timestamp={str(raw)[:40]!r}, which is not a timestamp in any "
            "form the API uses (YYYY-MM-DD HH:MM:SS in UTC, or ISO 8601 with a zone)",
        ) from None
    local = (now or datetime.now(UTC)).astimezone(UTC)
    ahead = (stamp - local).total_seconds()
    if ahead > max_ahead:
        raise ServerContractError(
            CLOCK,
            str(asked),
            f"answered metadata.timestamp={format_timestamp(stamp)} (UTC), {ahead:.0f} s ahead "
            f"of this machine's clock ({format_timestamp(local)} UTC; at most {max_ahead:g} s "
            "is accepted). A watermark in the future skips the changes made until the clock "
            "gets there. If this machine's clock is wrong instead, synchronise it (NTP)",
        )
    return format_timestamp(stamp)


def check_rows_not_after(
    items: Sequence[dict[str, Any]],
    server_now: str,
    asked: Asked,
    id_field: str | None = None,
    stamp_field: str = "dateModified",
    slack: float = ROW_CLOCK_SLACK,
) -> None:
    """No row of a response was modified after the response's own timestamp: else the
    timestamp is not on the clock dateModified uses (e.g. local time against UTC), and a
    watermark taken from it is not comparable with dateModified."""
    if not items:
        return
    limit = _shift(server_now, slack)
    stamps = _canonical_stamps(items, stamp_field)
    if stamps is not None and (not stamps or max(stamps) <= limit):
        return  # the usual page: every stamp canonical, the newest one in time
    late = [
        (stamp, item)
        for item in items
        if (stamp := canonical_ts(item.get(stamp_field))) is not None and stamp > limit
    ]
    if late:
        newest = max(stamp for stamp, _ in late)
        raise ServerContractError(
            CLOCK,
            str(asked),
            f"answered metadata.timestamp={server_now} (UTC) with {len(late)} row(s) modified "
            f"later, up to {stamp_field}={newest}{_ids(id_field, (i for _, i in late))}: the "
            f"response's clock is not the clock {stamp_field} uses (local time against UTC?), "
            f"so the watermark cannot be compared with {stamp_field}",
        )


def check_since(
    items: Sequence[dict[str, Any]],
    since: str,
    asked: Asked,
    id_field: str | None = None,
    stamp_field: str = "dateModified",
) -> None:
    """Every row of a `dateModified>=since` listing qualifies; `since` is canonical UTC.
    A server ignoring the term sends old rows, and its totals are then the study's."""
    stamps = _canonical_stamps(items, stamp_field)
    if stamps is not None and len(stamps) == len(items) and (not stamps or min(stamps) >= since):
        return  # the usual page: every row stamped, canonically, on or after `since`
    early = [
        item
        for item in items
        if (stamp := canonical_ts(item.get(stamp_field))) is None or stamp < since
    ]
    if early:
        oldest = min((canonical_ts(i.get(stamp_field)) or "none" for i in early), default="")
        raise ServerContractError(
            SINCE,
            str(asked),
            f"sent {len(early)} row(s) modified before {since}, down to {stamp_field}="
            f"{oldest}{_ids(id_field, early)}: the server does not apply the {stamp_field}>= "
            "filter, so a delta would be the whole study or miss what it filters wrongly",
        )


def check_id_range(
    items: Sequence[dict[str, Any]],
    id_field: str,
    lo: int | None,
    hi: int | None,
    asked: Asked,
) -> None:
    """Rows of an id-range listing lie in the range. A server ignoring the id terms makes
    the hard-delete search conclude that rows outside its answer vanished."""
    outside = [
        item
        for item in items
        if not isinstance(value := item.get(id_field), int)
        or (lo is not None and value < lo)
        or (hi is not None and value > hi)
    ]
    if outside:
        raise ServerContractError(
            ID_FILTER,
            str(asked),
            f"sent {len(outside)} row(s) outside {_range(id_field, lo, hi)}"
            f"{_ids(id_field, outside)}: the server does not apply {id_field} filters, which "
            "the search for hard deletes depends on (it would delete rows that still exist)",
        )


def check_range_count(count: int, lo: int, hi: int, id_field: str, asked: Asked | str) -> None:
    """Ids are distinct whole numbers: a range cannot hold more rows than it has ids."""
    width = hi - lo + 1
    if count > width:
        raise ServerContractError(
            ID_FILTER,
            str(asked),
            f"counted {count} rows in {_range(id_field, lo, hi)}, which has room for {width}: "
            f"the server does not apply {id_field} filters, which the search for hard deletes "
            "depends on",
        )


def check_split(
    count: int, lo: int, hi: int, parent: int, parent_lo: int, parent_hi: int, id_field: str
) -> None:
    """The count of [lo, hi] fits its ids and the count `parent` of [parent_lo, parent_hi]
    it was split from. The parent's count may be derived by subtraction from counts taken
    at other moments; rows hard-deleted meanwhile only make it larger, so this holds under
    deletes. (Rows created meanwhile get new, higher ids, outside the ranges counted.)"""
    request = "the server"
    check_range_count(count, lo, hi, id_field, request)
    if count > parent:
        raise ServerContractError(
            ID_FILTER,
            request,
            f"counted {count} rows in {_range(id_field, lo, hi)}, more than the {parent} of "
            f"{_range(id_field, parent_lo, parent_hi)} it lies in: the server does not apply "
            f"{id_field} filters consistently, which the search for hard deletes depends on",
        )


def check_complete(listing: Listing) -> None:
    """A listing read as one page holds every row it counts (a reconcile leaf): rows
    beyond the page would be taken for hard deletes."""
    if listing.total_elements != len(listing.items):
        raise ServerContractError(
            ID_FILTER,
            str(listing.asked),
            f"counted {listing.total_elements} rows but sent {len(listing.items)} on a page of "
            f"{listing.asked.size}: a narrow id range should fit one page, so the server does not "
            "apply the id filters (rows beyond the page would be taken for hard deletes)",
        )


def check_keyset(items: Sequence[dict[str, Any]], id_field: str, last: int, asked: Asked) -> None:
    """A keyset page (`id > last`, default order) holds ids above `last`, ascending: the
    sync resumes from its last id and would otherwise loop or skip."""
    check_id_range(items, id_field, last + 1, None, asked)
    ids = [item[id_field] for item in items]
    unordered = [b for a, b in pairwise(ids) if b <= a]
    if unordered:
        raise ServerContractError(
            ID_FILTER,
            str(asked),
            f"sent {id_field}s out of ascending order (e.g. {unordered[0]} after a larger or "
            f"equal one): keyset paging resumes after the last {id_field} of a page and "
            "relies on the API's default order by id",
        )


_CANONICAL_LINES = re.compile(r"(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n)*")


def _canonical_stamps(items: Sequence[dict[str, Any]], stamp_field: str) -> list[str] | None:
    """The rows' stamps when every present one is in the API's canonical form, whose string
    order is time order; None when any is not (then each row is parsed). One regex pass
    over the page instead of a parse per row: these checks run on every page of a sync."""
    stamps = [s for item in items if (s := item.get(stamp_field))]
    try:
        joined = "\n".join(stamps) + "\n" if stamps else ""
    except TypeError:  # a stamp that is not text
        return None
    return stamps if _CANONICAL_LINES.fullmatch(joined) else None


def _shift(stamp: str, seconds: float) -> str:
    return format_timestamp(parse_instant(stamp)[0] + timedelta(seconds=seconds))


def _range(id_field: str, lo: int | None, hi: int | None) -> str:
    low = "" if lo is None else f"{lo} <= "
    high = "" if hi is None else f" <= {hi}"
    return f"{low}{id_field}{high}"


def _ids(id_field: str | None, items: Iterable[dict[str, Any]], limit: int = 5) -> str:
    """Ids of offending rows, never their contents (clinical data stays out of errors)."""
    if not id_field:
        return ""
    ids = sorted({i.get(id_field) for i in items if isinstance(i.get(id_field), int)})
    if not ids:
        return ""
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return f" ({id_field} {', '.join(map(str, ids[:limit]))}{more})"
