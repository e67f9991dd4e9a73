"""Typed values posted through the upsert flow come back out of every export typed right:
the sync's Parquet snapshots, `imednet-flows cache export` (with and without --form) and
the extraction flow's per-form files. Real emulator, real SDK, real Prefect API.

Run twice: against the API's read-back (strings) and against a server that echoes the
typed JSON it was sent, where one column mixes seeded strings with posted numbers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flows.extract_records import extract_records_by_criteria
from flows.incremental_sync import run_incremental_sync
from flows.upsert_records import create_or_update_records
from imednet_flows.cli import app
from imednet_flows.emulator import EmulatorServer
from tests.conftest import SMALL

pytestmark = pytest.mark.usefixtures("prefect_api")
Env = Callable[[EmulatorServer], None]
K = SMALL.study_key
FAST = {"poll_interval": 0.05, "timeout": 20}

#: Typed JSON posted per form, and the typed values every export must hold for it.
POSTED = {
    "VS": {"vssysbp": 131, "vstemp": 36.9, "vsnd": False, "vsdt": "2025-01-02"},
    "AE": {"aeterm": "Migraine", "aedur": 7, "aeongo": True},
}
EXPECTED = {
    "VS": {"vssysbp": 131, "vstemp": 36.9, "vsnd": False, "vsdt": date(2025, 1, 2)},
    "AE": {"aeterm": "Migraine", "aedur": 7, "aeongo": True},
}
TYPES = {
    "vssysbp": pa.int64(),
    "vstemp": pa.float64(),
    "vsnd": pa.bool_(),
    "vsdt": pa.date32(),
    "aeterm": pa.string(),
    "aedur": pa.int64(),
    "aeongo": pa.bool_(),
}


def _targets(server: EmulatorServer) -> dict[str, int]:
    live = [r for r in server.emulator.rows(K, "records") if not r["deleted"]]
    return {form: next(r["recordId"] for r in live if r["formKey"] == form) for form in POSTED}


def _check_form_table(
    table: pa.Table, server: EmulatorServer, form: str, record_id: int, where: str
) -> None:
    for name in EXPECTED[form]:
        assert table.schema.field(name).type == TYPES[name], (where, name)
    rows = {r["recordId"]: r for r in table.to_pylist()}
    assert {name: rows[record_id][name] for name in EXPECTED[form]} == EXPECTED[form], where
    # every other value the server holds was typed too, none turned into a null
    truth = {r["recordId"]: r["recordData"] for r in server.emulator.rows(K, "records")}
    for rid, row in rows.items():
        for name in EXPECTED[form]:
            present = truth[rid].get(name) not in (None, "")
            assert (row[name] is not None) == present, (where, rid, name)


@pytest.mark.parametrize("echo_typed", [False, True], ids=["api-strings", "typed-echo"])
def test_typed_upsert_then_sync_then_every_export(
    fresh_emulator: EmulatorServer, imednet_env: Env, tmp_path: Path, echo_typed: bool
) -> None:
    imednet_env(fresh_emulator)
    fresh_emulator.emulator.configure(echo_typed_values=echo_typed)
    targets = _targets(fresh_emulator)
    rows: list[dict[str, Any]] = [
        {"formKey": form, "recordId": targets[form], "data": data} for form, data in POSTED.items()
    ]
    create_or_update_records(K, rows, **FAST)

    cache = tmp_path / "cache.sqlite"
    snapshots = tmp_path / "snapshots"
    run_incremental_sync([K], cache_path=str(cache), snapshot_dir=str(snapshots))
    latest = snapshots / K / "latest"
    written = sorted(p.relative_to(latest).as_posix() for p in latest.rglob("*.parquet"))
    assert {"records.parquet", "forms/VS.parquet", "forms/AE.parquet"} <= set(written)
    for relative in written:
        pq.read_table(latest / relative)  # every file readable
    for form, record_id in targets.items():
        table = pq.read_table(latest / "forms" / f"{form}.parquet")
        _check_form_table(table, fresh_emulator, form, record_id, f"snapshot {form}")

    runner = CliRunner()
    everything = tmp_path / "all.parquet"
    result = runner.invoke(
        app, ["cache", "export", "--study", K, "--cache", str(cache), "--out", str(everything)]
    )
    assert result.exit_code == 0, result.output
    exported = pq.read_table(everything)
    assert exported.num_rows == sum(
        1 for r in fresh_emulator.emulator.rows(K, "records") if not r["deleted"]
    )
    ids, data_column = exported["recordId"].to_pylist(), exported["recordData"].to_pylist()
    data = dict(zip(ids, data_column, strict=True))
    assert {k: data[targets["AE"]][k] for k in POSTED["AE"]} == {
        "aeterm": "Migraine",
        "aedur": "7",
        "aeongo": "true",
    }
    for form, record_id in targets.items():
        out = tmp_path / f"{form}.parquet"
        args = ["cache", "export", "--study", K, "--cache", str(cache), "--form", form]
        result = runner.invoke(app, [*args, "--out", str(out)])
        assert result.exit_code == 0, result.output
        table = pq.read_table(out)
        _check_form_table(table, fresh_emulator, form, record_id, f"cache export {form}")

    extract_dir = tmp_path / "extract"
    frame = extract_records_by_criteria(K, output_dir=str(extract_dir))
    assert len(frame) > 0
    for form, record_id in targets.items():
        table = pq.read_table(extract_dir / f"form_{form}.parquet")
        _check_form_table(table, fresh_emulator, form, record_id, f"extract {form}")
