"""Query Management: queries whose latest comment is still open.

get_open_queries --> queries.list --> latest comment of each --> closed? skip : open
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import (
    FILTER_HELP,
    Concurrency,
    OptionalText,
    StudyKey,
    artifact_key,
    documented,
    md_cell,
    md_table,
    param,
)
from flows.connection import imednet_client
from imednet_flows.filter_syntax import dnf
from imednet_flows.queries import OpenQueriesResult, OpenQuery, fetch_open_queries
from imednet_flows.timestamps import to_datetime
from tasks.api import submitter

#: Open queries waiting longer than this are counted apart in the per-site summary.
STALE_DAYS = 30


def age_days(stamp: str, now: datetime) -> int | None:
    """Whole days from an API timestamp (UTC when it names no zone) to `now`."""
    moment = to_datetime(stamp)
    return None if moment is None else (now - moment).days


def waiting_days(query: OpenQuery, now: datetime) -> int | None:
    """How long a query has waited: since its latest comment, or since it was opened when it
    has none. This is what a data manager triages by."""
    return age_days(query.last_comment_at or query.opened, now)


def _oldest_first(queries: list[OpenQuery], now: datetime) -> list[OpenQuery]:
    return sorted(queries, key=lambda q: -(waiting_days(q, now) or 0))


def open_table(open_: list[OpenQuery], now: datetime) -> list[dict[str, object]]:
    return [
        {
            "site": q.site,
            "subject": q.subject_key,
            "days since last comment": _blank_if_none(waiting_days(q, now)),
            "query": q.annotation_id,
            "record": q.record_id or "",
            "variable": q.variable,
            "description": q.description,
            "last comment": q.last_comment,
            "by": q.last_comment_by,
        }
        for q in _oldest_first(open_, now)
    ]


def triage_markdown(
    study_key: str, open_: list[OpenQuery], undetermined: list[OpenQuery], now: datetime
) -> str:
    """Per site: how many queries wait and for how long; then the queries without comments,
    which the API cannot say are open or closed, so someone has to look at them."""
    per_site: dict[str, tuple[list[int], int]] = {}  # site -> (ages of open ones, no comment)
    for q in open_:
        ages = per_site.setdefault(q.site, ([], 0))[0]
        age = waiting_days(q, now)
        ages.append(-1 if age is None else age)
    for q in undetermined:
        ages, none = per_site.get(q.site, ([], 0))
        per_site[q.site] = (ages, none + 1)
    summary = [
        [
            site or "(unknown)",
            len(ages),
            none,
            max(ages) if ages and max(ages) >= 0 else "",
            sum(1 for a in ages if a > STALE_DAYS),
        ]
        for site, (ages, none) in sorted(per_site.items())
    ]
    lines = [
        f"# Open queries of {md_cell(study_key)} by site",
        "",
        md_table(
            ["site", "open", "without comments", "oldest open (days)", f"open > {STALE_DAYS} days"],
            summary,
            empty="no open queries",
        ),
        "",
        f"## Queries without comments ({len(undetermined)})",
        "",
        "The API cannot say whether these are open or closed.",
        "",
        md_table(
            ["site", "subject", "query", "record", "variable", "description", "opened", "days"],
            [
                [
                    q.site,
                    q.subject_key,
                    q.annotation_id,
                    q.record_id or "",
                    q.variable,
                    q.description,
                    q.opened[:10],
                    _blank_if_none(waiting_days(q, now)),
                ]
                for q in _oldest_first(undetermined, now)
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


def _blank_if_none(value: int | None) -> int | str:
    return "" if value is None else value


@flow(name="get-open-queries", task_runner=ThreadPoolTaskRunner(max_workers=2))
@documented
def get_open_queries(
    study_key: StudyKey,
    filters: Annotated[
        OptionalText,
        param(
            "Query filter",
            f"Filter on queries. {FILTER_HELP} Example: `subjectKey==01-001` or "
            '`annotationType==question;dateCreated>="2025-01-01"`.',
        ),
    ] = "",
    max_concurrency: Concurrency = 0,
) -> OpenQueriesResult:
    """Open queries (latest comment not closed), with a table artifact for the UI."""
    dnf(filters)
    with imednet_client(max_concurrency) as client:
        result = fetch_open_queries(submitter(client), study_key, filters)
    open_, undetermined, closed = result.open, result.without_comments, result.closed
    now = datetime.now(UTC)
    create_table_artifact(
        key=artifact_key("open-queries", study_key),
        table=open_table(open_, now),
        description=(
            f"{len(open_)} open of {result.total} queries in {study_key}, oldest latest "
            f"comment first; {closed} closed, {len(undetermined)} without comments (listed "
            f"in the artifact {artifact_key('open-queries', study_key, 'triage')})."
        ),
    )
    create_markdown_artifact(
        key=artifact_key("open-queries", study_key, "triage"),
        markdown=triage_markdown(study_key, open_, undetermined, now),
        description=f"Open queries of {study_key} per site, and queries without comments",
    )
    get_run_logger().info(
        "%s: %d open, %d closed, %d without comments",
        study_key,
        len(open_),
        closed,
        len(undetermined),
    )
    return result
