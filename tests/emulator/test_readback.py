"""Record values read back the way the API returns them: strings, whatever JSON type was
posted, in the seed's conventions per variable type (api-behaviour.md §3, the spec's
ExampleRecordsList). Posted through the real SDK, read back over raw HTTP and the SDK."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from imednet import ImednetSDK

from imednet_flows.emulator import EmulatorClient, EmulatorServer
from tests.conftest import SMALL
from tests.emulator.test_contract import AUTH

K = SMALL.study_key

#: variable of form REG or DM -> (posted JSON, the string read back)
CASES: dict[str, tuple[Any, str]] = {
    "regyob": (1980, "1980"),  # INTEGER
    "regelig": (True, "true"),  # CHECKBOX
    "regdt": ("2025-05-01", "2025-05-01"),  # DATE
    "reginit": ("ABC", "ABC"),  # TEXT
}
DM_CASES: dict[str, tuple[Any, str]] = {
    "dmage": (52.0, "52"),  # INTEGER sent as a whole float
    "dmheight": (170, "170.0"),  # NUMBER sent as an int: a decimal point, as seeded
    "dmweight": (78.25, "78.25"),  # NUMBER
}


def live_record(server: EmulatorServer, form_key: str) -> dict[str, Any]:
    return next(
        r
        for r in server.emulator.rows(K, "records")
        if r["formKey"] == form_key and not r["deleted"]
    )


def read_back(server: EmulatorServer, record_id: int) -> dict[str, Any]:
    response = httpx.get(
        f"{server.base_url}/api/v1/edc/studies/{K}/records",
        params={"filter": f"recordId=={record_id}"},
        headers=AUTH,
        timeout=10,
    )
    (record,) = response.json()["data"]
    return record["recordData"]


def post_and_wait(sdk: ImednetSDK, items: list[dict[str, Any]]) -> str:
    job = sdk.records.create(K, items)
    final = sdk.poll_job(K, job.batch_id, interval=0, timeout=10)
    return final.state.lower()


def test_typed_json_reads_back_as_strings(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    site = fresh_emulator.emulator.rows(K, "sites")[0]
    dm = live_record(fresh_emulator, "DM")
    items = [
        {
            "formKey": "REG",
            "siteName": site["siteName"],
            "subjectKey": "88-001",
            "data": {name: posted for name, (posted, _) in CASES.items()},
        },
        {
            "formKey": "DM",
            "recordId": dm["recordId"],
            "data": {name: posted for name, (posted, _) in DM_CASES.items()},
        },
    ]
    assert post_and_wait(fresh_sdk, items) == "completed"
    registered = next(
        r for r in fresh_emulator.emulator.rows(K, "records") if r["subjectKey"] == "88-001"
    )
    assert read_back(fresh_emulator, registered["recordId"]) == {
        name: text for name, (_, text) in CASES.items()
    }
    data = read_back(fresh_emulator, dm["recordId"])
    assert {name: data[name] for name in DM_CASES} == {n: t for n, (_, t) in DM_CASES.items()}
    # the SDK's model carries the same strings
    (model,) = fresh_sdk.records.list(K, record_id=dm["recordId"])
    assert {name: model.record_data[name] for name in DM_CASES} == {
        n: t for n, (_, t) in DM_CASES.items()
    }


def test_every_value_of_every_record_is_a_string_after_posts(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    vs = live_record(fresh_emulator, "VS")
    data = {"vssysbp": 131, "vstemp": 36.9, "vsnd": False, "vsdt": None, "vsweight": ""}
    item = {"formKey": "VS", "recordId": vs["recordId"], "data": data}
    assert post_and_wait(fresh_sdk, [item]) == "completed"
    stored = read_back(fresh_emulator, vs["recordId"])
    expected = {"vssysbp": "131", "vstemp": "36.9", "vsnd": "false", "vsdt": "", "vsweight": ""}
    assert {name: stored[name] for name in data} == expected  # null and "" clear to ""
    mixed = [
        (r["recordId"], name)
        for r in fresh_emulator.emulator.rows(K, "records")
        for name, value in r["recordData"].items()
        if not isinstance(value, str)
    ]
    assert mixed == []


def test_the_same_value_typed_is_no_data_change(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    """Posting 131 over the seeded "131" changes the record revision, not the data one."""
    vs = live_record(fresh_emulator, "VS")

    def last_revision() -> dict[str, Any]:
        return [
            r
            for r in fresh_emulator.emulator.rows(K, "recordRevisions")
            if r["recordId"] == vs["recordId"]
        ][-1]

    before = last_revision()
    same = int(vs["recordData"]["vssysbp"])
    item = {"formKey": "VS", "recordId": vs["recordId"], "data": {"vssysbp": same}}
    assert post_and_wait(fresh_sdk, [item]) == "completed"
    after = last_revision()
    assert after["recordRevision"] == before["recordRevision"] + 1
    assert after["dataRevision"] == before["dataRevision"]


@pytest.mark.parametrize("value", [[1, 2], {"a": 1}])
def test_arrays_and_objects_fail_the_job_naming_item_and_variable(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK, value: Any
) -> None:
    vs = live_record(fresh_emulator, "VS")
    before = fresh_emulator.emulator.rows(K, "records")
    item = {"formKey": "VS", "recordId": vs["recordId"], "data": {"vssysbp": value}}
    job = fresh_sdk.records.create(K, [item])
    with pytest.raises(RuntimeError, match="failed"):
        fresh_sdk.poll_job(K, job.batch_id, interval=0, timeout=10)
    error = fresh_emulator.emulator.jobs[job.batch_id].error or ""
    assert "item 0" in error and "vssysbp" in error and "JSON array or object" in error
    assert fresh_emulator.emulator.rows(K, "records") == before


def test_echo_typed_values_returns_json_as_posted(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    fresh_emulator.emulator.configure(echo_typed_values=True)
    vs = live_record(fresh_emulator, "VS")
    data = {"vssysbp": 131, "vstemp": 36.9, "vsnd": False}
    item = {"formKey": "VS", "recordId": vs["recordId"], "data": data}
    assert post_and_wait(fresh_sdk, [item]) == "completed"
    stored = read_back(fresh_emulator, vs["recordId"])
    assert {name: stored[name] for name in data} == data


def test_admin_edit_records_stores_values_as_text(fresh_emulator: EmulatorServer) -> None:
    vs = live_record(fresh_emulator, "VS")
    admin = EmulatorClient(fresh_emulator.base_url, timeout=10)
    try:
        admin.mutate(K, "edit_records", ids=[vs["recordId"]], values={"vspulse": 64, "vsnd": 1})
        assert {k: read_back(fresh_emulator, vs["recordId"])[k] for k in ("vspulse", "vsnd")} == {
            "vspulse": "64",
            "vsnd": "true",
        }
        before = fresh_emulator.emulator.rows(K, "records")
        other = live_record(fresh_emulator, "AE")
        with pytest.raises(ValueError, match=r"has no variable\(s\) \['vspulse'\]"):
            admin.mutate(
                K, "edit_records", ids=[vs["recordId"], other["recordId"]], values={"vspulse": 1}
            )
        assert fresh_emulator.emulator.rows(K, "records") == before  # whole or nothing
    finally:
        admin.close()
