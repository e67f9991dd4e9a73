"""Raw-HTTP and SDK helpers shared by the emulator's tests of collections and mutations."""

from __future__ import annotations

from typing import Any

import httpx
from imednet import ImednetSDK

from imednet_flows.emulator import DEMO_API_KEY, DEMO_SECURITY_KEY, EmulatorServer

AUTH = {"x-api-key": DEMO_API_KEY, "x-imn-security-key": DEMO_SECURITY_KEY}
#: Route -> the SDK attribute that lists it.
SDK_ATTR = {"recordRevisions": "record_revisions"}
#: Every study-scoped list route of the API (api-behaviour.md §2).
STUDY_ROUTES = (
    "sites",
    "forms",
    "intervals",
    "variables",
    "subjects",
    "visits",
    "records",
    "recordRevisions",
    "queries",
    "codings",
    "users",
)


def get(server: EmulatorServer, path: str, params: Any = None) -> httpx.Response:
    """GET an API path (under /api/v1/edc) with the demo keys."""
    return httpx.get(f"{server.base_url}/api/v1/edc{path}", params=params, headers=AUTH, timeout=30)


def page_all(
    server: EmulatorServer, path: str, params: dict[str, Any] | None = None, size: int = 25
) -> list[dict[str, Any]]:
    """Every row of a listing, page by page as a client reads it (bounded by totalPages)."""
    rows: list[dict[str, Any]] = []
    first = get(server, path, {**(params or {}), "page": 0, "size": size})
    assert first.status_code == 200, first.text
    pages = first.json()["pagination"]["totalPages"]
    rows += first.json()["data"]
    for page in range(1, pages):
        response = get(server, path, {**(params or {}), "page": page, "size": size})
        assert response.status_code == 200, response.text
        rows += response.json()["data"]
    return rows


def post_and_wait(sdk: ImednetSDK, study_key: str, items: list[dict[str, Any]]) -> str:
    """POST records through the SDK and wait for the job; its final state, lower case."""
    job = sdk.records.create(study_key, items)
    return sdk.poll_job(study_key, job.batch_id, interval=0, timeout=10).state.lower()
