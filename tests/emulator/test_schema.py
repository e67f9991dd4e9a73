"""Real emulator HTTP responses validated against the vendored OpenAPI 3.1 spec.

The spec is loose: no object is closed and no property is required, so an emulator field
the spec does not know, or a declared field the emulator forgot, would pass a plain
validation. The spec is therefore preprocessed before use:

* every object schema with `properties` gets `additionalProperties: false` (objects that
  already state `additionalProperties`, i.e. Metadata.error, keep it), which catches
  undeclared fields;
* separately, every such object gets `required: [all its properties]`, which checks that the
  emulator emits every declared field (it is meant to, so the SDK never falls back to now());
* `TIGHTENINGS` add the string formats api-behaviour.md §3 fixes but the spec only describes;
* `DEVIATIONS` patch the few places where the emulator knowingly differs from the spec's
  letter, each with its reason. Nothing else is relaxed.

Validation is Draft 2020-12 (what OpenAPI 3.1 schemas are), with `$ref`s resolved inside the
spec document by `referencing`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from imednet_flows.emulator import DEMO_API_KEY, DEMO_SECURITY_KEY, EmulatorServer
from tests.conftest import BIG, SMALL

SPEC_FILE = Path(__file__).parents[1] / "spec" / "mednet.yaml"
#: The URI the spec document is registered under, so its "#/components/..." refs resolve.
SPEC_URI = "urn:imednet:mednet.yaml"
API = "/api/v1/edc"
AUTH = {"x-api-key": DEMO_API_KEY, "x-imn-security-key": DEMO_SECURITY_KEY}
JSON = "application/json"
PAGE_SIZE = 500  # the spec's maximum: the most rows per request

TS = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$"  # api-behaviour.md §3 `ts`
DATE = r"^\d{4}-\d{2}-\d{2}$"  # api-behaviour.md §3 `date`

#: Where the emulator knowingly departs from the spec's letter. Keys are "Schema.property"
#: in components/schemas; `_deviate` applies each one explicitly and nothing else is relaxed.
DEVIATIONS: dict[str, str] = {
    "Visit.dueDate": (
        "spec writes `nullable: true`, OpenAPI 3.0 syntax that 3.1 ignores; the intended "
        "meaning is string-or-null (its own example has dueDate: null), api-behaviour.md §3"
    ),
    "Query.type": (
        "spec writes `nullable: true` (3.0 syntax, ignored by 3.1); meant string-or-null, "
        "as its example `type: null` shows, api-behaviour.md §3"
    ),
    "Role.dateCreated": (
        "spec: int[7] Java LocalDateTime; SDK 0.5.0 types it datetime and crashes on the "
        "array, so the emulator emits a ts string by default (api-behaviour.md §3, §9); "
        "config.strict_role_dates restores the array and is checked against the unmodified Role"
    ),
    "Role.dateModified": "same as Role.dateCreated",
    "Job.dateStarted": (
        "spec: string; the emulator sends null until the job leaves `created` "
        "(api-behaviour.md §5: null reads as a sentinel in the SDK, a missing key as now())"
    ),
    "Job.dateFinished": "spec: string; null until the job is terminal (api-behaviour.md §5)",
}
_ROLE_DATES = ("Role.dateCreated", "Role.dateModified")

#: Formats api-behaviour.md §3 pins down that the spec only describes in prose ("Date when ...",
#: "in YYYY-MM-DD format"). The SDK parses these with datetime.fromisoformat, and a mix of
#: forms breaks comparisons downstream, so one exact form is asserted.
TIGHTENINGS: dict[str, dict[str, Any]] = {
    **{
        key: {"pattern": TS}
        for key in (
            "Metadata.timestamp",
            *(
                f"{schema}.{field}"
                for schema in (
                    "Study",
                    "Site",
                    "Form",
                    "Interval",
                    "Visit",
                    "Subject",
                    "Variable",
                    "Query",
                    "Record",
                )
                for field in ("dateCreated", "dateModified")
            ),
            "RecordRevision.dateCreated",
            "Subject.enrollmentStartDate",
            "Keyword.dateAdded",
            "Coding.dateCoded",
            "QueryComment.date",
            "Job.dateCreated",
            "Job.dateStarted",
            "Job.dateFinished",
        )
    },
    **{
        f"Visit.{field}": {"pattern": DATE}
        for field in ("startDate", "endDate", "dueDate", "visitDate")
    },
    # "Sort direction (ASC or DESC)": an exhaustive list, unlike the "e.g." descriptions.
    "Sort.direction": {"enum": ["ASC", "DESC"]},
}

#: Every list operation in the spec and the query its pages are fetched with.
LIST_PATHS: dict[str, dict[str, str]] = {
    "/studies": {},
    **{
        f"/studies/{{studyKey}}/{route}": {}
        for route in (
            "sites",
            "forms",
            "intervals",
            "visits",
            "subjects",
            "variables",
            "codings",
            "queries",
            "recordRevisions",
            "records",
        )
    },
    # includeInactive so the inactive user is validated too.
    "/studies/{studyKey}/users": {"includeInactive": "true"},
}
JOB_PATH = "/studies/{studyKey}/jobs/{batchId}"
RECORDS_PATH = "/studies/{studyKey}/records"

#: Real emulator bugs found by this file, keyed by LIST_PATHS entry: marked xfail(strict).
KNOWN_BUGS: dict[str, str] = {}

Page = tuple[int, dict[str, Any]]


# -- the spec and its strict variants -------------------------------------------------------
@cache
def raw_spec() -> dict[str, Any]:
    """The vendored spec as published; never modified (variants work on deep copies)."""
    with SPEC_FILE.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _split(key: str) -> tuple[str, str]:
    schema, _, prop = key.partition(".")
    return schema, prop


def _prop(schemas: dict[str, Any], key: str) -> dict[str, Any]:
    """The property schema a "Schema.property" key names; KeyError if the spec lacks it."""
    schema, prop = _split(key)
    return schemas[schema]["properties"][prop]


def _deviate(schemas: dict[str, Any], key: str) -> None:
    """Apply one DEVIATIONS entry. Explicit per key, so a new deviation needs code and a reason."""
    node = _prop(schemas, key)
    if key in ("Visit.dueDate", "Query.type"):
        assert node.pop("nullable") is True and node["type"] == "string"
        node["type"] = ["string", "null"]
    elif key in _ROLE_DATES:
        assert node["type"] == "array"
        node.clear()
        node.update({"type": "string", "pattern": TS})
    elif key in ("Job.dateStarted", "Job.dateFinished"):
        assert node["type"] == "string"
        node["type"] = ["string", "null"]
    else:  # pragma: no cover - a DEVIATIONS key without a patch is a bug in this file
        raise AssertionError(f"no patch for deviation {key!r}")


def _object_schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every object schema with `properties` under a schema node, nested ones included.

    Follows only `properties` and `items`, the keywords the spec uses to nest schemas, so
    `example` values (data, not schemas) are never touched. `$ref`s are not followed: their
    targets live in components/schemas, which is walked as a root of its own.
    """
    if not isinstance(node, dict):
        return
    if isinstance(node.get("properties"), dict):
        yield node
        for child in node["properties"].values():
            yield from _object_schemas(child)
    yield from _object_schemas(node.get("items"))


