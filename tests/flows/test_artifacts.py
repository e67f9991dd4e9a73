"""What each flow leaves in the Prefect UI, read back from the API as a person would see it.

Why: a run's artifacts are what a person opens after it (or while it runs); a count alone,
or a list that leaves out what needs triage, sends them to the logs or to Python.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.utilities.asyncutils import run_coro_as_sync

from flows.extract_records import extract_records_by_criteria
from flows.incremental_sync import incremental_sync
from flows.open_queries import STALE_DAYS, age_days, get_open_queries
from flows.subject_data import get_all_subject_data
from imednet_flows.cache.collections import COLLECTIONS
from imednet_flows.emulator import EmulatorServer
from tests.conftest import BIG, SMALL

pytestmark = pytest.mark.usefixtures("prefect_api")
Env = Callable[[EmulatorServer], None]


def artifacts_of(state: Any) -> dict[str, Any]:
    """The run's artifacts by key (progress artifacts, which have none, by their id)."""
    run_id: UUID = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    return {a.key or str(a.id): a for a in found}


def table(artifact: Any) -> list[dict[str, Any]]:
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def md_rows(markdown: str, heading: str) -> list[list[str]]:
    """The body rows of the first table after `heading`."""
    section = markdown.split(heading, 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    rows = []
    for line in lines[2:]:
        if not line.startswith("| "):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
        if section.split(line, 1)[1].startswith("\n\n"):
            break
    return rows


def latest_is_open(query: dict[str, Any]) -> bool | None:
    comments = query.get("queryComments") or []
    if not comments:
        return None
    return not max(comments, key=lambda c: c["sequence"])["closed"]


# --------------------------------------------------------------------------- subject data


def test_subject_data_publishes_the_subject_visits_forms_and_open_queries(
    emulator: EmulatorServer, imednet_env: Env
) -> None:
    imednet_env(emulator)
    key = BIG.study_key
    queries = emulator.emulator.rows(key, "queries")
    # a subject with an open query, so the table has something to show
    subject = next(q["subjectKey"] for q in queries if latest_is_open(q))
    state = get_all_subject_data(key, subject, return_state=True)
    data = state.result()
    artifact = artifacts_of(state)[f"subject-{key.lower()}-{subject.lower()}"]
    assert artifact.type == "markdown"
    markdown = artifact.data
    truth = emulator.emulator.rows(key, "subjects")
    site = next(s["siteName"] for s in truth if s["subjectKey"] == subject)
    assert f"# Subject {subject} ({key})" in markdown and site in markdown
    visits = md_rows(markdown, "## Visits")
    assert len(visits) == len(data.visits) > 0
    assert {int(v[-1]) for v in visits} == {v.visit_id for v in data.visits}
    forms = {r[0]: int(r[1]) + int(r[2]) for r in md_rows(markdown, "## Records per form")}
    assert forms == dict(Counter(r.form_key for r in data.records))
    mine = [q for q in queries if q["subjectKey"] == subject]
    listed = {int(r[0]) for r in md_rows(markdown, "## Open queries")}
    assert listed == {q["annotationId"] for q in mine if latest_is_open(q) is not False}
    assert listed


# --------------------------------------------------------------------------- extraction


def test_extract_without_output_dir_lists_rows_per_form_and_the_filters(
    emulator: EmulatorServer, imednet_env: Env
) -> None:
    imednet_env(emulator)
    key = SMALL.study_key
    state = extract_records_by_criteria(
        key, record_filter="formKey==AE,formKey==VS", return_state=True
    )
    frame = state.result()
    artifact = artifacts_of(state)[f"extract-{key.lower()}"]
    rows = table(artifact)
    assert rows[-1] == {"form": "TOTAL", "records": len(frame)}
    assert {r["form"]: r["records"] for r in rows[:-1]} == dict(Counter(frame["formKey"]))
    assert set(frame["formKey"]) == {"AE", "VS"}
    assert "records: `formKey==AE,formKey==VS`" in artifact.description
    assert "No files written" in artifact.description


def test_extract_with_output_dir_lists_the_files_written(
    emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(emulator)
    key = SMALL.study_key
    state = extract_records_by_criteria(key, output_dir=str(tmp_path), return_state=True)
    frame = state.result()
    rows = table(artifacts_of(state)[f"extract-{key.lower()}"])
    files = {r["form"]: r["file"] for r in rows if r["form"] != "TOTAL"}
    assert set(files) == set(frame["formKey"])
    assert all(Path(f).is_file() and Path(f).parent == tmp_path for f in files.values())
    assert sorted(files.values()) == sorted(str(p) for p in tmp_path.glob("form_*.parquet"))


# --------------------------------------------------------------------------- open queries


def test_open_queries_show_age_sites_and_the_queries_without_comments(
    emulator: EmulatorServer, imednet_env: Env
) -> None:
    imednet_env(emulator)
    key = BIG.study_key
    queries = emulator.emulator.rows(key, "queries")
    sites = {s["subjectKey"]: s["siteName"] for s in emulator.emulator.rows(key, "subjects")}
    state = get_open_queries(key, return_state=True)
    now = datetime.now(UTC)
    found = artifacts_of(state)
    rows = table(found[f"open-queries-{key.lower()}"])
    by_id = {q["annotationId"]: q for q in queries}
    ages = []
    for row in rows:
        query = by_id[row["query"]]
        latest = max(query["queryComments"], key=lambda c: c["sequence"])
        assert row["site"] == sites[query["subjectKey"]]
        assert row["days since last comment"] == age_days(latest["date"], now)
        ages.append(row["days since last comment"])
    assert ages == sorted(ages, reverse=True) and len(set(ages)) > 1  # oldest first
    triage = found[f"open-queries-{key.lower()}-triage"].data
    without = {int(r[2]) for r in md_rows(triage, "## Queries without comments")}
    assert without == {q["annotationId"] for q in queries if latest_is_open(q) is None}
    assert without
    summary = {r[0]: r for r in md_rows(triage, "by site")}
    open_per_site = Counter(sites[by_id[r["query"]]["subjectKey"]] for r in rows)
    none_per_site = Counter(sites[by_id[q]["subjectKey"]] for q in without)
    assert {s: int(r[1]) for s, r in summary.items()} == {s: open_per_site[s] for s in summary}
    assert {s: int(r[2]) for s, r in summary.items()} == {s: none_per_site[s] for s in summary}
    for site, row in summary.items():
        site_ages = [r["days since last comment"] for r in rows if r["site"] == site]
        assert row[3] == (str(max(site_ages)) if site_ages else "")
        assert int(row[4]) == sum(1 for a in site_ages if a > STALE_DAYS)


# --------------------------------------------------------------------------- sync progress


def test_sync_progress_ends_with_a_summary(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path
) -> None:
    imednet_env(fresh_emulator)
    state = run_coro_as_sync(
        incremental_sync(
            [SMALL.study_key],
            cache_path=str(tmp_path / "cache.sqlite"),
            snapshot_dir=str(tmp_path / "snapshots"),
            return_state=True,
        )
    )
    result = state.result()
    study = result.studies[SMALL.study_key]
    progress = [a for a in artifacts_of(state).values() if a.type == "progress"]
    assert len(progress) == 1
    assert progress[0].data == 100.0
    assert progress[0].description.startswith(
        f"Sync of {SMALL.study_key} done: {len(COLLECTIONS)} collections, "
    ), progress[0].description
    assert f", {study.requests} requests, " in progress[0].description
    assert len(study.collections) == len(COLLECTIONS)
