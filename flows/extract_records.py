"""Data Extraction: records matching criteria on records, subjects and visits.

extract_records_by_criteria --> subjects.list --> subject keys --.
                            --> visits.list   --> visit ids    --+--> records.list (restricted
                            --> variables.list (column types)     |    on the server) --> table
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
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
from imednet_flows.edc.criteria import restricted
from imednet_flows.edc.paging import study_scope
from imednet_flows.filter_syntax import dnf
from imednet_flows.frames import records_table
from tasks.api import list_records, list_subjects, list_variables, list_visits
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
            "`form_{form key}.parquet` (e.g. form_AE.parquet), on the machine that runs the "
            "flow. Empty: nothing is written; the run's artifact lists the rows per form.",
        ),
    ] = "",
    max_concurrency: Concurrency = 4,
) -> pd.DataFrame:
    """Records matching every criterion given, one row per record, one typed column per
    variable (the union across forms)."""
    logger = get_run_logger()
    # Parse every filter before the first request: a typo fails in milliseconds.
    base = dnf(record_filter)
    dnf(subject_filter)
    dnf(visit_filter)
    if record_data_filter:
        dnf(record_data_filter, "recordDataFilter")
    scope = study_scope("records", study_key)
    with imednet_client(max_concurrency) as client:
        variables = list_variables.submit(client, study_key)
        subjects = (
            list_subjects.submit(client, study_key, subject_filter) if subject_filter else None
        )
        visits = list_visits.submit(client, study_key, visit_filter) if visit_filter else None
        if visits is not None:
            keep = None if subjects is None else {s["subjectKey"] for s in subjects.result()}
            ids = [v["visitId"] for v in visits.result() if keep is None or v["subjectKey"] in keep]
            chunks = restricted(base, "visitId", ids, scope)
        elif subjects is not None:
            keys = [s["subjectKey"] for s in subjects.result()]
            chunks = restricted(base, "subjectKey", keys, scope)
        else:
            chunks = [base]
        futures = [
            list_records.submit(
                client, study_key, record_data_filter=record_data_filter, groups=chunk
            )
            for chunk in chunks
        ]
        records = [r for f in futures for r in f.result()]
        records.sort(key=lambda r: r["recordId"])
        variable_rows = variables.result()
        requests = client.requests
    table = records_table(records, variable_rows, {r["formKey"] for r in records})
    logger.info(
        "%d records from %d request(s) in %d chunk(s)", table.num_rows, requests, len(chunks)
    )
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
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def _write_forms(
    records: list[dict], variables: list[dict], folder: Path, study_key: str
) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    by_form: dict[str, list[dict]] = {}
    for record in records:
        by_form.setdefault(record["formKey"], []).append(record)
    written = {}
    for form_key, rows in by_form.items():
        table: pa.Table = records_table(rows, variables, [form_key])
        target = folder / f"form_{_safe(form_key)}.parquet"
        tmp = target.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        tmp.replace(target)
        written[form_key] = target
    get_run_logger().info("wrote %d Parquet file(s) for %s to %s", len(by_form), study_key, folder)
    return written


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


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
