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
from pydantic import Field

from flows.common import FILTER_HELP, Concurrency, StudyKey, artifact_key, documented
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
    if output_dir:
        _write_forms(records, variable_rows, Path(output_dir), study_key)
    _summary(study_key, records, requests)
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def _write_forms(records: list[dict], variables: list[dict], folder: Path, study_key: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    by_form: dict[str, list[dict]] = {}
    for record in records:
        by_form.setdefault(record["formKey"], []).append(record)
    for form_key, rows in by_form.items():
        table: pa.Table = records_table(rows, variables, [form_key])
        target = folder / f"form_{_safe(form_key)}.parquet"
        tmp = target.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        tmp.replace(target)
    get_run_logger().info("wrote %d Parquet file(s) for %s to %s", len(by_form), study_key, folder)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


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
