"""Query Management: queries whose latest comment is still open.

get_open_queries --> queries.list --> latest comment of each --> closed? skip : open
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from flows.common import FILTER_HELP, Concurrency, StudyKey, artifact_key, documented
from imednet_flows.filter_syntax import dnf
from tasks.api import list_queries
from tasks.client import imednet_client


class OpenQuery(BaseModel):
    annotation_id: int
    subject_key: str
    record_id: int | None
    variable: str
    description: str
    annotation_type: str
    opened: str
    last_comment: str
    last_comment_by: str
    last_comment_at: str
    comments: int


class OpenQueriesResult(BaseModel):
    study_key: str
    open: list[OpenQuery]
    #: Queries with no comment at all: open or closed cannot be told, so they are listed apart.
    without_comments: list[OpenQuery]
    closed: int
    total: int


def latest_comment(query: dict[str, Any]) -> dict[str, Any] | None:
    comments = query.get("queryComments") or []
    return max(comments, key=lambda c: c.get("sequence") or 0) if comments else None


def classify(queries: list[dict[str, Any]]) -> tuple[list[OpenQuery], list[OpenQuery], int]:
    """(open, without comments, number closed): the latest comment decides, as in the SDK."""
    open_, undetermined, closed = [], [], 0
    for query in queries:
        last = latest_comment(query)
        if last is not None and last.get("closed"):
            closed += 1
            continue
        item = OpenQuery(
            annotation_id=query["annotationId"],
            subject_key=query.get("subjectKey") or "",
            record_id=query.get("recordId") or None,
            variable=query.get("variable") or "",
            description=query.get("description") or "",
            annotation_type=query.get("annotationType") or "",
            opened=query.get("dateCreated") or "",
            last_comment=(last or {}).get("comment") or "",
            last_comment_by=(last or {}).get("user") or "",
            last_comment_at=(last or {}).get("date") or "",
            comments=len(query.get("queryComments") or []),
        )
        (open_ if last is not None else undetermined).append(item)
    return open_, undetermined, closed


def _age_days(stamp: str, now: datetime) -> int | str:
    try:
        return (now - datetime.fromisoformat(stamp).replace(tzinfo=UTC)).days
    except ValueError:
        return ""


@flow(name="get-open-queries", task_runner=ThreadPoolTaskRunner(max_workers=2))
@documented
def get_open_queries(
    study_key: StudyKey,
    filters: Annotated[
        str | None,
        Field(
            description=(
                f"Optional filter on queries. {FILTER_HELP} Example: `subjectKey==01-001` or "
                '`annotationType==question;dateCreated>="2025-01-01"`.'
            )
        ),
    ] = None,
    max_concurrency: Concurrency = 4,
) -> OpenQueriesResult:
    """Open queries (latest comment not closed), with a table artifact for the UI."""
    dnf(filters)
    with imednet_client(max_concurrency) as client:
        queries = list_queries.submit(client, study_key, filters).result()
    open_, undetermined, closed = classify(queries)
    result = OpenQueriesResult(
        study_key=study_key,
        open=open_,
        without_comments=undetermined,
        closed=closed,
        total=len(queries),
    )
    now = datetime.now(UTC)
    table = [
        {
            "subject": q.subject_key,
            "query": q.annotation_id,
            "record": q.record_id or "",
            "variable": q.variable,
            "description": q.description,
            "last comment": q.last_comment,
            "by": q.last_comment_by,
            "age (days)": _age_days(q.opened, now),
        }
        for q in open_
    ]
    create_table_artifact(
        key=artifact_key("open-queries", study_key),
        table=table,
        description=(
            f"{len(open_)} open of {len(queries)} queries in {study_key}; "
            f"{closed} closed, {len(undetermined)} without comments "
            "(open/closed unknown)."
        ),
    )
    get_run_logger().info(
        "%s: %d open, %d closed, %d without comments",
        study_key,
        len(open_),
        closed,
        len(undetermined),
    )
    return result
