"""The audit trail and codings follow every change of a record: POST jobs of each mode and
admin mutations, through the real SDK and raw HTTP against a fresh emulator."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from imednet import ImednetSDK

from imednet_flows.emulator import EmulatorServer
from tests.conftest import SMALL
from tests.emulator_helpers import page_all, post_and_wait

K = SMALL.study_key


def revisions_of(server: EmulatorServer, record_id: int) -> list[dict[str, Any]]:
    return [r for r in server.emulator.rows(K, "recordRevisions") if r["recordId"] == record_id]


def live(server: EmulatorServer, form_key: str, coded: bool | None = None) -> dict[str, Any]:
    """A live record of the form; `coded`: with (True) or without (False) a coded value."""
    for record in server.emulator.rows(K, "records"):
        if record["formKey"] != form_key or record["deleted"]:
            continue
        term = record["recordData"].get("aeterm" if form_key == "AE" else "cmtrt")
        if coded is None or bool(term) == coded:
            return record
    raise AssertionError(f"no such {form_key} record in the seed")


def coding_of(server: EmulatorServer, record_id: int) -> dict[str, Any] | None:
    found = [c for c in server.emulator.rows(K, "codings") if c["recordId"] == record_id]
    assert len(found) <= 1
    return found[0] if found else None


def new_revisions(
    server: EmulatorServer, record_id: int, before: list[dict[str, Any]], count: int
) -> list[dict[str, Any]]:
    """The `count` revisions changes added, checked against the record's counters."""
    after = revisions_of(server, record_id)
    assert after[: len(before)] == before  # append-only
    added = after[len(before) :]
    assert len(added) == count
    last = before[-1]["recordRevision"] if before else 0
    assert [r["recordRevision"] for r in added] == list(range(last + 1, last + count + 1))
    return added


def new_revision(
    server: EmulatorServer, record_id: int, before: list[dict[str, Any]]
) -> dict[str, Any]:
    """The one revision a change added."""
    return new_revisions(server, record_id, before, 1)[0]


def assert_audit_trail_in_order(server: EmulatorServer) -> None:
    """recordRevisionId only grows and dateCreated never goes backwards."""
    revisions = server.emulator.rows(K, "recordRevisions")
    ids = [r["recordRevisionId"] for r in revisions]
    created = [r["dateCreated"] for r in revisions]
    assert ids == sorted(set(ids)) and created == sorted(created)


# --------------------------------------------------------------------------- POST jobs


