"""The side channel: set-up, mutations, faults and the request log over HTTP.

Not part of the iMednet API. It mirrors the Python handle one to one, so a
benchmark can drive an emulator running in another process exactly as an
in-process test drives its own.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import orjson

from imednet_flows.emulator.seed import StudySpec
from imednet_flows.emulator.store import StudyExists
from imednet_flows.emulator.wire import Request, Response

if TYPE_CHECKING:
    from imednet_flows.emulator.handle import Emulator

#: Field name -> the type of its default (str, int or float).
_SPEC_FIELDS: dict[str, type] = {f.name: type(f.default) for f in fields(StudySpec)}
_KIND_WORDS = {str: "a non-empty string", int: "an integer", float: "a number"}


def handle_admin(emulator: Emulator, request: Request) -> Response:
    try:
        body = orjson.loads(request.body) if request.body else {}
        if request.method in ("POST", "PUT", "PATCH") and not isinstance(body, dict):
            raise ValueError("the body must be a JSON object of named arguments")
        status, payload = _route(emulator, request.method, request.segments[1:], body)
    except StudyExists as exc:
        status, payload = 409, {"error": str(exc)}
    except (ValueError, TypeError, KeyError) as exc:
        status, payload = 400, {"error": str(exc).strip("'\"")}
    except Exception as exc:  # answer in the route's own format rather than a bare 500
        logging.getLogger(__name__).exception("emulator admin error")
        status, payload = 500, {"error": f"emulator error: {exc}"}
    return Response(status, payload)


def study_spec(body: dict[str, Any]) -> tuple[StudySpec, bool]:
    """A StudySpec and the `replace` flag from an admin body, every field type-checked:
    a misspelt field must not silently seed a study of the default shape."""
    options = dict(body)
    replace = options.pop("replace", False)
    if not isinstance(replace, bool):
        raise ValueError(f"replace must be true or false, got {replace!r}")
    unknown = sorted(set(options) - set(_SPEC_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown study field(s) {unknown}; known: {', '.join(sorted(_SPEC_FIELDS))}"
        )
    for name, value in options.items():
        kind = _SPEC_FIELDS[name]
        accepted = (int, float) if kind is float else (kind,)
        if isinstance(value, bool) or not isinstance(value, accepted) or value == "":
            raise ValueError(f"study field {name} must be {_KIND_WORDS[kind]}, got {value!r}")
    return StudySpec(**options), replace


def _route(emulator: Emulator, method: str, segs: list[str], body: Any) -> tuple[int, Any]:
    match method, segs:
        case "GET", ["health"]:
            return 200, {"status": "ok", "studies": emulator.study_keys}
        case "GET", ["requests"]:
            return 200, [e.as_json() for e in emulator.requests()]
        case "DELETE", ["requests"]:
            emulator.reset_requests()
            return 200, {"ok": True}
        case "GET", ["faults"]:
            return 200, emulator.faults.rules()
        case "POST", ["faults"]:
            emulator.add_fault(**body)
            return 200, emulator.faults.rules()
        case "DELETE", ["faults"]:
            emulator.clear_faults()
            return 200, {"ok": True}
        case "POST", ["job-outcomes"]:
            emulator.add_job_outcome(**body)
            return 200, {"ok": True}
        case "POST", ["config"]:
            emulator.configure(**body)
            return 200, {"ok": True}
        case "GET", ["studies"]:
            return 200, emulator.studies()
        case "POST", ["studies"]:
            spec, replace = study_spec(body)
            emulator.add_study(spec, replace=replace)
            return 200, {"studies": emulator.study_keys}
        case "DELETE", ["studies", key]:
            emulator.remove_study(key)
            return 200, {"studies": emulator.study_keys}
        case "GET", ["studies", key, "counts"]:
            return 200, emulator.counts(key)
        case "GET", ["studies", key, "rows", route]:
            return 200, emulator.rows(key, route)
        case "POST", ["studies", key, "mutations", op]:
            return 200, emulator.mutate(key, op, **body)
    return 404, {"error": f"no admin route {method} /_emulator/{'/'.join(segs)}"}
