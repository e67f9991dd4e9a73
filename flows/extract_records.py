"""Data Extraction: records matching criteria on records, subjects and visits.

extract_records_by_criteria --> subjects.list --> subject keys --.
                            --> visits.list   --> visit ids    --+--> records.list (restricted
                            --> variables.list (column types)     |    on the server) --> table
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows.common import FILTER_HELP, Concurrency, StudyKey, artifact_key, documented
from imednet_flows.extraction import Criteria, fetch_records, records_frame, write_form_files
from tasks.api import submitter
from tasks.client import imednet_client


@flow(
    name="extract-records-by-criteria",
    task_runner=ThreadPoolTaskRunner(max_workers=8),
    log_prints=False,
)
@documented
def extract_records_by_criteria(
    study_key: StudyKey,
    record_filter: Annotated[
        str | None,
        Field(
            description=(
                f"Filter on records. {FILTER_HELP} Example: "
                '`formKey==AE;recordStatus=="Record Complete"` or `dateModified>="2025-01-01"`.'
            )
        ),
    ] = None,
    subject_filter: Annotated[
        str | None,
        Field(
            description=(
                f"Filter on subjects; only their records are returned. {FILTER_HELP} Example: "
                "`subjectStatus==Enrolled;siteId==3`."
            )
        ),
    ] = None,
    visit_filter: Annotated[
        str | None,
        Field(
            description=(
                f"Filter on visits; only records of those visits are returned. {FILTER_HELP} "
                'Example: `intervalName=="Week 4"` or `visitDate>=2025-01-01`.'
            )
        ),
    ] = None,
    record_data_filter: Annotated[
        str | None,
        Field(
            description=(
                "Filter on recordData values (records only): `variable<op>value`, plus `=~` for "
                "case-insensitive contains. Example: `aeterm=~headache;aeser==Serious`."
            )
        ),
    ] = None,
    output_dir: Annotated[
        str | None,
        Field(
            description=("If set, one Parquet file per form is written here (form_<KEY>.parquet).")
        ),
    ] = None,
    max_concurrency: Concurrency = 4,
) -> pd.DataFrame:
    """Records matching every criterion given, one row per record, one typed column per
    variable (the union across forms)."""
    logger = get_run_logger()
    # Every filter is parsed before the first request: a typo fails in milliseconds.
    criteria = Criteria.parsed(record_filter, subject_filter, visit_filter, record_data_filter)
    with imednet_client(max_concurrency) as client:
        found = fetch_records(submitter(client), study_key, criteria)
        requests = client.requests
    records, variable_rows, chunks = found.records, found.variables, found.chunks
    frame = records_frame(found)
    logger.info("%d records from %d request(s) in %d chunk(s)", len(frame), requests, len(chunks))
    if output_dir:
        _write_forms(records, variable_rows, Path(output_dir), study_key)
    _summary(study_key, records, requests)
    return frame


def _write_forms(records: list[dict], variables: list[dict], folder: Path, study_key: str) -> None:
    written = write_form_files(records, variables, folder)
    get_run_logger().info("wrote %d Parquet file(s) for %s to %s", len(written), study_key, folder)


def _summary(study_key: str, records: list[dict], requests: int) -> None:
    counts: dict[str, int] = {}
    for record in records:
        counts[record["formKey"]] = counts.get(record["formKey"], 0) + 1
    rows = [{"form": k, "records": v} for k, v in sorted(counts.items())]
    rows.append({"form": "TOTAL", "records": len(records)})
    create_table_artifact(
        key=artifact_key("extract", study_key),
        table=rows,
        description=f"Records extracted from {study_key} in {requests} API request(s).",
    )
