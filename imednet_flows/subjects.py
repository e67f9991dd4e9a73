"""One subject with everything recorded about it, fetched in four concurrent listings.

Shared by the `get-all-subject-data` flow and `imednet-flows subject`, which differ only in
how the listings are started (`imednet_flows.listing.Submit`).
"""

from __future__ import annotations

from collections.abc import Sequence

from imednet.models.queries import Query
from imednet.models.records import Record
from imednet.models.subjects import Subject
from imednet.models.visits import Visit
from pydantic import BaseModel

from imednet_flows.edc.errors import ImednetFlowsError
from imednet_flows.filter_syntax import quote_value
from imednet_flows.listing import Row, Submit


class SubjectData(BaseModel):
    """One subject with its visits, records and queries, as the SDK's own models."""

    study_key: str
    subject: Subject
    visits: list[Visit]
    records: list[Record]
    queries: list[Query]


class SubjectNotFound(ImednetFlowsError):
    """An unknown subject is an error, not an empty result: a typo must not look like a
    subject with no data."""


def fetch_subject_rows(
    submit: Submit, study_key: str, subject_key: str
) -> dict[str, Sequence[Row]]:
    """The API's rows of the subject and of its visits, records and queries (by route)."""
    where = f"subjectKey=={quote_value(subject_key)}"
    started = {
        route: submit(route, study_key, filter_text=where)
        for route in ("subjects", "visits", "records", "queries")
    }
    rows = {route: pending.result() for route, pending in started.items()}
    if not rows["subjects"]:
        raise SubjectNotFound(
            f"subject {subject_key!r} was not found in study {study_key}; subject keys are "
            f"case-sensitive (list them with `imednet-flows subjects --study {study_key}`)."
        )
    return rows


def subject_data(study_key: str, rows: dict[str, Sequence[Row]]) -> SubjectData:
    return SubjectData(
        study_key=study_key,
        subject=Subject.from_json(rows["subjects"][0]),
        visits=[Visit.from_json(v) for v in rows["visits"]],
        records=[Record.from_json(r) for r in rows["records"]],
        queries=[Query.from_json(q) for q in rows["queries"]],
    )


def fetch_subject_data(submit: Submit, study_key: str, subject_key: str) -> SubjectData:
    return subject_data(study_key, fetch_subject_rows(submit, study_key, subject_key))
