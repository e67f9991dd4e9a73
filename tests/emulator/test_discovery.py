"""Study discovery (`GET /studies`, a study taken away) and a route the server refuses for
this key, through the real SDK and raw HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from imednet import ImednetSDK
from imednet.errors import ForbiddenError

from imednet_flows.emulator import EmulatorClient, EmulatorServer, StudySpec, running_emulator
from tests.conftest import SMALL, make_sdk
from tests.emulator_helpers import STUDY_ROUTES, get

K = SMALL.study_key
OTHER = StudySpec(study_key="ONC-7", study_id=3, seed=7, subjects=3)


@pytest.fixture
def two_studies() -> Iterator[EmulatorServer]:
    with running_emulator([SMALL, OTHER]) as server:
        yield server


def test_a_removed_study_leaves_the_listing_and_answers_403(two_studies: EmulatorServer) -> None:
    emu = two_studies.emulator
    with make_sdk(two_studies) as sdk:
        assert [s.study_key for s in sdk.studies.list()] == [OTHER.study_key, K]
        emu.remove_study(OTHER.study_key)
        assert [s.study_key for s in sdk.studies.list(refresh=True)] == [K]
        assert [s["studyKey"] for s in emu.studies()] == [K]
        with pytest.raises(ForbiddenError):
            sdk.records.list(OTHER.study_key)
        assert len(sdk.sites.list(K)) == SMALL.sites
    for route in STUDY_ROUTES:
        response = get(two_studies, f"/studies/{OTHER.study_key}/{route}")
        assert response.status_code == 403, route
        assert response.json()["metadata"]["status"] == "ERROR"
    with pytest.raises(KeyError, match="unknown study"):
        emu.remove_study(OTHER.study_key)


def test_remove_and_add_a_study_through_the_admin_route(two_studies: EmulatorServer) -> None:
    admin = EmulatorClient(two_studies.base_url, timeout=30)
    try:
        assert admin.remove_study(OTHER.study_key) == [K]
        with pytest.raises(ValueError, match="unknown study"):
            admin.remove_study(OTHER.study_key)
        assert [s["studyKey"] for s in admin.studies()] == [K]
        with pytest.raises(ValueError, match="already exists"):
            admin.add_study(study_key=K, study_id=SMALL.study_id, subjects=1)
        assert admin.add_study(study_key=OTHER.study_key, study_id=3, subjects=2) == [
            K,
            OTHER.study_key,
        ]
        assert get(two_studies, f"/studies/{OTHER.study_key}/subjects").status_code == 200
    finally:
        admin.close()


def test_a_forbidden_route_is_403_on_that_route_only(
    fresh_emulator: EmulatorServer, fresh_sdk: ImednetSDK
) -> None:
    fresh_emulator.emulator.configure(forbidden_routes=["users"])
    response = get(fresh_emulator, f"/studies/{K}/users", {"includeInactive": "true"})
    assert response.status_code == 403
    body = response.json()
    assert set(body) == {"metadata"} and body["metadata"]["status"] == "ERROR"
    assert '"users"' in body["metadata"]["error"]["description"]
    with pytest.raises(ForbiddenError):
        fresh_sdk.users.list(K)
    for route in STUDY_ROUTES:
        if route != "users":
            assert get(fresh_emulator, f"/studies/{K}/{route}").status_code == 200, route
    assert get(fresh_emulator, "/studies").status_code == 200
    # The truth is the data, not an answer of the API: it still has the users.
    assert fresh_emulator.emulator.rows(K, "users")


def test_forbidden_routes_through_the_admin_route(fresh_emulator: EmulatorServer) -> None:
    url = f"{fresh_emulator.base_url}/_emulator/config"
    set_ = httpx.post(url, json={"forbidden_routes": ["codings", "studies"]}, timeout=10)
    assert set_.status_code == 200
    assert get(fresh_emulator, f"/studies/{K}/codings").status_code == 403
    assert get(fresh_emulator, "/studies").status_code == 403
    bad = httpx.post(url, json={"forbidden_routes": ["user"]}, timeout=10)
    assert bad.status_code == 400 and "forbidden_routes must be a list of" in bad.json()["error"]
    assert fresh_emulator.emulator.config.forbidden_routes == ["codings", "studies"]
    cleared = httpx.post(url, json={"forbidden_routes": []}, timeout=10)
    assert cleared.status_code == 200
    assert get(fresh_emulator, f"/studies/{K}/codings").status_code == 200
