"""Records matching criteria on records, subjects and visits, restricted on the server.

subjects.list --> subject keys --.
visits.list   --> visit ids    --+--> records.list (OR-lists in the filter) --> typed frame
variables.list (column types) ---'

Shared by the `extract-records-by-criteria` flow and `imednet-flows extract`, which differ
only in how the listings are started (`imednet_flows.listing.Submit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from imednet_flows.edc.criteria import restricted
from imednet_flows.edc.paging import study_scope
from imednet_flows.file_names import safe_name
from imednet_flows.filter_syntax import Dnf, dnf
from imednet_flows.frames import records_table
from imednet_flows.listing import Row, Submit


@dataclass(frozen=True)
class Extraction:
    #: Matching records, in recordId order.
    records: list[Row]
    variables: Sequence[Row]
    #: The records filters sent, one request (or paged listing) each.
    chunks: list[Dnf]


@dataclass(frozen=True)
class Criteria:
    """The filters of one extraction, checked: `Criteria.parsed` fails on a typo before any
    credential is read or request sent."""

    base: Dnf
    subject_filter: str | None = None
    visit_filter: str | None = None
    record_data_filter: str | None = None

    @classmethod
    def parsed(
        cls,
        record_filter: str | None = None,
        subject_filter: str | None = None,
        visit_filter: str | None = None,
        record_data_filter: str | None = None,
    ) -> Criteria:
        base = dnf(record_filter)
        dnf(subject_filter)
        dnf(visit_filter)
        if record_data_filter:
            dnf(record_data_filter, "recordDataFilter")
        return cls(base, subject_filter, visit_filter, record_data_filter)


def fetch_records(submit: Submit, study_key: str, criteria: Criteria) -> Extraction:
    scope = study_scope("records", study_key)
    variables = submit("variables", study_key)
    subjects = (
        submit("subjects", study_key, filter_text=criteria.subject_filter)
        if criteria.subject_filter
        else None
    )
    visits = (
        submit("visits", study_key, filter_text=criteria.visit_filter)
        if criteria.visit_filter
        else None
    )
    if visits is not None:
        keep = None if subjects is None else {s["subjectKey"] for s in subjects.result()}
        ids = [v["visitId"] for v in visits.result() if keep is None or v["subjectKey"] in keep]
        chunks = restricted(criteria.base, "visitId", ids, scope)
    elif subjects is not None:
        keys = [s["subjectKey"] for s in subjects.result()]
        chunks = restricted(criteria.base, "subjectKey", keys, scope)
    else:
        chunks = [criteria.base]
    started = [
        submit("records", study_key, record_data_filter=criteria.record_data_filter, groups=chunk)
        for chunk in chunks
    ]
    records = [r for pending in started for r in pending.result()]
    records.sort(key=lambda r: r["recordId"])
    return Extraction(records, variables.result(), chunks)


def records_frame(found: Extraction) -> pd.DataFrame:
    """One row per record, one typed column per variable (the union across forms)."""
    table = records_table(found.records, found.variables, {r["formKey"] for r in found.records})
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def write_form_files(records: list[Row], variables: Sequence[Row], folder: Path) -> dict[str, Path]:
    """One Parquet file per form (form_KEY.parquet), each written whole under a temporary
    name and then renamed, so a reader never opens half a file. Returns form key -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    by_form: dict[str, list[Row]] = {}
    for record in records:
        by_form.setdefault(record["formKey"], []).append(record)
    written = {}
    for form_key, rows in by_form.items():
        table: pa.Table = records_table(rows, variables, [form_key])
        target = folder / f"form_{safe_name(form_key)}.parquet"
        tmp = target.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        tmp.replace(target)
        written[form_key] = target
    return written