def test_each_save_of_a_post_adds_one_revision_by_the_api_user(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    emu = fresh_emulator.emulator
    record = live(fresh_emulator, "VS")
    interval = next(i for i in emu.rows(K, "intervals") if i["intervalId"] == record["intervalId"])
    site = emu.rows(K, "sites")[0]
    before = revisions_of(fresh_emulator, record["recordId"])
    known = {r["recordId"] for r in emu.rows(K, "records")}
    items = [
        # update by recordId, then a scheduled upsert of the same record: one save each
        {"formKey": "VS", "recordId": record["recordId"], "data": {"vspulse": 171}},
        {
            "formKey": "VS",
            "subjectKey": record["subjectKey"],
            "intervalName": interval["intervalName"],
            "data": {"vsresp": 41},
        },
        {"formKey": "VS", "subjectKey": record["subjectKey"], "data": {"vspulse": 70}},  # new
        {"formKey": "REG", "siteName": site["siteName"], "subjectKey": "88-001", "data": {}},
    ]
    assert post_and_wait(fresh_sdk, K, items) == "completed"

    updated, upserted = new_revisions(fresh_emulator, record["recordId"], before, 2)
    data_revision = before[-1]["dataRevision"]
    assert (updated["dataRevision"], upserted["dataRevision"]) == (
        data_revision + 1,
        data_revision + 2,
    )
    created = [r for r in emu.rows(K, "records") if r["recordId"] not in known]
    assert len(created) == 2
    for new in created:
        (revision,) = revisions_of(fresh_emulator, new["recordId"])
        assert (revision["recordRevision"], revision["dataRevision"]) == (1, 1)
        assert revision["dateCreated"] == new["dateModified"]
    for revision in [
        updated,
        upserted,
        *(revisions_of(fresh_emulator, r["recordId"])[0] for r in created),
    ]:
        assert (revision["user"], revision["role"], revision["reasonForChange"]) == (
            "api-user",
            "API",
            "",
        )
    assert_audit_trail_in_order(fresh_emulator)


def test_posting_the_same_values_is_a_revision_without_a_data_change(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    record = live(fresh_emulator, "VS")
    before = revisions_of(fresh_emulator, record["recordId"])
    same = {"vspulse": record["recordData"]["vspulse"]}
    items = [{"formKey": "VS", "recordId": record["recordId"], "data": same}]
    assert post_and_wait(fresh_sdk, K, items) == "completed"
    added = new_revision(fresh_emulator, record["recordId"], before)
    assert added["dataRevision"] == before[-1]["dataRevision"]


# --------------------------------------------------------------------------- admin mutations


def test_edit_records_carries_user_role_and_reason(fresh_emulator: EmulatorServer) -> None:
    emu = fresh_emulator.emulator
    record = live(fresh_emulator, "DM")
    before = revisions_of(fresh_emulator, record["recordId"])
    emu.mutate(
        K,
        "edit_records",
        ids=[record["recordId"]],
        values={"dmage": 60},
        user="jkhan",
        role="Principal Investigator",
        reason="Corrected per source",
    )
    added = new_revision(fresh_emulator, record["recordId"], before)
    assert (added["user"], added["role"], added["reasonForChange"]) == (
        "jkhan",
        "Principal Investigator",
        "Corrected per source",
    )
    assert added["dataRevision"] == before[-1]["dataRevision"] + 1


def test_admin_changes_default_to_a_site_user_and_a_reason(fresh_emulator: EmulatorServer) -> None:
    emu = fresh_emulator.emulator
    users = {u["login"]: u for u in emu.rows(K, "users")}
    edited, deleted = (r["recordId"] for r in emu.rows(K, "records")[3:5])
    before = {rid: revisions_of(fresh_emulator, rid) for rid in (edited, deleted)}
    emu.mutate(K, "edit_records", ids=[edited])
    emu.mutate(K, "soft_delete", ids=[deleted])
    edit = new_revision(fresh_emulator, edited, before[edited])
    delete = new_revision(fresh_emulator, deleted, before[deleted])
    assert edit["reasonForChange"] == "Data correction"
    assert delete["reasonForChange"] == "Entered in error"
    for revision in (edit, delete):
        user = users[revision["user"]]
        assert user["userActiveInStudy"] and user["roles"][0]["type"] == "Site"
        assert revision["role"] == user["roles"][0]["name"]
    # A soft delete changes no data: a revision flagged deleted, dataRevision kept.
    assert delete["deleted"] is True
    assert delete["dataRevision"] == before[deleted][-1]["dataRevision"]
    # A user named without a role takes the role held in the study.
    pi = next(u for u in users.values() if u["roles"][0]["name"] == "Principal Investigator")
    third = emu.rows(K, "records")[6]["recordId"]
    emu.mutate(K, "edit_records", ids=[third], user=pi["login"])
    assert revisions_of(fresh_emulator, third)[-1]["role"] == "Principal Investigator"


def test_bad_authors_are_refused_before_any_change(fresh_emulator: EmulatorServer) -> None:
    emu = fresh_emulator.emulator
    before = emu.rows(K, "recordRevisions")
    with pytest.raises(ValueError, match="user must be a string"):
        emu.mutate(K, "edit_records", n=2, user=7)
    response = httpx.post(
        f"{fresh_emulator.base_url}/_emulator/studies/{K}/mutations/soft_delete",
        json={"n": 1, "role": ""},
        timeout=10,
    )
    assert response.status_code == 400 and "must not be empty" in response.json()["error"]
    assert emu.rows(K, "recordRevisions") == before


def test_at_sets_date_modified_but_never_back_dates_the_audit_trail(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    emu = fresh_emulator.emulator
    first = emu.mutate(K, "edit_records", n=2, seed=1)
    past = "2024-06-01 10:00:00"
    edited = emu.mutate(K, "edit_records", n=3, seed=2, at=past)
    records = {r["recordId"]: r for r in emu.rows(K, "records")}
    for record_id in edited["ids"]:
        assert records[record_id]["dateModified"] == past
        assert revisions_of(fresh_emulator, record_id)[-1]["dateCreated"] >= first["at"]
    record = live(fresh_emulator, "VS")
    items = [{"formKey": "VS", "recordId": record["recordId"], "data": {"vspulse": 66}}]
    assert post_and_wait(fresh_sdk, K, items) == "completed"
    emu.mutate(K, "soft_delete", n=2, seed=3)
    assert_audit_trail_in_order(fresh_emulator)


def test_hard_deleted_records_keep_their_revisions(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    emu = fresh_emulator.emulator
    record_id = emu.mutate(K, "edit_records", n=1, seed=5)["ids"][0]
    trail = revisions_of(fresh_emulator, record_id)
    assert len(trail) >= 2
    emu.mutate(K, "hard_delete", ids=[record_id])
    assert record_id not in {r.record_id for r in fresh_sdk.records.list(K)}
    listed = fresh_sdk.record_revisions.list(K, record_id=record_id)
    assert [r.record_revision_id for r in listed] == [r["recordRevisionId"] for r in trail]
    assert revisions_of(fresh_emulator, record_id) == trail


# --------------------------------------------------------------------------- codings


def test_an_edit_of_a_coded_value_recodes_its_coding(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    emu = fresh_emulator.emulator
    record = live(fresh_emulator, "AE", coded=True)
    before = coding_of(fresh_emulator, record["recordId"])
    assert before is not None
    term = "Skin rash" if record["recordData"]["aeterm"] != "Skin rash" else "Fever"
    done = emu.mutate(K, "edit_records", ids=[record["recordId"]], values={"aeterm": term})
    after = coding_of(fresh_emulator, record["recordId"])
    assert after is not None and after["codingId"] == before["codingId"]
    assert (
        after["value"] == term and after["code"] == {"Skin rash": "Rash", "Fever": "Pyrexia"}[term]
    )
    assert after["revision"] == before["revision"] + 1
    assert after["dateCoded"] == done["at"] > before["dateCoded"]
    # A sync filters codings by dateCoded: the re-coded one is seen, the others are not.
    changed = fresh_sdk.codings.list(K, date_coded=(">=", done["at"]))
    assert [c.coding_id for c in changed] == [before["codingId"]]
    # Codings stay in their default order, recordId.
    record_ids = [c["recordId"] for c in page_all(fresh_emulator, f"/studies/{K}/codings")]
    assert record_ids == sorted(record_ids)


def test_a_posted_coded_value_codes_a_record_that_had_none(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    emu = fresh_emulator.emulator
    record = live(fresh_emulator, "CM", coded=False)
    assert coding_of(fresh_emulator, record["recordId"]) is None
    count = len(emu.rows(K, "codings"))
    items = [{"formKey": "CM", "recordId": record["recordId"], "data": {"cmtrt": "Advil"}}]
    assert post_and_wait(fresh_sdk, K, items) == "completed"
    coding = coding_of(fresh_emulator, record["recordId"])
    assert coding is not None and len(emu.rows(K, "codings")) == count + 1
    assert (coding["value"], coding["code"], coding["revision"]) == ("Advil", "IBUPROFEN", 1)
    assert coding["dictionaryName"] == "WHODrug" and coding["codingId"] > max(
        c["codingId"] for c in emu.rows(K, "codings") if c["recordId"] != record["recordId"]
    )
    # An edit of another value of that record leaves its coding alone.
    emu.mutate(K, "edit_records", ids=[record["recordId"]], values={"cmindc": "Pain"})
    assert coding_of(fresh_emulator, record["recordId"]) == coding


def test_recode_and_hard_delete_of_codings(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    emu = fresh_emulator.emulator
    codings = {c["codingId"]: c for c in emu.rows(K, "codings")}
    done = emu.mutate(K, "recode", n=2, seed=4, reason="Medical review", coded_by="Ann Lee")
    after = {c["codingId"]: c for c in emu.rows(K, "codings")}
    for coding_id in done["ids"]:
        old, new = codings[coding_id], after[coding_id]
        assert new["code"] != old["code"] and new["revision"] == old["revision"] + 1
        assert (new["dateCoded"], new["reason"], new["codedBy"]) == (
            done["at"],
            "Medical review",
            "Ann Lee",
        )
        assert new["value"] == old["value"]
    seen = {c.coding_id for c in fresh_sdk.codings.list(K, date_coded=(">=", done["at"]))}
    assert seen == set(done["ids"])
    given = emu.mutate(K, "recode", ids=[done["ids"][0]], code="Headache")
    assert {c["codingId"]: c for c in emu.rows(K, "codings")}[given["ids"][0]]["code"] == "Headache"

    gone = emu.mutate(K, "hard_delete", entity="codings", n=3, seed=6)["ids"]
    listed = {c.coding_id for c in fresh_sdk.codings.list(K)}
    assert listed == set(codings) - set(gone)
    with pytest.raises(ValueError, match="no deleted flag"):
        emu.mutate(K, "soft_delete", entity="codings", n=1)
