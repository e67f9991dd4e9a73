"""Subject Data: everything about one subject, fetched concurrently.

get_all_subject_data --> subjects.list --.
                     --> visits.list   --+--> aggregate --> SubjectData
                     --> records.list  --|
                     --> queries.list  --'
"""

from __future__ import annotations

from typing import Annotated

from imednet.models.queries import Query
from imednet.models.records import Record
from imednet.models.subjects import Subject
from imednet.models.visits import Visit
from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from flows.common import Concurrency, StudyKey, documented
from imednet_flows.edc.errors import ImednetFlowsError
from imednet_flows.filter_syntax import quote_value
from tasks.api import list_queries, list_records, list_subjects, list_visits
from tasks.client import imednet_client


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


@flow(name="get-all-subject-data", task_runner=ThreadPoolTaskRunner(max_workers=4))
@documented
def get_all_subject_data(
    study_key: StudyKey,
    subject_key: Annotated[
        str,
        Field(
            min_length=1,
            description=("Protocol subject identifier (subjectKey), e.g. 01-001 (case-sensitive)."),
            examples=["01-001"],
        ),
    ],
    max_concurrency: Concurrency = 4,
) -> SubjectData:
    """Subject, visits, records and queries of one subject, in four concurrent requests."""
    where = f"subjectKey=={quote_value(subject_key)}"
    with imednet_client(max_concurrency) as client:
        futures = {
            "subjects": list_subjects.submit(client, study_key, where),
            "visits": list_visits.submit(client, study_key, where),
            "records": list_records.submit(client, study_key, where),
            "queries": list_queries.submit(client, study_key, where),
        }
        rows = {name: future.result() for name, future in futures.items()}
    if not rows["subjects"]:
        raise SubjectNotFound(
            f"subject {subject_key!r} was not found in study {study_key}; subject keys are "
            "case-sensitive (list them with the subjects endpoint or `imednet-flows subject`)."
        )
    data = SubjectData(
        study_key=study_key,
        subject=Subject.from_json(rows["subjects"][0]),
        visits=[Visit.from_json(v) for v in rows["visits"]],
        records=[Record.from_json(r) for r in rows["records"]],
        queries=[Query.from_json(q) for q in rows["queries"]],
    )
    get_run_logger().info(
        "subject %s: %d visits, %d records, %d queries",
        subject_key,
        len(data.visits),
        len(data.records),
        len(data.queries),
    )
    return data
