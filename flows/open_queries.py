"""Query Management: queries whose latest comment is still open.

get_open_queries --> queries.list --> latest comment of each --> closed? skip : open
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows.common import FILTER_HELP, Concurrency, StudyKey, artifact_key, documented
from imednet_flows.filter_syntax import dnf
from imednet_flows.queries import OpenQueriesResult, open_queries_result
from tasks.api import list_queries
from tasks.client import imednet_client


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
    result = open_queries_result(study_key, queries)
    open_, undetermined, closed = result.open, result.without_comments, result.closed
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
