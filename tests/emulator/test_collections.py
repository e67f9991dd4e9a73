"""The whole study as a client mirrors it: each of the 11 study collections parses through
the real SDK, pages without loss or repeat, and equals `Emulator.rows`, the truth a mirror
is compared with; `Emulator.studies` is the truth of `GET /studies`."""

from __future__ import annotations

import pytest
from imednet import ImednetSDK

from imednet_flows.emulator import EmulatorClient, EmulatorServer
from imednet_flows.emulator.entities import ENTITIES
from tests.conftest import BIG, SMALL
from tests.emulator_helpers import SDK_ATTR, STUDY_ROUTES, page_all

K = SMALL.study_key
#: Route -> the SDK model attribute of its id.
SDK_ID = {
    "sites": "site_id",
    "forms": "form_id",
    "intervals": "interval_id",
    "variables": "variable_id",
    "subjects": "subject_id",
    "visits": "visit_id",
    "records": "record_id",
    "recordRevisions": "record_revision_id",
    "queries": "annotation_id",
    "codings": "coding_id",
    "users": "user_id",
}


def test_the_routes_here_are_the_emulators() -> None:
    assert set(STUDY_ROUTES) == set(SDK_ID) == set(ENTITIES) - {"studies"}


@pytest.mark.parametrize("route", STUDY_ROUTES)
def test_sdk_parses_every_row_with_unique_ids(
    sdk: ImednetSDK, emulator: EmulatorServer, route: str
) -> None:
    options = {"include_inactive": True} if route == "users" else {}
    items = getattr(sdk, SDK_ATTR.get(route, route)).list(K, **options)
    truth = emulator.emulator.rows(K, route)
    ids = [getattr(item, SDK_ID[route]) for item in items]
    assert len(ids) == len(set(ids)) == len(truth) > 0
    assert ids == [row[ENTITIES[route].id_field] for row in truth]


@pytest.mark.parametrize("route", STUDY_ROUTES)
def test_rows_equal_what_paging_returns(emulator: EmulatorServer, route: str) -> None:
    """The most inclusive listing (users with includeInactive=true), page by page, is
    exactly the truth, in the same (default) order."""
    params = {"includeInactive": "true"} if route == "users" else {}
    paged = page_all(emulator, f"/studies/{K}/{route}", params, size=10)
    truth = emulator.emulator.rows(K, route)
    assert paged == truth
    assert len(truth) > 10 or route in ("sites", "intervals")  # crosses pages


def test_rows_are_deep_copies(emulator: EmulatorServer) -> None:
    first = emulator.emulator.rows(K, "records")
    first[0]["recordData"].clear()
    first[0]["keywords"].append({"changed": True})
    assert emulator.emulator.rows(K, "records")[0]["recordData"]


def test_rows_name_the_routes_when_given_another(emulator: EmulatorServer) -> None:
    with pytest.raises(ValueError, match=r"no route 'revisions'.*recordRevisions.*or studies"):
        emulator.emulator.rows(K, "revisions")
    assert emulator.emulator.rows(None, "studies") == emulator.emulator.studies()


def test_studies_truth_is_the_listing(emulator: EmulatorServer, sdk: ImednetSDK) -> None:
    truth = emulator.emulator.studies()
    assert [s["studyKey"] for s in truth] == sorted([BIG.study_key, SMALL.study_key])
    assert page_all(emulator, "/studies", size=1) == truth
    assert [s.study_key for s in sdk.studies.list()] == [s["studyKey"] for s in truth]
    admin = EmulatorClient(emulator.base_url, timeout=30)
    try:
        assert admin.studies() == truth
        assert admin.rows(K, "users") == emulator.emulator.rows(K, "users")
    finally:
        admin.close()
