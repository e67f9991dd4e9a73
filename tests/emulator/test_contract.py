"""docs/api-behaviour.md §1-8, rule by rule, through the real SDK 0.5.0 and raw HTTP."""

from __future__ import annotations

import math
import re

import httpx
import pytest
from imednet import ImednetSDK
from imednet.errors import (
    ForbiddenError,
    NotFoundError,
    UnauthorizedError,
)

from imednet_flows.emulator import DEMO_API_KEY, DEMO_SECURITY_KEY, EmulatorServer, StudySpec
from imednet_flows.emulator.seed import generate_study
from tests.conftest import BIG, SMALL

AUTH = {"x-api-key": DEMO_API_KEY, "x-imn-security-key": DEMO_SECURITY_KEY}
TS = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
K = BIG.study_key

LIST_ROUTES = [
    "sites",
    "forms",
    "intervals",
    "visits",
    "subjects",
    "users",
    "variables",
    "codings",
    "queries",
    "recordRevisions",
    "records",
]
SDK_ATTR = {"recordRevisions": "record_revisions"}


def api(
    server: EmulatorServer,
    path: str,
    params: dict | list | None = None,
    headers: dict | None = None,
) -> httpx.Response:
    return httpx.get(
        f"{server.base_url}/api/v1/edc{path}",
        params=params,
        headers=AUTH if headers is None else headers,
        timeout=30,
    )


def ids(response: httpx.Response, field: str) -> list:
    return [row[field] for row in response.json()["data"]]


# 1, 8, 15: every operation through the SDK, full lists, models parse -------------------
@pytest.mark.parametrize("route", LIST_ROUTES)
def test_sdk_lists_every_endpoint_completely(
    sdk: ImednetSDK, emulator: EmulatorServer, route: str
) -> None:
    truth = emulator.emulator.rows(K, route)
    if route == "users":  # the SDK sends includeInactive=false
        truth = [u for u in truth if u["userActiveInStudy"]]
    items = getattr(sdk, SDK_ATTR.get(route, route)).list(K)
    assert len(items) == len(truth) > 0


def test_sdk_lists_studies(sdk: ImednetSDK) -> None:
    assert [s.study_key for s in sdk.studies.list()] == sorted([BIG.study_key, SMALL.study_key])


def test_big_study_crosses_page_boundaries(emulator: EmulatorServer) -> None:
    counts = emulator.emulator.counts(K)
    for route in ("subjects", "visits", "records", "queries"):
        assert counts[route] > 500, route


@pytest.mark.parametrize("route", ["subjects", "records", "queries"])
def test_paging_returns_each_row_once_in_default_order(
    emulator: EmulatorServer, route: str
) -> None:
    from imednet_flows.emulator.entities import ENTITIES

    id_field = ENTITIES[route].id_field
    truth = [r[id_field] for r in emulator.emulator.rows(K, route)]
    first = api(emulator, f"/studies/{K}/{route}", {"page": 0, "size": 100}).json()
    pages = first["pagination"]["totalPages"]
    assert pages == math.ceil(len(truth) / 100)
    seen = []
    for page in range(pages):
        seen += ids(api(emulator, f"/studies/{K}/{route}", {"page": page, "size": 100}), id_field)
    assert seen == truth == sorted(truth)


# 2: authentication -------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": DEMO_API_KEY},
        {"x-imn-security-key": DEMO_SECURITY_KEY},
        {"x-api-key": "wrong", "x-imn-security-key": DEMO_SECURITY_KEY},
    ],
)
def test_missing_or_wrong_keys_get_401_envelope(emulator: EmulatorServer, headers: dict) -> None:
    response = api(emulator, f"/studies/{K}/sites", headers=headers)
    assert response.status_code == 401
    meta = response.json()["metadata"]
    assert meta["status"] == "ERROR" and meta["error"]["message"]
    assert set(response.json()) == {"metadata"}


def test_sdk_wrong_credentials_one_request(emulator: EmulatorServer) -> None:
    emulator.emulator.reset_requests()
    with (
        ImednetSDK(api_key="nope", security_key="nope", base_url=emulator.base_url) as bad,
        pytest.raises(UnauthorizedError),
    ):
        bad.sites.list(K)
    assert len(emulator.emulator.requests()) == 1


# 3, 4: unknown study, batch and path ------------------------------------------------------
def test_unknown_study_is_403_without_retry(emulator: EmulatorServer, sdk: ImednetSDK) -> None:
    emulator.emulator.reset_requests()
    with pytest.raises(ForbiddenError):
        sdk.records.list("NO-SUCH-STUDY")
    assert len(emulator.emulator.requests()) == 1
    response = api(emulator, "/studies/NO-SUCH-STUDY/sites")
    assert response.status_code == 403
    assert response.json()["metadata"]["error"]["message"]


