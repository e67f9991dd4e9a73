"""Subject Data: everything about one subject, fetched concurrently.

get_all_subject_data --> subjects.list --.
                     --> visits.list   --+--> aggregate --> SubjectData
                     --> records.list  --|
                     --> queries.list  --'
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows.common import Concurrency, StudyKey, documented
from imednet_flows.subjects import SubjectData, SubjectNotFound, fetch_subject_data
from tasks.api import submitter
from tasks.client import imednet_client

__all__ = ["SubjectData", "SubjectNotFound", "get_all_subject_data"]


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
    with imednet_client(max_concurrency) as client:
        data = fetch_subject_data(submitter(client), study_key, subject_key)
    get_run_logger().info(
        "subject %s: %d visits, %d records, %d queries",
        subject_key,
        len(data.visits),
        len(data.records),
        len(data.queries),
    )
    return data
