"""Users and the reference collections (sites, intervals, forms, variables) change the way
a study's set-up changes, and each change is visible to a client that reads by
`dateModified>=` (users, which have no filter, by listing them again)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from imednet import ImednetSDK

from imednet_flows.emulator import EmulatorServer
from tests.conftest import SMALL
from tests.emulator_helpers import get, page_all, post_and_wait

K = SMALL.study_key


def by_id(server: EmulatorServer, route: str, field: str) -> dict[Any, dict[str, Any]]:
    return {row[field]: row for row in server.emulator.rows(K, route)}


def modified_since(server: EmulatorServer, route: str, at: str, field: str) -> set[Any]:
    """Ids a watermark client reads: `dateModified>=at`, page by page."""
    rows = page_all(server, f"/studies/{K}/{route}", {"filter": f'dateModified>="{at}"'})
    return {row[field] for row in rows}


# --------------------------------------------------------------------------- users


def logins(server: EmulatorServer, include_inactive: bool) -> list[str]:
    flag = "true" if include_inactive else "false"
    rows = page_all(server, f"/studies/{K}/users", {"includeInactive": flag})
    return [u["login"] for u in rows]


def test_inactive_users_are_listed_only_when_asked(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    users = fresh_emulator.emulator.rows(K, "users")
    left = {u["login"] for u in users if not u["userActiveInStudy"]}
    assert left and len(users) > 100  # pages at the SDK's size
    assert logins(fresh_emulator, True) == [u["login"] for u in users]
    assert set(logins(fresh_emulator, False)) == {u["login"] for u in users} - left
    every = fresh_sdk.users.list(K, include_inactive=True)
    assert [u.login for u in every] == [u["login"] for u in users]


def test_users_take_no_filter(fresh_emulator: EmulatorServer) -> None:
    """api-behaviour.md §2: the users route has no `filter`; one sent is ignored, not applied."""
    some = fresh_emulator.emulator.rows(K, "users")[0]["login"]
    rows = page_all(
        fresh_emulator,
        f"/studies/{K}/users",
        {"includeInactive": "true", "filter": f"login=={some}"},
    )
    assert len(rows) == len(fresh_emulator.emulator.rows(K, "users"))


def test_add_and_deactivate_users(fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK) -> None:
    emu = fresh_emulator.emulator
    added = emu.mutate(K, "add_users", n=2, role="Data Manager")
    named = emu.mutate(K, "add_users", logins=["zz.former"], active=False)
    users = by_id(fresh_emulator, "users", "userId")
    for user_id in added["ids"]:
        assert users[user_id]["userActiveInStudy"] and users[user_id]["roles"][0]["name"] == (
            "Data Manager"
        )
    active = logins(fresh_emulator, False)
    assert set(added["logins"]) <= set(active) and "zz.former" not in active
    assert "zz.former" in logins(fresh_emulator, True)
    sdk_users = {u.user_id: u for u in fresh_sdk.users.list(K, include_inactive=True)}
    assert set(added["ids"] + named["ids"]) <= set(sdk_users)

    gone = emu.mutate(K, "deactivate_users", logins=[added["logins"][0]])
    assert gone["ids"] == [added["ids"][0]]
    chosen = emu.mutate(K, "deactivate_users", n=2, seed=3)["logins"]
    active = logins(fresh_emulator, False)
    assert not {added["logins"][0], *chosen} & set(active)
    assert {added["logins"][0], *chosen} <= set(logins(fresh_emulator, True))


def test_bad_user_mutations_say_what_is_wrong(fresh_emulator: EmulatorServer) -> None:
    emu = fresh_emulator.emulator
    before = emu.rows(K, "users")
    taken = before[0]["login"]
    with pytest.raises(ValueError, match="role must be one of"):
        emu.mutate(K, "add_users", role="Janitor")
    with pytest.raises(ValueError, match="already taken"):
        emu.mutate(K, "add_users", logins=["fresh.one", taken])
    with pytest.raises(ValueError, match="no user"):
        emu.mutate(K, "deactivate_users", logins=["nobody-here"])
    assert emu.rows(K, "users") == before


# --------------------------------------------------------------------------- sites


def test_add_and_edit_sites(fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK) -> None:
    emu = fresh_emulator.emulator
    sites = by_id(fresh_emulator, "sites", "siteId")
    added = emu.mutate(K, "add_sites", n=2)
    named = emu.mutate(K, "add_sites", names=["Oslo Clinic"], status="Enrollment Closed")
    listed = {s.site_id: s for s in fresh_sdk.sites.list(K)}
    assert set(listed) == set(sites) | set(added["ids"]) | set(named["ids"])
    assert listed[named["ids"][0]].site_name == "Oslo Clinic"
    assert len({s.site_name for s in listed.values()}) == len(listed)
    assert modified_since(fresh_emulator, "sites", added["at"], "siteId") == set(
        added["ids"] + named["ids"]
    )

    first = next(iter(sites))
    toggled = emu.mutate(K, "edit_sites", ids=[first])
    after = by_id(fresh_emulator, "sites", "siteId")[first]
    assert after["siteEnrollmentStatus"] != sites[first]["siteEnrollmentStatus"]
    assert after["dateModified"] == toggled["at"]
    assert first in modified_since(fresh_emulator, "sites", toggled["at"], "siteId")

    renamed = emu.mutate(K, "edit_sites", ids=[first], name="Minneapolis North")
    assert by_id(fresh_emulator, "sites", "siteId")[first]["siteName"] == "Minneapolis North"
    subjects = [s for s in emu.rows(K, "subjects") if s["siteId"] == first]
    assert subjects and all(s["siteName"] == "Minneapolis North" for s in subjects)
    # A name carried by other rows is read at listing time: their dateModified stays.
    assert all(s["dateModified"] < renamed["at"] for s in subjects)
    with pytest.raises(ValueError, match="for one row"):
        emu.mutate(K, "edit_sites", n=2, name="Twin")


# --------------------------------------------------------------------------- intervals, forms


def test_edit_intervals(fresh_emulator: EmulatorServer) -> None:
    emu = fresh_emulator.emulator
    intervals = by_id(fresh_emulator, "intervals", "intervalId")
    widened = emu.mutate(K, "edit_intervals", n=1, seed=2)
    (interval_id,) = widened["ids"]
    after = by_id(fresh_emulator, "intervals", "intervalId")[interval_id]
    before = intervals[interval_id]
    assert after["positiveSlack"] == before["positiveSlack"] + 1
    assert after["negativeSlack"] == before["negativeSlack"] + 1
    assert modified_since(fresh_emulator, "intervals", widened["at"], "intervalId") == {interval_id}
    emu.mutate(K, "edit_intervals", ids=[interval_id], name="Week 3", description="Moved")
    after = by_id(fresh_emulator, "intervals", "intervalId")[interval_id]
    assert (after["intervalName"], after["intervalDescription"]) == ("Week 3", "Moved")
    visits = [v for v in emu.rows(K, "visits") if v["intervalId"] == interval_id]
    assert visits and all(v["intervalName"] == "Week 3" for v in visits)


def test_edit_forms(fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK) -> None:
    emu = fresh_emulator.emulator
    forms = by_id(fresh_emulator, "forms", "formId")
    ae = next(f for f in forms.values() if f["formKey"] == "AE")
    done = emu.mutate(K, "edit_forms", ids=[ae["formId"]], name="Adverse Events v2")
    after = {f.form_id: f for f in fresh_sdk.forms.list(K, refresh=True)}[ae["formId"]]
    assert after.form_name == "Adverse Events v2" and after.revision == ae["revision"] + 1
    assert modified_since(fresh_emulator, "forms", done["at"], "formId") == {ae["formId"]}
    for route in ("variables", "codings"):
        carried = [r for r in emu.rows(K, route) if r["formId"] == ae["formId"]]
        assert carried and all(r["formName"] == "Adverse Events v2" for r in carried)
    scheduled = [f for i in emu.rows(K, "intervals") for f in i["forms"] if f["formKey"] == "AE"]
    assert scheduled and all(f["formName"] == "Adverse Events v2" for f in scheduled)
    emu.mutate(K, "edit_forms", ids=[ae["formId"]], disabled=True)
    assert by_id(fresh_emulator, "forms", "formId")[ae["formId"]]["disabled"] is True


# --------------------------------------------------------------------------- variables


def test_add_variables_gives_a_form_a_new_column(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    emu = fresh_emulator.emulator
    vs = next(f for f in emu.rows(K, "forms") if f["formKey"] == "VS")
    count = len(emu.rows(K, "variables"))
    done = emu.mutate(
        K, "add_variables", form_key="VS", names=["vsspo2"], variable_type="INTEGER", label="SpO2"
    )
    (variable_id,) = done["ids"]
    listed = {v.variable_id: v for v in fresh_sdk.variables.list(K, refresh=True)}
    assert len(listed) == count + 1
    new = listed[variable_id]
    assert (new.variable_name, new.variable_type, new.form_key, new.label) == (
        "vsspo2",
        "INTEGER",
        "VS",
        "SpO2",
    )
    own = [v for v in emu.rows(K, "variables") if v["formId"] == vs["formId"]]
    assert own[-1]["variableId"] == variable_id
    assert own[-1]["sequence"] == max(v["sequence"] for v in own)
    assert modified_since(fresh_emulator, "variables", done["at"], "variableId") == {variable_id}
    form = by_id(fresh_emulator, "forms", "formId")[vs["formId"]]
    assert form["revision"] == vs["revision"] + 1 and form["dateModified"] == done["at"]

    record = next(r for r in emu.rows(K, "records") if r["formKey"] == "VS" and not r["deleted"])
    items = [{"formKey": "VS", "recordId": record["recordId"], "data": {"vsspo2": 97}}]
    assert post_and_wait(fresh_sdk, K, items) == "completed"
    read = get(
        fresh_emulator, f"/studies/{K}/records", {"filter": f"recordId=={record['recordId']}"}
    )
    assert read.json()["data"][0]["recordData"]["vsspo2"] == "97"
    generated = emu.mutate(K, "add_variables", form_id=vs["formId"], n=2)
    names = [
        by_id(fresh_emulator, "variables", "variableId")[i]["variableName"]
        for i in generated["ids"]
    ]
    assert len(set(names)) == 2 and "vsspo2" not in names


def test_edit_variables(fresh_emulator: EmulatorServer) -> None:
    emu = fresh_emulator.emulator
    variables = by_id(fresh_emulator, "variables", "variableId")
    done = emu.mutate(K, "edit_variables", n=2, seed=1)
    after = by_id(fresh_emulator, "variables", "variableId")
    for variable_id in done["ids"]:
        assert after[variable_id]["revision"] == variables[variable_id]["revision"] + 1
        assert after[variable_id]["label"] != variables[variable_id]["label"]
    assert modified_since(fresh_emulator, "variables", done["at"], "variableId") == set(done["ids"])
    emu.mutate(K, "edit_variables", ids=done["ids"][:1], label="Pulse", blinded=True)
    changed = by_id(fresh_emulator, "variables", "variableId")[done["ids"][0]]
    assert (changed["label"], changed["blinded"]) == ("Pulse", True)


@pytest.mark.parametrize(
    ("op", "body", "message"),
    [
        ("add_variables", {"form_key": "NOPE"}, "no form"),
        ("add_variables", {"form_key": "VS", "variable_type": "BLOB"}, "variable_type must be"),
        ("add_variables", {"form_key": "VS", "names": ["vspulse"]}, "already taken in the var"),
        ("add_variables", {}, "exactly one of form_key or form_id"),
        ("edit_forms", {"disabled": "yes"}, "disabled must be true or false"),
        ("add_sites", {"names": ["Chicago"]}, "already taken"),
        ("edit_intervals", {"n": 2, "name": "Same"}, "for one row"),
    ],
)
def test_bad_reference_mutations_are_400_and_change_nothing(
    fresh_emulator: EmulatorServer, op: str, body: dict[str, Any], message: str
) -> None:
    emu = fresh_emulator.emulator
    routes = ("sites", "forms", "intervals", "variables")
    before = {route: emu.rows(K, route) for route in routes}
    response = httpx.post(
        f"{fresh_emulator.base_url}/_emulator/studies/{K}/mutations/{op}", json=body, timeout=10
    )
    assert response.status_code == 400 and message in response.json()["error"]
    assert {route: emu.rows(K, route) for route in routes} == before