def test_unknown_batch_and_path_are_404(emulator: EmulatorServer, sdk: ImednetSDK) -> None:
    with pytest.raises(NotFoundError):
        sdk.jobs.get(K, "00000000-0000-0000-0000-000000000000")
    response = api(emulator, f"/studies/{K}/nonsense")
    assert response.status_code == 404
    assert response.json()["metadata"]["status"] == "ERROR"


# 5, 6, 7: envelope, defaults, size clamp, bad paging -------------------------------------
def test_envelope_and_defaults(emulator: EmulatorServer) -> None:
    response = api(emulator, f"/studies/{K}/subjects")
    body = response.json()
    assert set(body) == {"metadata", "pagination", "data"}
    meta = body["metadata"]
    assert meta["status"] == "OK" and meta["method"] == "GET" and meta["error"] == {}
    assert meta["path"] == f"/api/v1/edc/studies/{K}/subjects"
    assert TS.match(meta["timestamp"])
    page = body["pagination"]
    total = len(emulator.emulator.rows(K, "subjects"))
    assert (page["currentPage"], page["size"], page["totalElements"]) == (0, 25, total)
    assert page["totalPages"] == math.ceil(total / 25)
    assert len(body["data"]) == 25


def test_empty_result_has_zero_pages(emulator: EmulatorServer) -> None:
    body = api(emulator, f"/studies/{K}/subjects", {"filter": "subjectId<0"}).json()
    assert body["data"] == [] and body["pagination"]["totalPages"] == 0
    assert body["pagination"]["totalElements"] == 0


def test_page_past_the_end_is_empty_with_true_totals(emulator: EmulatorServer) -> None:
    body = api(emulator, f"/studies/{K}/sites", {"page": 99}).json()
    assert body["data"] == [] and body["pagination"]["totalElements"] > 0


def test_size_is_clamped_to_500(emulator: EmulatorServer) -> None:
    body = api(emulator, f"/studies/{K}/records", {"size": 1000}).json()
    assert body["pagination"]["size"] == 500 and len(body["data"]) == 500


@pytest.mark.parametrize(
    "params", [{"page": "XX"}, {"size": -1}, {"size": 0}, {"page": -1}, {"size": "1.5"}]
)
def test_bad_paging_is_400_code_1000(emulator: EmulatorServer, params: dict) -> None:
    response = api(emulator, f"/studies/{K}/records", params)
    assert response.status_code == 400
    error = response.json()["metadata"]["error"]
    assert error["code"] == "1000" and error["message"]
    assert error["field"]["attribute"] in params


# 9: sorting ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "route,default",
    [
        ("sites", "siteId"),
        ("forms", "formId"),
        ("intervals", "intervalId"),
        ("visits", "visitId"),
        ("subjects", "subjectId"),
        ("users", "login"),
        ("variables", "variableId"),
        ("codings", "recordId"),
        ("queries", "annotationId"),
        ("recordRevisions", "recordRevisionId"),
        ("records", "recordId"),
    ],
)
def test_default_sort_is_echoed(emulator: EmulatorServer, route: str, default: str) -> None:
    body = api(emulator, f"/studies/{K}/{route}", {"size": 500}).json()
    assert body["pagination"]["sort"] == [{"property": default, "direction": "ASC"}]
    values = [row[default] for row in body["data"]]
    assert values == sorted(values)


def test_studies_default_sort(emulator: EmulatorServer) -> None:
    body = api(emulator, "/studies").json()
    assert body["pagination"]["sort"] == [{"property": "studyKey", "direction": "ASC"}]


def test_sort_desc_and_repeated(emulator: EmulatorServer) -> None:
    desc = ids(
        api(emulator, f"/studies/{K}/subjects", {"sort": "subjectId,desc", "size": 500}),
        "subjectId",
    )
    assert desc == sorted(desc, reverse=True)
    body = api(
        emulator,
        f"/studies/{K}/subjects",
        [("sort", "siteId,DESC"), ("sort", "subjectId,asc"), ("size", "500")],
    ).json()
    pairs = [(r["siteId"], r["subjectId"]) for r in body["data"]]
    assert pairs == sorted(pairs, key=lambda p: (-p[0], p[1]))
    assert body["pagination"]["sort"] == [
        {"property": "siteId", "direction": "DESC"},
        {"property": "subjectId", "direction": "ASC"},
    ]


def test_unknown_sort_property_is_400(emulator: EmulatorServer) -> None:
    response = api(emulator, f"/studies/{K}/subjects", {"sort": "shoeSize,asc"})
    assert response.status_code == 400 and response.json()["metadata"]["error"]["code"] == "1000"


