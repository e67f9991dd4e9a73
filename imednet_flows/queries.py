"""Open queries: which of a study's queries are still open, decided by the latest comment.

The `get-open-queries` flow and `imednet-flows queries` both classify with this module, so
a query is open in one exactly when it is open in the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from imednet_flows.listing import Submit
from imednet_flows.query_state import latest_comment, query_open


class OpenQuery(BaseModel):
    annotation_id: int
    subject_key: str
    #: The subject's site; "" when not known.
    site: str = ""
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


def classify(
    queries: Sequence[dict[str, Any]], sites: Mapping[str, str] | None = None
) -> tuple[list[OpenQuery], list[OpenQuery], int]:
    """(open, without comments, number closed): the latest comment decides, as in the SDK.
    `sites` maps subject keys to site names, when known."""
    open_, undetermined, closed = [], [], 0
    for query in queries:
        state, last = query_open(query), latest_comment(query)
        if state == 0:
            closed += 1
            continue
        item = OpenQuery(
            annotation_id=query["annotationId"],
            subject_key=query.get("subjectKey") or "",
            site=(sites or {}).get(str(query.get("subjectKey")), ""),
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
        (open_ if state == 1 else undetermined).append(item)
    return open_, undetermined, closed


def open_queries_result(
    study_key: str, queries: Sequence[dict[str, Any]], sites: Mapping[str, str] | None = None
) -> OpenQueriesResult:
    """What the flow returns and the command line prints, from the study's query rows."""
    open_, undetermined, closed = classify(queries, sites)
    return OpenQueriesResult(
        study_key=study_key,
        open=open_,
        without_comments=undetermined,
        closed=closed,
        total=len(queries),
    )


def fetch_open_queries(
    submit: Submit, study_key: str, filters: str | None = None
) -> OpenQueriesResult:
    queries = submit("queries", study_key, filter_text=filters).result()
    # Sites, for the per-site summary; after the queries, so a refused key or an unknown
    # study costs one request, and only when some query is still open.
    subjects = submit("subjects", study_key).result() if queries else []
    sites = {str(s.get("subjectKey")): s.get("siteName") or "" for s in subjects}
    return open_queries_result(study_key, queries, sites)
