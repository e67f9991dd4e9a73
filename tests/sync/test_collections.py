"""The whole study mirrored: every collection, the audit trail, every study the key sees.

Flow runs under the session's Prefect API against an emulator of two studies; expectations
come from the emulator's own truth, never from the code under test."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.incremental_sync import run_incremental_sync
from imednet_flows.cache.collections import COLLECTIONS
from imednet_flows.cache.reader import get_cached, record_history, sync_status
from imednet_flows.cache.snapshots import latest_snapshot
from imednet_flows.cache.studies import StudySelectionError
from imednet_flows.emulator import EmulatorServer, StudySpec, running_emulator
from tests.sync_helpers import assert_cache_equals_truth, cache_rows

pytestmark = pytest.mark.usefixtures("prefect_api")
Env = Callable[[EmulatorServer], None]
ONE = StudySpec(study_key="ALL-1", study_id=31, seed=7, subjects=14, intervals=2)
TWO = StudySpec(study_key="ALL-2", study_id=32, seed=8, subjects=9, intervals=2)


@pytest.fixture
def two_studies() -> Iterator[EmulatorServer]:
    with running_emulator([ONE, TWO]) as server:
        yield server


def run(tmp: Path, keys: list[str], **kwargs: Any):
    return run_incremental_sync(
        keys, cache_path=str(tmp / "cache.sqlite"), snapshot_dir=str(tmp / "snap"), **kwargs
    )


def assert_snapshot_equals_truth(server: EmulatorServer, snapshots: Path, key: str) -> None:
    latest = latest_snapshot(snapshots, key)
    assert latest is not None
    for spec in COLLECTIONS:
        table = pq.read_table(latest / f"{spec.name}.parquet").to_pylist()
        truth = {r[spec.id_field]: r for r in server.emulator.rows(key, spec.route)}
        got = {r[spec.id_field]: json.loads(r["raw"]) for r in table}
        assert got.keys() == truth.keys(), f"{key} {spec.name}.parquet ids"
        assert got == truth, f"{key} {spec.name}.parquet content"


def gets(server: EmulatorServer, route: str) -> list[Any]:
    return [
        e for e in server.emulator.requests() if e.method == "GET" and e.path.endswith(f"/{route}")
    ]


def test_every_study_the_key_sees_every_collection(
    two_studies: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(two_studies)
    emu = two_studies.emulator
    first = run(tmp_path, ["*"])
    assert sorted(first.studies) == sorted(s["studyKey"] for s in emu.studies())
    assert first.discovered == ["ALL-1", "ALL-2"]
    for key in first.studies:
        assert_cache_equals_truth(two_studies, tmp_path / "cache.sqlite", key)
        assert_snapshot_equals_truth(two_studies, tmp_path / "snap", key)

    # The audit trail grows by the edits' revisions, fetched within ceil(r/500) + 1 GETs.
    before = len(emu.rows("ALL-1", "recordRevisions"))
    emu.mutate("ALL-1", "edit_records", n=7, seed=3, user="site.user", reason="Transcription")
    emu.mutate("ALL-1", "recode", n=2, seed=4)
    added = len(emu.rows("ALL-1", "recordRevisions")) - before
    assert added == 7
    emu.reset_requests()
    delta = run(tmp_path, ["*"])
    revisions = gets(two_studies, "recordRevisions")
    assert len([e for e in revisions if "ALL-1" in e.path]) <= math.ceil(added / 500) + 1
    assert delta.studies["ALL-1"].collections["recordRevisions"].inserted == added
    assert delta.studies["ALL-1"].collections["codings"].updated == 2
    assert not delta.studies["ALL-2"].changed
    assert delta.snapshots.keys() == {"ALL-1"}
    for key in delta.studies:
        assert_cache_equals_truth(two_studies, tmp_path / "cache.sqlite", key)
        assert_snapshot_equals_truth(two_studies, tmp_path / "snap", key)

    # The revisions carry who changed what and why, in order, from the cache alone.
    edited = next(
        r for r in emu.rows("ALL-1", "recordRevisions") if r["reasonForChange"] == "Transcription"
    )
    history = record_history(tmp_path / "cache.sqlite", "ALL-1", edited["recordId"])
    truth = sorted(
        (r for r in emu.rows("ALL-1", "recordRevisions") if r["recordId"] == edited["recordId"]),
        key=lambda r: (r["recordRevision"], r["recordRevisionId"]),
    )
    assert list(history["recordRevisionId"]) == [r["recordRevisionId"] for r in truth]
    assert history.iloc[-1]["user"] == "site.user"
    assert history.iloc[-1]["reasonForChange"] == "Transcription"


def test_reference_collections_cost_no_snapshot_rewrite_when_unchanged(
    two_studies: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(two_studies)
    emu = two_studies.emulator
    run(tmp_path, ["ALL-1"])
    old = latest_snapshot(tmp_path / "snap", "ALL-1")
    emu.mutate("ALL-1", "edit_records", n=2, seed=1)
    result = run(tmp_path, ["ALL-1"])
    new = latest_snapshot(tmp_path / "snap", "ALL-1")
    assert old is not None and new is not None and new != old
    for name in ("sites", "forms", "intervals", "variables", "users"):
        assert not result.studies["ALL-1"].collections[name].changed
        for part in (new / f"{name}.parquet").iterdir():
            assert part.stat().st_ino == (old / f"{name}.parquet" / part.name).stat().st_ino
    assert any(f.startswith("records.parquet/") for f in result.snapshots["ALL-1"].files_written)

    emu.mutate("ALL-1", "deactivate_users", seed=2)
    emu.mutate("ALL-1", "add_variables", form_key="AE", names=["aenew"])
    result = run(tmp_path, ["ALL-1"])
    changed = result.studies["ALL-1"]
    assert changed.collections["users"].updated == 1
    assert changed.collections["variables"].inserted == 1
    assert_cache_equals_truth(two_studies, tmp_path / "cache.sqlite", "ALL-1")
    assert_snapshot_equals_truth(two_studies, tmp_path / "snap", "ALL-1")
    inactive = get_cached(tmp_path / "cache.sqlite", "ALL-1", "users", userActiveInStudy=False)
    assert len(inactive) == sum(1 for u in emu.rows("ALL-1", "users") if not u["userActiveInStudy"])
    latest = latest_snapshot(tmp_path / "snap", "ALL-1")
    assert latest is not None
    assert "aenew" in pq.read_table(latest / "forms" / "AE.parquet").column_names


def test_a_refused_collection_is_skipped_and_the_others_synced(
    two_studies: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(two_studies)
    emu = two_studies.emulator
    run(tmp_path, ["ALL-1"])
    cached_users = cache_rows(tmp_path / "cache.sqlite", "ALL-1", "users")
    emu.configure(forbidden_routes=["users"])
    try:
        emu.mutate("ALL-1", "edit_records", n=3, seed=5)
        emu.mutate("ALL-1", "add_users", n=1)
        result = run(tmp_path, ["ALL-1"])
    finally:
        emu.configure(forbidden_routes=[])
    study = result.studies["ALL-1"]
    assert list(study.skipped_collections) == ["users"]
    assert "403" in study.skipped_collections["users"]
    assert study.collections["records"].updated == 3
    assert cache_rows(tmp_path / "cache.sqlite", "ALL-1", "users") == cached_users
    assert_cache_equals_truth(two_studies, tmp_path / "cache.sqlite", "ALL-1", skipped=("users",))
    with get_client(sync_client=True) as client:
        (artifact, *_) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["incremental-sync"])),
            sort="CREATED_DESC",
            limit=1,
        )
    table = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    users = next(r for r in table if r["study"] == "ALL-1" and r["collection"] == "users")
    assert users["note"].startswith("SKIPPED")
    # the next run with access brings the users up to date
    run(tmp_path, ["ALL-1"])
    assert_cache_equals_truth(two_studies, tmp_path / "cache.sqlite", "ALL-1")


def test_a_study_gone_from_the_listing_is_reported_and_kept_unless_pruned(
    two_studies: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(two_studies)
    emu = two_studies.emulator
    run(tmp_path, ["*"])
    emu.remove_study("ALL-2")
    kept = run(tmp_path, ["*"])
    assert kept.missing_studies == ["ALL-2"] and kept.pruned_studies == []
    assert sorted(kept.studies) == ["ALL-1"]
    assert cache_rows(tmp_path / "cache.sqlite", "ALL-2", "records")
    assert latest_snapshot(tmp_path / "snap", "ALL-2") is not None
    pruned = run(tmp_path, ["*"], prune_missing_studies=True)
    assert pruned.pruned_studies == ["ALL-2"]
    assert cache_rows(tmp_path / "cache.sqlite", "ALL-2", "records") == {}
    assert [s for s in sync_status(tmp_path / "cache.sqlite") if s.study_key == "ALL-2"] == []
    assert_cache_equals_truth(two_studies, tmp_path / "cache.sqlite", "ALL-1")


@pytest.mark.parametrize(
    ("keys", "message"),
    [(["*", "ALL-1"], "mixes"), ([" "], r"study key is empty|should match pattern")],
)
def test_bad_selections_fail_before_anything_is_written(
    keys: list[str], message: str, two_studies: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(two_studies)
    with pytest.raises(Exception, match=message):
        run(tmp_path, keys)
    assert two_studies.emulator.requests() == []
    assert not (tmp_path / "cache.sqlite").exists()


def test_a_key_that_sees_no_study_fails_clearly(imednet_env: Env, tmp_path: Path) -> None:
    with running_emulator([ONE]) as server:
        server.emulator.remove_study("ALL-1")
        imednet_env(server)
        with pytest.raises(StudySelectionError, match="can see no study"):
            run(tmp_path, ["*"])
    assert not (tmp_path / "cache.sqlite").exists()