# 10-14: filters ----------------------------------------------------------------------------
@pytest.mark.parametrize("route", [r for r in LIST_ROUTES if r != "users"])
def test_study_key_filter_everywhere(emulator: EmulatorServer, route: str) -> None:
    mine = api(emulator, f"/studies/{K}/{route}", {"filter": f"studyKey=={K}"}).json()
    assert mine["pagination"]["totalElements"] == len(emulator.emulator.rows(K, route))
    other = api(emulator, f"/studies/{K}/{route}", {"filter": "studyKey==OTHER"})
    assert other.status_code == 200 and other.json()["data"] == []


def test_and_binds_tighter_than_or(emulator: EmulatorServer) -> None:
    rows = emulator.emulator.rows(K, "subjects")
    a, b = rows[0]["subjectId"], rows[1]["subjectId"]
    site = rows[1]["siteId"]
    got = ids(
        api(
            emulator,
            f"/studies/{K}/subjects",
            {"filter": f"subjectId=={a},subjectId=={b};siteId=={site + 1000}"},
        ),
        "subjectId",
    )
    assert got == [a]  # a OR (b AND impossible)


def test_quoting_and_space_decoding(emulator: EmulatorServer) -> None:
    sites = emulator.emulator.rows(K, "sites")
    spaced = next(s for s in sites if " " in s["siteName"])
    name = spaced["siteName"]
    plus = (
        f"{emulator.base_url}/api/v1/edc/studies/{K}/sites?filter=siteName%3D%3D%22"
        f"{name.replace(' ', '+')}%22"
    )
    pct = plus.replace("+", "%20")
    for url in (plus, pct):
        got = httpx.get(url, headers=AUTH).json()["data"]
        assert [s["siteId"] for s in got] == [spaced["siteId"]]
    escaped = api(emulator, f"/studies/{K}/sites", {"filter": r'siteName=="a\"b"'})
    assert escaped.status_code == 200 and escaped.json()["data"] == []


def test_sdk_filter_kwargs_reach_the_server(sdk: ImednetSDK, emulator: EmulatorServer) -> None:
    site = emulator.emulator.rows(K, "sites")[0]
    truth = [
        s["subjectId"]
        for s in emulator.emulator.rows(K, "subjects")
        if s["siteId"] == site["siteId"]
    ]
    got = [s.subject_id for s in sdk.subjects.list(K, site_id=site["siteId"])]
    assert got == truth
    named = [s.subject_id for s in sdk.subjects.list(K, site_name=site["siteName"])]
    assert named == truth


