"""`make demo` shows what a person checks after each sync: the collections that changed (and
only those), what the snapshot wrote and reused, and the audit trail the staff's edits left.
The formatters are plain functions, tested here on typed results; one short demo run checks
that the story reaches the screen."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imednet_flows.cache.results import CollectionResult, StudyResult
from imednet_flows.cache.snapshots.writer import SnapshotResult
from imednet_flows.demo import (
    EDIT_REASON,
    change_counts,
    change_lines,
    history_lines,
    run_demo,
    snapshot_line,
)


def _study(**collections: CollectionResult) -> StudyResult:
    return StudyResult(study_key="DEMO", collections=collections)


def test_change_counts_name_only_what_happened() -> None:
    assert change_counts(CollectionResult(collection="x", inserted=3)) == "+3 new"
    assert (
        change_counts(CollectionResult(collection="x", updated=5, soft_deleted=2, hard_deleted=1))
        == "5 updated (2 of them soft-deleted), 1 hard-deleted"
    )


def test_change_lines_list_changed_collections_and_count_the_rest() -> None:
    study = _study(
        sites=CollectionResult(collection="sites", unchanged=3),
        records=CollectionResult(collection="records", updated=2),
        queries=CollectionResult(collection="queries", inserted=1),
        codings=CollectionResult(collection="codings", skipped="403 from the API"),
    )
    lines = change_lines(study)
    assert lines[0] == "2 of 4 collections changed (2 unchanged):"
    assert lines[1:3] == ["  records  2 updated", "  queries  +1 new"]
    assert lines[3] == "  codings skipped: 403 from the API"
    assert not any("sites" in line for line in lines)


def test_snapshot_line_says_written_and_reused() -> None:
    assert "none written" in snapshot_line(None)
    line = snapshot_line(
        SnapshotResult(
            path=Path("/snapshots/DEMO/20260101T000000Z"),
            files_written=[
                "records.parquet/part-00000.parquet",
                "forms/VS.parquet/part-00000.parquet",
                "forms/AE.parquet/part-00000.parquet",
            ],
            files_reused=["sites.parquet/part-00000.parquet"],
            bytes_written=2_500_000,
        )
    )
    assert "3 Parquet part(s) written (records, 2 form table(s)), 1 reused" in line
    assert "2.50 MB" in line and "rebuilt" not in line


def test_history_lines_say_when_who_and_why() -> None:
    lines = history_lines(
        [
            {"recordRevision": 1, "dateCreated": "2024-01-01 10:00:00", "user": "a", "role": "CRC"},
            {
                "recordRevision": 2,
                "dateCreated": "2024-02-01 10:00:00",
                "user": "b",
                "role": "CRA",
                "reasonForChange": "Typo",
                "deleted": True,
            },
        ]
    )
    assert lines == [
        "  rev 1  2024-01-01 10:00:00  a (CRC)  entered",
        "  rev 2  2024-02-01 10:00:00  b (CRA)  Typo, deleted",
    ]


@pytest.mark.usefixtures("prefect_api")
def test_demo_shows_changes_snapshot_reuse_and_the_edit_trail(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name in ("IMEDNET_BASE_URL", "IMEDNET_API_KEY", "IMEDNET_SECURITY_KEY"):
        monkeypatch.setenv(name, "restored-after-the-demo")
    assert run_demo(subjects=8, output=str(tmp_path / "out")) == 0
    out = capfd.readouterr().out
    second = out.split("== 3.")[1].split("== 4.")[0]
    # the second run lists only what the staff's changes touched
    assert re.search(r"\d+ of 11 collections changed \(\d+ unchanged\):", second)
    listed = re.findall(r"^ {5}(\w+) +[+\d]", second, flags=re.M)
    assert "records" in listed and "recordRevisions" in listed
    assert not {"sites", "users", "forms", "variables", "intervals"} & set(listed)
    # the snapshot took the untouched tables over from the first set
    assert re.search(r"Parquet part\(s\) written .*, [1-9]\d* reused from the previous set", second)
    # the edited record's trail: its entry, then the edit with who and why
    trail = second.split("(record_history):")[1]
    assert "rev 1" in trail and "entered" in trail
    assert re.search(rf"rev 2 .*\(.+\)  {re.escape(EDIT_REASON)}", trail)
