"""What the sync assumes of the server, checked at run time (issue: server assumptions).

Each assumption is broken on purpose by an emulator quirk: the sync must then fail loudly,
naming what the server did, and leave the cache exactly as it was (rows and watermarks).
Without the quirk the same sync passes, also with rows changing and vanishing between pages.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.incremental_sync import run_incremental_sync
from imednet_flows.cache.reconcile import find_differences
from imednet_flows.edc.errors import ImednetFlowsError
from imednet_flows.edc.server_checks import (
    ADVICE,
    CLOCK,
    ID_FILTER,
    PAGE_SIZE,
    SINCE,
    TOTALS,
    Asked,
    Listing,
    ServerContractError,
    check_complete,
    check_id_range,
    check_keyset,
    check_listing,
    check_range_count,
    check_rows_not_after,
    check_since,
    check_split,
    check_timestamp,
    inspect_listing,
)
from imednet_flows.emulator import (
    DEMO_API_KEY,
    DEMO_SECURITY_KEY,
    EmulatorClient,
    EmulatorServer,
    StudySpec,
    running_emulator,
)
from imednet_flows.emulator.quirks import GARBAGE_TIMESTAMP, Quirks
from tests.sync_helpers import assert_cache_equals_truth

Env = Callable[[EmulatorServer], None]
#: 600 records: two pages at 500, and more than a reconcile leaf (200) so deletes bisect.
CHK = StudySpec(study_key="CHK", study_id=3, seed=33, subjects=50, sites=2)
K = CHK.study_key
ASKED = Asked("/api/v1/edc/studies/K/records", page=0, size=500, filter="studyKey==K")
NOW = datetime(2026, 1, 2, 12, 0, 0, tzinfo=UTC)


# --------------------------------------------------------------------------- unit: checks


def envelope(
    rows: list[dict[str, Any]],
    total: int | None = None,
    size: int = 500,
    page: int = 0,
    timestamp: Any = "2026-01-02 12:00:00",
) -> dict[str, Any]:
    total = len(rows) if total is None else total
    return {
        "metadata": {"status": "OK", "timestamp": timestamp, "error": {}},
        "pagination": {
            "currentPage": page,
            "size": size,
            "totalPages": -(-total // size),
            "totalElements": total,
        },
        "data": rows,
    }


def rows(*ids: int, modified: str = "2026-01-01 10:00:00") -> list[dict[str, Any]]:
    return [
        {"recordId": i, "dateModified": modified, "recordData": {"aeterm": "clinical-secret"}}
        for i in ids
    ]


@contextmanager
def fails(check: str, match: str) -> Iterator[None]:
    with pytest.raises(ServerContractError, match=match) as caught:
        yield
    assert caught.value.check == check


def test_a_correct_response_passes_and_is_read() -> None:
    listing = check_listing(envelope(rows(1, 2, 3)), ASKED, "recordId", now=NOW)
    assert [r["recordId"] for r in listing.items] == [1, 2, 3]
    assert (listing.total_pages, listing.total_elements) == (1, 3)
    assert listing.server_now == "2026-01-02 12:00:00"
    assert listing.asked is ASKED


def test_the_error_names_the_assumption_the_request_and_what_to_do() -> None:
    with pytest.raises(ServerContractError) as caught:
        check_listing(envelope(rows(1), size=100), ASKED, now=NOW)
    error = caught.value
    assert isinstance(error, ImednetFlowsError)
    assert error.check == PAGE_SIZE
    assert str(ASKED) in str(error) and "filter studyKey==K" in str(ASKED)
    assert ADVICE in str(error) and "watermarks did not move" in str(error)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ([], "not a list envelope"),
        ({"metadata": {}, "pagination": {}}, "without a data list"),
        ({"data": [], "metadata": {}}, "without pagination"),
        (
            {"data": [], "pagination": {"totalPages": "1", "totalElements": 0, "size": 500}},
            "whole number >= 0 for totalPages",
        ),
    ],
)
def test_an_envelope_without_usable_pagination_fails(payload: Any, match: str) -> None:
    with fails(TOTALS, match):
        check_listing(payload, ASKED, now=NOW)


def test_inspecting_a_response_lists_every_assumption_it_breaks() -> None:
    """What the doctor uses: independent checks still run after one failed."""
    found: list[ServerContractError] = []
    payload = envelope(rows(1, 2), total=5, size=100, timestamp="2026-01-02 14:00:00")
    listing = inspect_listing(payload, ASKED, found.append, "recordId", now=NOW)
    assert [e.check for e in found] == [PAGE_SIZE, TOTALS, CLOCK]
    assert listing is not None and listing.server_now is None and len(listing.items) == 2
    assert inspect_listing([], ASKED, found.append, now=NOW) is None


def test_page_size_must_be_the_size_asked() -> None:
    with fails(PAGE_SIZE, r"pagination\.size=100 where 500 was asked"):
        check_listing(envelope(rows(1), size=100), ASKED, now=NOW)
    with fails(PAGE_SIZE, "sent 3 rows on a page of size 2"):
        check_listing(envelope(rows(1, 2, 3), size=2), Asked("/p", size=2), now=NOW)


def test_totals_must_match_pages() -> None:
    wrong_pages = envelope(rows(1, 2), total=2)
    wrong_pages["pagination"]["totalPages"] = 3
    with fails(TOTALS, "totalPages=3 where totalElements=2 at size 500 makes 1"):
        check_listing(wrong_pages, ASKED, now=NOW)
    with fails(TOTALS, "sent 2 rows where totalElements=3 at size 500 puts 3 on page 0"):
        check_listing(envelope(rows(1, 2), total=3), ASKED, now=NOW)
    with fails(TOTALS, "fewer rows per page"):  # a cap reported as the size asked
        check_listing(envelope(rows(*range(100)), total=1200), ASKED, now=NOW)


def test_totals_accept_the_last_page_a_page_past_the_end_and_an_empty_result() -> None:
    last = Asked("/p", page=2, size=500)
    check_listing(envelope(rows(*range(200)), total=1200, page=2), last, now=NOW)
    past = Asked("/p", page=7, size=500)
    check_listing(envelope([], total=1200, page=7), past, now=NOW)
    empty = envelope([], total=0)
    check_listing(empty, ASKED, now=NOW)
    empty["pagination"]["totalPages"] = 1  # some servers say 1: both stop at page 0
    check_listing(empty, ASKED, now=NOW)


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        (None, "without metadata.timestamp"),
        ({}, "without metadata.timestamp"),
        ({"timestamp": ""}, "without metadata.timestamp"),
        ({"timestamp": GARBAGE_TIMESTAMP}, "'06/05/2025 09:12:09 PM', which is not a timestamp"),
        ({"timestamp": 1767355200}, "'1767355200', which is not a timestamp"),
        ({"timestamp": "2026-01-02 13:00:00"}, "3600 s ahead of this machine's clock"),
        ({"timestamp": "2026-01-02T14:00:00+01:00"}, "3600 s ahead"),
    ],
)
def test_timestamp_must_be_present_parseable_and_not_ahead(metadata: Any, match: str) -> None:
    with fails(CLOCK, match):
        check_timestamp(metadata, ASKED, now=NOW)


def test_timestamp_within_tolerance_or_behind_is_read_as_canonical_utc() -> None:
    assert check_timestamp({"timestamp": "2026-01-02 12:00:59"}, ASKED, now=NOW) == (
        "2026-01-02 12:00:59"
    )
    assert check_timestamp({"timestamp": "2026-01-02T13:00:00+01:00"}, ASKED, now=NOW) == (
        "2026-01-02 12:00:00"
    )
    assert check_timestamp({"timestamp": "2020-01-01 00:00:00"}, ASKED, now=NOW)
    with fails(CLOCK, "at most 10 s"):
        check_timestamp({"timestamp": "2026-01-02 12:00:59"}, ASKED, now=NOW, max_ahead=10)


def test_rows_modified_after_the_response_clock_fail_without_their_contents() -> None:
    late = rows(7, 8, modified="2026-01-02 13:00:00") + rows(9)
    with pytest.raises(ServerContractError) as caught:
        check_rows_not_after(late, "2026-01-02 12:00:00", ASKED, "recordId")
    message = str(caught.value)
    assert caught.value.check == CLOCK
    assert "2 row(s) modified later, up to dateModified=2026-01-02 13:00:00" in message
    assert "(recordId 7, 8)" in message and "local time against UTC" in message
    assert "clinical-secret" not in message
    # within the slack (a response stamped before its query ran), and rows without a date
    check_rows_not_after(rows(1, modified="2026-01-02 12:00:05"), "2026-01-02 12:00:00", ASKED)
    check_rows_not_after([{"recordId": 1}], "2026-01-02 12:00:00", ASKED)


def test_a_delta_holds_only_rows_modified_since() -> None:
    since = "2026-01-01 00:00:00"
    check_since(rows(1, 2), since, ASKED, "recordId")
    check_since(rows(1, modified=since), since, ASKED, "recordId")  # >= includes the second
    old = [*rows(3, modified="2025-12-31 23:59:59"), {"recordId": 4}, *rows(5)]
    with pytest.raises(ServerContractError) as caught:
        check_since(old, since, ASKED, "recordId")
    assert caught.value.check == SINCE
    assert "2 row(s) modified before 2026-01-01 00:00:00" in str(caught.value)
    assert "(recordId 3, 4)" in str(caught.value)


def test_id_range_rows_and_counts() -> None:
    check_id_range(rows(10, 15, 20), "recordId", 10, 20, ASKED)
    check_id_range(rows(10**9), "recordId", 10, None, ASKED)
    with fails(ID_FILTER, r"sent 2 row\(s\) outside 10 <= recordId <= 20 \(recordId 9, 21\)"):
        check_id_range(rows(9, 10, 21), "recordId", 10, 20, ASKED)
    with fails(ID_FILTER, "outside 10 <= recordId"):
        check_id_range([{"recordId": None}], "recordId", 10, None, ASKED)
    check_range_count(11, 10, 20, "recordId", ASKED)
    with fails(ID_FILTER, "counted 12 rows in 10 <= recordId <= 20, which has room for 11"):
        check_range_count(12, 10, 20, "recordId", ASKED)


def test_a_range_count_never_exceeds_the_range_it_was_split_from() -> None:
    check_split(5, 0, 99, 5, 0, 199, "recordId")
    check_split(100, 0, 99, 200, 0, 199, "recordId")
    with fails(
        ID_FILTER, "counted 6 rows in 0 <= recordId <= 99, more than the 5 of 0 <= recordId <= 199"
    ):
        check_split(6, 0, 99, 5, 0, 199, "recordId")
    with fails(ID_FILTER, "server counted 101 rows in 0 <= recordId <= 99, which has room for 100"):
        check_split(101, 0, 99, 150, 0, 199, "recordId")


def test_a_leaf_listing_holds_every_row_it_counts() -> None:
    check_complete(check_listing(envelope(rows(1, 2)), ASKED, now=NOW))
    truncated = Listing(rows(*range(500)), 2, 600, ASKED, "2026-01-02 12:00:00")
    with fails(ID_FILTER, "counted 600 rows but sent 500 on a page of 500"):
        check_complete(truncated)


def test_a_keyset_page_is_above_last_and_ascending() -> None:
    check_keyset(rows(5, 6, 9), "recordId", 4, ASKED)
    check_keyset([], "recordId", 4, ASKED)
    with fails(ID_FILTER, r"outside 5 <= recordId \(recordId 1, 4\)"):
        check_keyset(rows(1, 4, 9), "recordId", 4, ASKED)
    with fails(ID_FILTER, "out of ascending order"):
        check_keyset(rows(5, 9, 6), "recordId", 4, ASKED)


def test_the_hard_delete_search_refuses_counts_that_ignore_the_range() -> None:
    """A server ignoring id terms counts the whole study in every range."""
    local = list(range(1, 1001))
    whole = 999
    with fails(ID_FILTER, "counted 999 rows in 0 <= recordId <= 500, which has room for 501"):
        find_differences(local, whole, lambda lo, hi: whole, lambda lo, hi: [], "recordId")
    honest = find_differences(
        local,
        whole,
        lambda lo, hi: sum(1 for i in local if lo <= i <= hi and i != 500),
        lambda lo, hi: [{"recordId": i} for i in local if lo <= i <= hi and i != 500],
        "recordId",
    )
    assert honest.vanished == [500]


def test_a_count_derived_while_rows_vanish_is_no_broken_server() -> None:
    """Seen in a sync with hard deletes during its search: a range's count is derived by
    subtraction from counts taken at other moments, so it can exceed what the range holds."""
    check_split(189, 70001148, 70001338, 382, 70001148, 70001530, "recordId")


def test_the_hard_delete_search_ends_when_derived_counts_exceed_their_ranges() -> None:
    """300 rows deleted between the total's count and the search's: every right-hand count
    is 300 too high, down to ranges of single ids (this recursed without end)."""
    local = list(range(1, 1001))

    def count(lo: int, hi: int) -> int:
        return sum(1 for i in local if lo <= i <= hi)

    def listing(lo: int, hi: int) -> list[dict[str, Any]]:
        return [{"recordId": i} for i in local if lo <= i <= hi]

    diff = find_differences(local, 1300, count, listing, "recordId")
    assert (diff.vanished, diff.missing) == ([], [])
    assert diff.requests < 200


# --------------------------------------------------------------------------- unit: quirks


def test_quirks_refuse_bad_settings() -> None:
    assert not Quirks().active and Quirks(clock_offset=-5).active
    with pytest.raises(ValueError, match="unknown quirks"):
        Quirks.from_json({"clock_ofset": 5})
    with pytest.raises(ValueError, match="timestamp must be one of"):
        Quirks(timestamp="late")
    with pytest.raises(ValueError, match="page_size_cap must be an integer"):
        Quirks(page_size_cap="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be an object"):
        Quirks.from_json([])


def test_quirks_over_the_admin_route(fresh_emulator: EmulatorServer) -> None:
    admin = EmulatorClient(fresh_emulator.base_url)
    api = httpx.Client(
        base_url=fresh_emulator.base_url + "/api/v1/edc/studies/SMALL",
        headers={"x-api-key": DEMO_API_KEY, "x-imn-security-key": DEMO_SECURITY_KEY},
    )
    try:
        admin.configure(quirks={"timestamp": "missing", "page_size_cap": 2, "page_size_lie": True})
        body = api.get("/subjects", params={"size": 5}).json()
        assert "timestamp" not in body["metadata"]
        assert len(body["data"]) == 2 and body["pagination"]["size"] == 5
        with pytest.raises(ValueError, match="unknown quirks"):
            admin.configure(quirks={"nope": 1})
        admin.configure(quirks={"ignore_filters": ["id"], "total_elements_offset": 3})
        body = api.get("/subjects", params={"filter": "subjectId>=999999999"}).json()
        assert body["data"] and body["pagination"]["totalElements"] == len(body["data"]) + 3
        admin.configure(quirks={})
        assert api.get("/subjects", params={"filter": "subjectId>=999999999"}).json()["data"] == []
    finally:
        api.close()
        admin.close()


# --------------------------------------------------------------------------- flow level


@pytest.fixture
def checked() -> Iterator[EmulatorServer]:
    with running_emulator([CHK]) as server:
        yield server


def run(tmp: Path, **kwargs: Any) -> Any:
    return run_incremental_sync(
        [K], cache_path=str(tmp / "cache.sqlite"), snapshot_dir=str(tmp / "snapshots"), **kwargs
    )


def cache_state(cache_path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: rows, watermarks, form versions and the run log."""
    conn = sqlite3.connect(f"{cache_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
    finally:
        conn.close()


BROKEN: dict[str, tuple[Quirks, str]] = {
    "timestamp missing": (Quirks(timestamp="missing"), r"\(server clock\).*without metadata"),
    "timestamp garbage": (Quirks(timestamp="garbage"), r"\(server clock\).*not a timestamp"),
    "clock ahead": (Quirks(clock_offset=3600), r"\(server clock\).*s ahead of this machine"),
    "clock behind (local time)": (
        Quirks(clock_offset=-3600),
        r"\(server clock\).*records.*modified later.*recordId",
    ),
    "totalElements off": (Quirks(total_elements_offset=1), r"\(totals match pages\).*forms"),
    "page size capped": (
        Quirks(page_size_cap=5),
        r"\(page size honoured\).*pagination\.size=5 where 500 was asked",
    ),
    "page size capped, reported as asked": (
        Quirks(page_size_cap=5, page_size_lie=True),
        r"\(totals match pages\).*sent 5 rows.*fewer rows per page",
    ),
    "dateModified filter ignored": (
        Quirks(ignore_filters=["dateModified"]),
        r"\(dateModified>= honoured\).*subjects.*modified before",
    ),
    "id filters ignored": (
        Quirks(ignore_filters=["id"]),
        r"\(id filters honoured\).*records.*recordId",
    ),
}


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("broken", BROKEN)
def test_a_broken_assumption_fails_the_sync_and_leaves_the_cache_as_it_was(
    broken: str, checked: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    quirks, message = BROKEN[broken]
    imednet_env(checked)
    emu = checked.emulator
    run(tmp_path)
    emu.mutate(K, "edit_records", n=5, seed=1)
    emu.mutate(K, "hard_delete", n=2, seed=2)
    before = cache_state(tmp_path / "cache.sqlite")
    emu.configure(quirks=quirks)
    try:
        with pytest.raises(RuntimeError, match=message) as caught:
            run(tmp_path)
    finally:
        emu.configure(quirks=Quirks())
    assert isinstance(caught.value.__cause__, ServerContractError)
    assert "clinical" not in str(caught.value)
    assert cache_state(tmp_path / "cache.sqlite") == before
    run(tmp_path)  # the same sync against an honest server: no false positive
    assert_cache_equals_truth(checked, tmp_path / "cache.sqlite", K)


@pytest.mark.usefixtures("prefect_api")
def test_a_clock_ahead_by_more_than_the_overlap_is_refused(
    checked: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    """45 s ahead: the default 30 s overlap would not re-read what the watermark skips; a
    60 s overlap covers it."""
    imednet_env(checked)
    emu = checked.emulator
    emu.configure(quirks=Quirks(clock_offset=45))
    try:
        with pytest.raises(RuntimeError, match=r"s ahead of this machine's clock.*at most 30 s"):
            run(tmp_path)
        assert not (tmp_path / "cache.sqlite").exists()
        run(tmp_path, overlap_seconds=60)
    finally:
        emu.configure(quirks=Quirks())
    assert_cache_equals_truth(checked, tmp_path / "cache.sqlite", K)


def _delete_during_records_paging(server: EmulatorServer, stop: threading.Event) -> None:
    """While page 1 of the records delta waits out its latency, edit and hard-delete rows:
    page 1 then counts fewer rows than page 0 did, and the sync re-reads by keyset."""
    emu = server.emulator
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        for entry in emu.requests():
            filter_text = (entry.query.get("filter") or [""])[0]
            if (
                entry.path.endswith("/records")
                and entry.query.get("page") == ["1"]
                and "dateModified" in filter_text
            ):
                emu.mutate(K, "edit_records", n=5, seed=77)
                emu.mutate(K, "hard_delete", n=3, seed=78)
                return
        time.sleep(0.005)


def _keyset_run(server: EmulatorServer, tmp_path: Path) -> Any:
    emu = server.emulator
    emu.mutate(K, "edit_records", n=550, seed=5)  # a records delta of two pages
    emu.reset_requests()
    emu.add_fault("latency", route="records", seconds=0.4, count=2)
    stop = threading.Event()
    thread = threading.Thread(target=_delete_during_records_paging, args=(server, stop))
    thread.start()
    try:
        return run(tmp_path)
    finally:
        stop.set()
        thread.join(timeout=30)


def _keyset_requests(server: EmulatorServer) -> list[str]:
    return [
        f
        for e in server.emulator.requests()
        for f in e.query.get("filter", [])
        if "recordId>" in f and "dateModified" in f
    ]


@pytest.mark.usefixtures("prefect_api")
def test_rows_changing_and_vanishing_between_pages_pass_the_checks(
    checked: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(checked)
    run(tmp_path)
    result = _keyset_run(checked, tmp_path)
    assert _keyset_requests(checked), "the keyset re-read did not happen"
    assert result.studies[K].collections["records"].hard_deleted == 3
    assert_cache_equals_truth(checked, tmp_path / "cache.sqlite", K)


@pytest.mark.usefixtures("prefect_api")
def test_a_keyset_reread_that_ignores_the_id_term_fails(
    checked: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(checked)
    run(tmp_path)
    before = cache_state(tmp_path / "cache.sqlite")
    checked.emulator.configure(quirks=Quirks(ignore_filters=["id"]))
    keyset = r"\(id filters honoured\).*recordId>\d+;.* outside \d+ <= recordId \(recordId"
    with pytest.raises(RuntimeError, match=keyset):
        _keyset_run(checked, tmp_path)
    assert _keyset_requests(checked)
    assert cache_state(tmp_path / "cache.sqlite") == before