def test_timestamp_spellings_select_identical_rows(emulator: EmulatorServer) -> None:
    records = emulator.emulator.rows(K, "records")
    stamp = sorted(r["dateModified"] for r in records)[len(records) // 2]
    iso = stamp.replace(" ", "T") + "Z"
    results = []
    for value in (f'"{stamp}"', stamp, f'"{iso}"'):
        body = api(
            emulator, f"/studies/{K}/records", {"filter": f"dateModified>={value}", "size": 500}
        ).json()
        results.append(body["pagination"]["totalElements"])
    expected = sum(1 for r in records if r["dateModified"] >= stamp)
    assert results == [expected] * 3
    exact = api(emulator, f"/studies/{K}/records", {"filter": f'dateModified=="{stamp}"'}).json()
    assert exact["pagination"]["totalElements"] >= 1


def test_sdk_watermark_filter(sdk: ImednetSDK, emulator: EmulatorServer) -> None:
    records = emulator.emulator.rows(K, "records")
    stamp = sorted(r["dateModified"] for r in records)[-50]
    got = sdk.records.list(K, date_modified=(">=", stamp))
    assert len(got) == sum(1 for r in records if r["dateModified"] >= stamp)


@pytest.mark.parametrize(
    "bad",
    [
        "formKey=AE",
        "shoeSize==3",
        "formKey=~AE",
        "formId==abc",
        "formKey==",
        ";formKey==AE",
        'formKey=="AE',
        "deleted<true",
    ],
)
def test_malformed_filters_are_400(emulator: EmulatorServer, bad: str) -> None:
    response = api(emulator, f"/studies/{K}/records", {"filter": bad})
    assert response.status_code == 400, bad
    error = response.json()["metadata"]["error"]
    assert error["code"] == "1000" and error["field"] == {"attribute": "filter", "value": bad}


def test_record_data_filter(emulator: EmulatorServer, sdk: ImednetSDK) -> None:
    records = emulator.emulator.rows(K, "records")
    sample = next(
        r
        for r in records
        if any(isinstance(v, str) and len(v) > 3 for v in r["recordData"].values())
    )
    var, value = next(
        (k, v) for k, v in sample["recordData"].items() if isinstance(v, str) and len(v) > 3
    )
    needle = value[1:3].upper()
    for op in ("=~", "~="):
        body = api(
            emulator,
            f"/studies/{K}/records",
            {
                "filter": f"formKey=={sample['formKey']}",
                "recordDataFilter": f"{var}{op}{needle}",
                "size": 500,
            },
        ).json()
        expected = [
            r["recordId"]
            for r in records
            if r["formKey"] == sample["formKey"]
            and var in r["recordData"]
            and needle.lower() in str(r["recordData"][var]).lower()
        ]
        assert [r["recordId"] for r in body["data"]] == expected[:500]
    via_sdk = sdk.records.list(K, form_key=sample["formKey"], record_data_filter=f"{var}=={value}")
    assert sample["recordId"] in [r.record_id for r in via_sdk]
    assert all(r.record_data[var] == value for r in via_sdk)


def test_record_data_filter_only_on_records(emulator: EmulatorServer) -> None:
    body = api(emulator, f"/studies/{K}/subjects", {"recordDataFilter": "x==1"}).json()
    assert body["pagination"]["totalElements"] == len(emulator.emulator.rows(K, "subjects"))


# 15, 23: every model parses, users includeInactive -----------------------------------------
def test_users_include_inactive(emulator: EmulatorServer, sdk: ImednetSDK) -> None:
    users = emulator.emulator.rows(K, "users")
    assert any(not u["userActiveInStudy"] for u in users)
    active = sdk.users.list(K, include_inactive=False)
    every = sdk.users.list(K, include_inactive=True)
    assert len(every) == len(users) and len(active) == len(users) - sum(
        1 for u in users if not u["userActiveInStudy"]
    )
    assert all(isinstance(r.date_created.year, int) for u in every for r in u.roles)


def test_all_timestamps_are_ts(emulator: EmulatorServer) -> None:
    for route in LIST_ROUTES:
        for row in emulator.emulator.rows(K, route)[:200]:
            for field in ("dateCreated", "dateModified"):
                if field in row:
                    assert TS.match(row[field]), (route, field, row[field])


# 24: determinism ------------------------------------------------------------------------------
def test_same_seed_same_bytes() -> None:
    import orjson

    spec = StudySpec(study_key="D", subjects=20, seed=5)
    one, two = generate_study(spec), generate_study(spec)
    assert orjson.dumps(one.records) == orjson.dumps(two.records)
    assert orjson.dumps(one.queries) == orjson.dumps(two.queries)


def test_sdk_get_by_id(sdk: ImednetSDK, emulator: EmulatorServer) -> None:
    subject = emulator.emulator.rows(K, "subjects")[7]
    got = sdk.subjects.get(K, subject["subjectKey"])
    assert got.subject_id == subject["subjectId"]
    with pytest.raises(NotFoundError):
        sdk.subjects.get(K, "no-such-subject")


@pytest.mark.parametrize(
    "template",
    [
        "recordId>={lo};recordId<={hi}",
        "recordId>{lo};recordId<{hi};formKey==AE",
        "studyKey==PHX-101;recordId>={lo};recordId<={hi};deleted==false",
        "recordId>={lo},formKey==VS;recordId<{hi}",  # OR: no narrowing, same answer
        "recordId>={hi};recordId<={lo}",  # empty range
    ],
)
def test_id_ranges_match_a_full_scan(emulator: EmulatorServer, template: str) -> None:
    """The emulator answers id ranges from an index; the answer must equal a plain scan."""
    rows = emulator.emulator.rows(K, "records")
    lo, hi = rows[100]["recordId"], rows[900]["recordId"]
    text = template.format(lo=lo, hi=hi)
    groups = [g.split(";") for g in text.split(",")]

    def holds(row: dict, term: str) -> bool:
        for op in (">=", "<=", "==", ">", "<"):
            if op in term:
                name, value = term.split(op)
                have = row[name]
                want = (
                    int(value)
                    if isinstance(have, int) and not isinstance(have, bool)
                    else (value == "true")
                    if isinstance(have, bool)
                    else value
                )
                return {
                    ">=": have >= want,
                    "<=": have <= want,
                    "==": have == want,
                    ">": have > want,
                    "<": have < want,
                }[op]
        raise AssertionError(term)

    expected = [r["recordId"] for r in rows if any(all(holds(r, t) for t in g) for g in groups)]
    got: list[int] = []
    page = 0
    while True:
        body = api(
            emulator, f"/studies/{K}/records", {"filter": text, "size": 500, "page": page}
        ).json()
        got += [r["recordId"] for r in body["data"]]
        page += 1
        if page >= body["pagination"]["totalPages"]:
            break
    assert got == expected
