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

from flows.common import (
    FILTER_HELP,
    Concurrency,
    OptionalText,
    StudyKey,
    artifact_key,
    documented,
    param,
)
from flows.connection import imednet_client
from imednet_flows.extraction import Criteria, fetch_records, records_frame, write_form_files
from tasks.api import submitter


@flow(
    name="extract-records-by-criteria",
    task_runner=ThreadPoolTaskRunner(max_workers=8),
    log_prints=False,
)
@documented
def extract_records_by_criteria(
    study_key: StudyKey,
    record_filter: Annotated[
        OptionalText,
        param(
            "Record filter",
            f"Filter on records. {FILTER_HELP} Example: "
            '`formKey==AE;recordStatus=="Record Complete"` or `dateModified>="2025-01-01"`.',
        ),
    ] = "",
    subject_filter: Annotated[
        OptionalText,
        param(
            "Subject filter",
            f"Filter on subjects; only their records are returned. {FILTER_HELP} Example: "
            "`subjectStatus==Enrolled;siteId==3`.",
        ),
    ] = "",
    visit_filter: Annotated[
        OptionalText,
        param(
            "Visit filter",
            f"Filter on visits; only records of those visits are returned. {FILTER_HELP} "
            'Example: `intervalName=="Week 4"` or `visitDate>=2025-01-01`.',
        ),
    ] = "",
    record_data_filter: Annotated[
        OptionalText,
        param(
            "Record data filter",
            "Filter on the values in recordData (records only): `variable==value` with the "
            "same operators, plus `=~` for case-insensitive contains. Leave empty for no "
            "filter. Example: `aeterm=~headache;aeser==Serious`.",
        ),
    ] = "",
    output_dir: Annotated[
        OptionalText,
        param(
            "Parquet output folder",
            "If set, one Parquet file per form is written to this folder, named "
            "`form_{form key}.parquet` (e.g. form_AE.parquet; a key with characters other than "
            "letters, digits, `.`, `_` and `-` gets them replaced and a short hash added, so "
            "two forms never share a file), on the machine that runs the flow. Empty: nothing "
            "is written; the run's artifact lists the rows per form.",
        ),
    ] = "",
    max_concurrency: Concurrency = 0,
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
    files = _write_forms(records, variable_rows, Path(output_dir), study_key) if output_dir else {}
    filters = {
        "records": record_filter,
        "subjects": subject_filter,
        "visits": visit_filter,
        "record data": record_data_filter,
    }
    create_table_artifact(
        key=artifact_key("extract", study_key),
        table=extract_rows(records, files),
        description=extract_description(study_key, len(records), requests, filters, output_dir),
    )
    return frame


def _write_forms(
    records: list[dict], variables: list[dict], folder: Path, study_key: str
) -> dict[str, Path]:
    written = write_form_files(records, variables, folder)
    get_run_logger().info("wrote %d Parquet file(s) for %s to %s", len(written), study_key, folder)
    return written


def extract_rows(records: list[dict], files: dict[str, Path]) -> list[dict[str, object]]:
    """Rows per form, and the file each form went to when files were written: what a person
    checks first after an extraction (did the filter catch the forms I expected?)."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record["formKey"]] = counts.get(record["formKey"], 0) + 1
    rows: list[dict[str, object]] = [
        {"form": k, "records": v, **({"file": str(files[k])} if files else {})}
        for k, v in sorted(counts.items())
    ]
    rows.append({"form": "TOTAL", "records": len(records), **({"file": ""} if files else {})})
    return rows


def extract_description(
    study_key: str, total: int, requests: int, filters: dict[str, str], output_dir: str
) -> str:
    used = [f"{name}: `{text}`" for name, text in filters.items() if text]
    written = (
        f"Written as one Parquet file per form to `{output_dir}`."
        if output_dir
        else "No files written (no output folder given)."
    )
    return (
        f"{total} records extracted from {study_key} in {requests} API request(s). "
        f"Filters: {'; '.join(used) if used else 'none (every record)'}. {written}"
    )
