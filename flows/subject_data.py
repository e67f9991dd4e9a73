"""Subject Data: everything about one subject, fetched concurrently.

get_all_subject_data --> subjects.list --.
                     --> visits.list   --+--> aggregate --> SubjectData
                     --> records.list  --|
                     --> queries.list  --'
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import Concurrency, StudyKey, artifact_key, documented, md_cell, md_table, param
from flows.connection import imednet_client
from imednet_flows.queries import classify
from imednet_flows.subjects import (
    SubjectData,
    SubjectNotFound,
    fetch_subject_rows,
    subject_data,
)
from tasks.api import submitter

__all__ = ["SubjectData", "SubjectNotFound", "get_all_subject_data"]


@flow(name="get-all-subject-data", task_runner=ThreadPoolTaskRunner(max_workers=4))
@documented
def get_all_subject_data(
    study_key: StudyKey,
    subject_key: Annotated[
        str,
        param(
            "Subject key",
            "Protocol subject identifier (subjectKey), e.g. 01-001 (case-sensitive).",
            min_length=1,
            pattern=r"\S",
        ),
    ],
    max_concurrency: Concurrency = 0,
) -> SubjectData:
    """Subject, visits, records and queries of one subject, in four concurrent requests."""
    with imednet_client(max_concurrency) as client:
        rows = fetch_subject_rows(submitter(client), study_key, subject_key)
    data = subject_data(study_key, rows)
    create_markdown_artifact(
        key=artifact_key("subject", study_key, subject_key),
        markdown=subject_markdown(data, rows["queries"]),
        description=f"Subject {subject_key} of {study_key}",
    )
    get_run_logger().info(
        "subject %s: %d visits, %d records, %d queries",
        subject_key,
        len(data.visits),
        len(data.records),
        len(data.queries),
    )
    return data


def subject_markdown(data: SubjectData, query_rows: list[dict]) -> str:
    """What a person opens the run for: who the subject is, which visits happened, how many
    records each form has, and which queries are still open (the latest comment decides)."""
    subject = data.subject
    visits = sorted(data.visits, key=lambda v: (v.visit_date or v.start_date or "", v.visit_id))
    per_form: dict[str, list[int]] = {}
    for record in data.records:
        counts = per_form.setdefault(record.form_key, [0, 0])
        counts[1 if record.deleted else 0] += 1
    open_, without_comments, closed = classify(query_rows)
    lines = [
        f"# Subject {md_cell(subject.subject_key)} ({md_cell(data.study_key)})",
        "",
        f"Site **{md_cell(subject.site_name)}**, status **{md_cell(subject.subject_status)}**, "
        f"enrolled {md_cell(_day(subject.enrollment_start_date))}; {len(data.visits)} visits, "
        f"{len(data.records)} records, {len(data.queries)} queries.",
        "",
        f"## Visits ({len(visits)})",
        "",
        md_table(
            ["interval", "visit date", "window start", "window end", "visit id"],
            [
                [
                    v.interval_name,
                    _day(v.visit_date),
                    _day(v.start_date),
                    _day(v.end_date),
                    v.visit_id,
                ]
                for v in visits
            ],
        ),
        "",
        f"## Records per form ({len(data.records)})",
        "",
        md_table(
            ["form", "records", "deleted"],
            [[form, n, deleted] for form, (n, deleted) in sorted(per_form.items())],
        ),
        "",
        f"## Open queries ({len(open_)} open, {closed} closed, "
        f"{len(without_comments)} without comments)",
        "",
        md_table(
            ["query", "record", "variable", "description", "last comment", "by", "on"],
            [
                [
                    q.annotation_id,
                    q.record_id or "",
                    q.variable,
                    q.description,
                    q.last_comment,
                    q.last_comment_by,
                    _day(q.last_comment_at),
                ]
                for q in open_ + without_comments
            ],
            empty="no open queries",
        ),
    ]
    return "\n".join(lines) + "\n"


def _day(value: object) -> str:
    """Dates as the day only: the API's timestamps carry times nobody triages by."""
    if value is None or value == "":
        return ""
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return text[:10]