def _schema_roots(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Component schemas plus every response body schema, inline envelopes included."""
    yield from doc["components"]["schemas"].values()
    responses: list[dict[str, Any]] = list(doc["components"]["responses"].values())
    for ops in doc["paths"].values():
        for op in ops.values():
            responses.extend(op.get("responses", {}).values())
    for response in responses:
        for media in response.get("content", {}).values():
            yield media["schema"]


def build_spec(*, closed: bool, complete: bool, deviations: Iterable[str]) -> dict[str, Any]:
    """A strict copy of the spec: see the module docstring for what each switch adds."""
    doc = copy.deepcopy(raw_spec())
    schemas = doc["components"]["schemas"]
    for key in deviations:
        _deviate(schemas, key)
    for key, extra in TIGHTENINGS.items():
        _prop(schemas, key).update(extra)
    seen: set[int] = set()
    for root in _schema_roots(doc):
        for node in _object_schemas(root):
            if id(node) in seen:
                continue
            seen.add(id(node))
            declared_open = node.get("additionalProperties") is True
            if closed:
                node.setdefault("additionalProperties", False)
            if complete and not declared_open:
                # Metadata.error stays optional: it is `{}` on every success.
                node.setdefault("required", list(node["properties"]))
    return doc


VARIANTS: dict[str, Callable[[], dict[str, Any]]] = {
    # No undeclared field anywhere (types and tightenings included).
    "closed": lambda: build_spec(closed=True, complete=False, deviations=DEVIATIONS),
    # Every declared field present.
    "complete": lambda: build_spec(closed=False, complete=True, deviations=DEVIATIONS),
    # Both at once, for the small one-off bodies (errors, jobs).
    "strict": lambda: build_spec(closed=True, complete=True, deviations=DEVIATIONS),
    # Strict, with Role exactly as the spec writes it (int-array dates).
    "spec_roles": lambda: build_spec(
        closed=True, complete=True, deviations=[d for d in DEVIATIONS if d not in _ROLE_DATES]
    ),
}


@cache
def _registry(variant: str) -> Registry:
    resource = Resource.from_contents(VARIANTS[variant](), default_specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


def pointer(*parts: str) -> str:
    """A JSON pointer into the spec, escaped per RFC 6901 and then for the URI fragment."""
    raw = "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)
    return quote(raw, safe="/~")


@cache
def validator(variant: str, ref: str) -> Draft202012Validator:
    """A validator for the schema at `ref` (a fragment) inside one spec variant."""
    return Draft202012Validator({"$ref": f"{SPEC_URI}#{ref}"}, registry=_registry(variant))


def response_schema_ref(path: str, method: str, status: int) -> str:
    """The fragment of an operation's response schema, following a components/responses ref.

    A Response Object `$ref` is OpenAPI, not JSON Schema, so it is resolved here by hand;
    this also proves the status is documented for that operation.
    """
    responses = raw_spec()["paths"][path][method]["responses"]
    response = responses[str(status)]
    if "$ref" in response:
        prefix = "#/components/responses/"
        assert response["$ref"].startswith(prefix), response
        name = response["$ref"][len(prefix) :]
        return pointer("components", "responses", name, "content", JSON, "schema")
    return pointer("paths", path, method, "responses", str(status), "content", JSON, "schema")


def schema_errors(
    variant: str, ref: str, instance: Any, keyword: str | None = None, limit: int = 8
) -> list[str]:
    """Readable validation errors (the first `limit`, plus a count) or [] when valid.

    `keyword` keeps only the errors of one JSON Schema keyword (e.g. "required"), so a wrong
    type does not also fail the test that is about missing fields.
    """
    check = validator(variant, ref)
    if check.is_valid(instance):
        return []
    errors = [e for e in check.iter_errors(instance) if keyword in (None, e.validator)]
    errors.sort(key=lambda e: [str(p) for p in e.absolute_path])
    shown = [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:limit]]
    if len(errors) > limit:
        shown.append(f"... {len(errors) - limit} more")
    return shown


# -- HTTP ------------------------------------------------------------------------------
def concrete(path: str, study_key: str = BIG.study_key) -> str:
    return API + path.replace("{studyKey}", study_key)


def request(
    server: EmulatorServer,
    method: str,
    url_path: str,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    json: Any = None,
) -> httpx.Response:
    """Raw httpx, no SDK: the body is exactly what went over the wire."""
    response = httpx.request(
        method,
        server.base_url + url_path,
        params=params,
        headers=AUTH if headers is None else headers,
        json=json,
        timeout=30,
    )
    assert response.headers["content-type"].startswith(JSON), response.headers
    return response


@pytest.fixture(scope="module")
def list_pages(emulator: EmulatorServer) -> Iterator[Callable[[str], list[Page]]]:
    """Pages 0, 1, the middle and the last at size=500, fetched once per module.

    Several pages per route so rows past the first page boundary are validated too, while
    skipping most of the ~20k BIG rows keeps the file well under its 10 s budget.
    """
    cache_: dict[str, list[Page]] = {}
    client = httpx.Client(base_url=emulator.base_url, headers=AUTH, timeout=30)

    def fetch(spec_path: str) -> list[Page]:
        if spec_path in cache_:
            return cache_[spec_path]
        url = concrete(spec_path)

        def page(n: int) -> Page:
            params = {**LIST_PATHS[spec_path], "page": str(n), "size": str(PAGE_SIZE)}
            response = client.get(url, params=params)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith(JSON)
            return n, response.json()

        first = page(0)
        pagination = first[1]["pagination"]
        total_pages = pagination["totalPages"]
        assert total_pages == math.ceil(pagination["totalElements"] / PAGE_SIZE)
        rest = sorted({1, total_pages // 2, total_pages - 1} - {0})
        cache_[spec_path] = [first, *(page(n) for n in rest if n < total_pages)]
        return cache_[spec_path]

    yield fetch
    client.close()


def _list_param(spec_path: str) -> Any:
    marks = []
    if spec_path in KNOWN_BUGS:
        marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[spec_path]))
    return pytest.param(spec_path, id=spec_path.rsplit("/", 1)[-1], marks=marks)


LIST_PARAMS = [_list_param(p) for p in LIST_PATHS]


# -- the spec itself -------------------------------------------------------------------
def test_every_operation_in_the_spec_is_covered() -> None:
    """If the spec grows an operation, this file must grow a check for it."""
    paths = raw_spec()["paths"]
    gets = {p for p, ops in paths.items() if "get" in ops}
    assert gets == {*LIST_PATHS, JOB_PATH}
    others = {(p, m) for p, ops in paths.items() for m in ops if m != "get"}
    assert others == {(RECORDS_PATH, "post")}


def test_deviations_and_tightenings_name_real_fields() -> None:
    """A stale key would silently patch nothing; an unlisted `nullable` would be ignored."""
    schemas = raw_spec()["components"]["schemas"]
    for key in [*DEVIATIONS, *TIGHTENINGS]:
        _prop(schemas, key)  # KeyError if the spec has no such property
    nullable = {
        f"{name}.{prop}"
        for name, schema in schemas.items()
        for prop, node in schema.get("properties", {}).items()
        if node.get("nullable")
    }
    assert nullable <= set(DEVIATIONS)
    # The only objects that keep extra keys: Metadata.error (declared open) and
    # Record.recordData (a free-form bag without `properties`, so never closed).
    open_objects = {
        f"{name}.{prop}"
        for name, schema in schemas.items()
        for prop, node in schema.get("properties", {}).items()
        if node.get("additionalProperties") is True
    }
    assert open_objects == {"Metadata.error", "Record.recordData"}


def test_strictness_catches_undeclared_and_missing_fields() -> None:
    """The preprocessing really took effect: the plain spec accepts both mistakes below."""
    ref = pointer("components", "schemas", "Site")
    row = {
        "studyKey": "K",
        "siteId": 1,
        "siteName": "A",
        "siteEnrollmentStatus": "Enrollment Open",
        "dateCreated": "2025-06-05 21:12:08",
        "dateModified": "2025-06-05 21:12:08",
    }
    assert schema_errors("strict", ref, row) == []
    extra = {**row, "siteCountry": "US"}
    missing = {k: v for k, v in row.items() if k != "siteName"}
    iso = {**row, "dateModified": "2025-06-05T21:12:08Z"}
    plain = Draft202012Validator(raw_spec()["components"]["schemas"]["Site"])
    for bad in (extra, missing, iso):
        assert plain.is_valid(bad)
    assert schema_errors("closed", ref, extra)
    assert not schema_errors("closed", ref, missing)
    assert schema_errors("complete", ref, missing)
    assert schema_errors("closed", ref, iso)


# -- 200 list responses ----------------------------------------------------------------
@pytest.mark.parametrize("spec_path", LIST_PARAMS)
def test_list_pages_have_no_undeclared_field_or_wrong_type(
    spec_path: str, list_pages: Callable[[str], list[Page]]
) -> None:
    """Closed schemas: types, formats and no field the spec does not declare."""
    ref = response_schema_ref(spec_path, "get", 200)
    pages = list_pages(spec_path)
    for n, body in pages:
        assert body["pagination"]["currentPage"] == n
        assert body["pagination"]["size"] == PAGE_SIZE
        assert body["data"], f"page {n} of {spec_path} is empty"
        errors = schema_errors("closed", ref, body)
        assert not errors, f"{spec_path} page {n}:\n" + "\n".join(errors)


@pytest.mark.parametrize("spec_path", LIST_PARAMS)
def test_list_rows_carry_every_declared_field(
    spec_path: str, list_pages: Callable[[str], list[Page]]
) -> None:
    """Every property the spec declares, nested ones included, is in every emitted row."""
    ref = response_schema_ref(spec_path, "get", 200)
    for n, body in list_pages(spec_path):
        errors = schema_errors("complete", ref, body, keyword="required")
        assert not errors, f"{spec_path} page {n}:\n" + "\n".join(errors)


def test_several_pages_are_validated(list_pages: Callable[[str], list[Page]]) -> None:
    """Guard against the page selection shrinking to page 0 only."""
    pages = {p: list_pages(p) for p in LIST_PATHS}
    beyond_first = sum(1 for got in pages.values() for n, _ in got if n > 0)
    rows = sum(len(body["data"]) for got in pages.values() for _, body in got)
    assert beyond_first >= 10
    assert rows >= 8000


# -- POST records and jobs -------------------------------------------------------------
def _post_update(server: EmulatorServer) -> httpx.Response:
    """POST an update that rewrites one existing value of a SMALL record: a job that completes."""
    record = server.emulator.rows(SMALL.study_key, "records")[0]
    name, value = next(iter(record["recordData"].items()))
    item = {"formKey": record["formKey"], "recordId": record["recordId"], "data": {name: value}}
    return request(server, "POST", concrete(RECORDS_PATH, SMALL.study_key), json=[item])


def _check_job(server: EmulatorServer, expected_state: str) -> dict[str, Any]:
    """POST, validate the 202, then GET the job and validate the 200; returns the job body."""
    posted = _post_update(server)
    assert posted.status_code == 202, posted.text
    errors = schema_errors("strict", response_schema_ref(RECORDS_PATH, "post", 202), posted.json())
    assert not errors, "\n".join(errors)
    batch_id = posted.json()["batchId"]
    url = concrete(JOB_PATH, SMALL.study_key).replace("{batchId}", batch_id)
    got = request(server, "GET", url)
    assert got.status_code == 200, got.text
    job = got.json()
    errors = schema_errors("strict", response_schema_ref(JOB_PATH, "get", 200), job)
    assert not errors, "\n".join(errors)
    assert job["state"] == expected_state
    return job


def test_post_records_202_and_completed_job(fresh_emulator: EmulatorServer) -> None:
    """202 RecordJobStatus (no envelope) and a completed Job with every date set."""
    job = _check_job(fresh_emulator, "completed")
    assert None not in (job["dateStarted"], job["dateFinished"])


def test_job_not_yet_started_has_null_dates(fresh_emulator: EmulatorServer) -> None:
    """Exercises the Job.dateStarted/dateFinished deviation: null, never omitted."""
    fresh_emulator.emulator.config.job_delay = 600.0
    job = _check_job(fresh_emulator, "created")
    assert job["dateStarted"] is None
    assert job["dateFinished"] is None


def test_rows_written_after_seeding_match_spec(fresh_emulator: EmulatorServer) -> None:
    """Rows built by jobs and mutations, not by the seed, are held to the same strict spec.

    They come from separate code paths (jobs.py, mutations.py) that could forget a field
    the seeded rows have, so every list of the small study is re-validated in full.
    """
    server, key = fresh_emulator, SMALL.study_key
    handle = server.emulator
    reg = next(r for r in handle.rows(key, "records") if r["formKey"] == "REG")
    site = handle.rows(key, "sites")[0]["siteName"]
    items = [
        {"formKey": "REG", "siteName": site, "data": reg["recordData"]},  # registers a subject
        {"formKey": "REG", "subjectKey": reg["subjectKey"], "data": reg["recordData"]},
    ]
    posted = request(server, "POST", concrete(RECORDS_PATH, key), json=items)
    assert posted.status_code == 202, posted.text
    assert handle.jobs[posted.json()["batchId"]].state == "completed"
    handle.mutate(key, "edit_records", n=3)
    for entity in ("records", "subjects", "visits"):
        handle.mutate(key, "soft_delete", entity=entity)
    handle.mutate(key, "add_subjects", n=2)
    handle.mutate(key, "add_visits", n=2)
    query_id = handle.mutate(key, "add_queries", n=2)["ids"][0]
    handle.mutate(key, "add_query_comment", annotation_id=query_id, closed=True)
    for spec_path, query in LIST_PATHS.items():
        ref = response_schema_ref(spec_path, "get", 200)
        page, total_pages = 0, 1
        while page < total_pages:
            params = {**query, "page": str(page), "size": str(PAGE_SIZE)}
            response = request(server, "GET", concrete(spec_path, key), params=params)
            assert response.status_code == 200, response.text
            body = response.json()
            errors = schema_errors("strict", ref, body)
            assert not errors, f"{spec_path} page {page}:\n" + "\n".join(errors)
            page, total_pages = page + 1, body["pagination"]["totalPages"]


# -- error responses -------------------------------------------------------------------
BAD_KEYS = {"x-api-key": "wrong", "x-imn-security-key": DEMO_SECURITY_KEY}
K = BIG.study_key
ERROR_CASES = [
    # id (status first), method, spec path, study key, params, headers, body
    ("400-bad-filter", "get", "/studies/{studyKey}/sites", None, {"filter": "bogus==1"}),
    ("400-bad-page", "get", "/studies/{studyKey}/records", None, {"page": "XX"}),
    ("400-bad-sort", "get", "/studies", None, {"sort": "nope,asc"}),
    ("400-post-not-array", "post", RECORDS_PATH, None, None, None, {"formKey": "X"}),
    ("401-wrong-key", "get", "/studies", None, None, BAD_KEYS),
    ("401-no-keys", "get", "/studies/{studyKey}/users", None, None, {}),
    ("401-post", "post", RECORDS_PATH, None, None, BAD_KEYS, [{"formKey": "X", "data": {}}]),
    ("403-unknown-study", "get", "/studies/{studyKey}/subjects", "NOPE"),
    ("403-unknown-study-job", "get", JOB_PATH, "NOPE"),
    ("404-unknown-batch", "get", JOB_PATH, K),
]


def _error_param(
    case_id: str,
    method: str,
    spec_path: str,
    study_key: str | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> Any:
    status = int(case_id[:3])
    return pytest.param(
        method, spec_path, study_key or K, params, headers, body, status, id=case_id
    )


@pytest.mark.parametrize(
    ("method", "spec_path", "study_key", "params", "headers", "body", "status"),
    [_error_param(*case) for case in ERROR_CASES],
)
def test_error_responses_match_components_responses(
    emulator: EmulatorServer,
    method: str,
    spec_path: str,
    study_key: str,
    params: dict[str, str] | None,
    headers: dict[str, str] | None,
    body: Any,
    status: int,
) -> None:
    """`{"metadata": ...}` only, every Metadata field set, the spec's message for the status.

    None of these requests changes data (a rejected POST creates no job), so the shared
    session emulator is safe to use.
    """
    url = concrete(spec_path, study_key).replace("{batchId}", "no-such-batch")
    response = request(emulator, method.upper(), url, params=params, headers=headers, json=body)
    assert response.status_code == status, response.text
    ref = response_schema_ref(spec_path, method, status)
    errors = schema_errors("strict", ref, response.json())
    assert not errors, "\n".join(errors)
    metadata = response.json()["metadata"]
    assert (metadata["status"], metadata["method"], metadata["path"]) == (
        "ERROR",
        method.upper(),
        url,
    )
    # The spec's example message for this status, verbatim (api-behaviour.md §6).
    name = raw_spec()["paths"][spec_path][method]["responses"][str(status)]["$ref"]
    example = raw_spec()["components"]["responses"][name.rsplit("/", 1)[-1]]
    message = example["content"][JSON]["schema"]["example"]["metadata"]["error"]["message"]
    assert metadata["error"]["message"] == message


# -- Role dates ------------------------------------------------------------------------
def _users(server: EmulatorServer, study_key: str) -> dict[str, Any]:
    params = {"includeInactive": "true", "size": str(PAGE_SIZE)}
    response = request(
        server, "GET", concrete("/studies/{studyKey}/users", study_key), params=params
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_strict_role_dates_match_the_unmodified_role_schema(
    fresh_emulator: EmulatorServer,
) -> None:
    """With strict_role_dates the users list follows the spec's Role exactly: int[7] dates."""
    fresh_emulator.emulator.config.strict_role_dates = True
    body = _users(fresh_emulator, SMALL.study_key)
    ref = response_schema_ref("/studies/{studyKey}/users", "get", 200)
    errors = schema_errors("spec_roles", ref, body)
    assert not errors, "\n".join(errors)
    roles = [role for user in body["data"] for role in user["roles"]]
    assert roles
    for role in roles:
        for field in ("dateCreated", "dateModified"):
            assert len(role[field]) == 7  # [year, month, day, hour, minute, second, nano]


def test_default_role_dates_need_the_deviation(emulator: EmulatorServer) -> None:
    """By default Role dates are ts strings: the unmodified Role rejects them, the patched one
    accepts them. Keeps the Role entries in DEVIATIONS honest."""
    body = _users(emulator, BIG.study_key)
    ref = response_schema_ref("/studies/{studyKey}/users", "get", 200)
    assert schema_errors("spec_roles", ref, body)
    assert not schema_errors("strict", ref, body)
