"""The side channel: set-up, mutations, faults and the request log over HTTP.

Not part of the iMednet API. It mirrors the Python handle one to one, so a
benchmark can drive an emulator running in another process exactly as an
in-process test drives its own.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any

import orjson

from imednet_flows.emulator.entities import ENTITIES
from imednet_flows.emulator.quirks import Quirks
from imednet_flows.emulator.seed import StudySpec
from imednet_flows.emulator.wire import Request, Response

if TYPE_CHECKING:
    from imednet_flows.emulator.handle import Emulator


def handle_admin(emulator: Emulator, request: Request) -> Response:
    try:
        body = orjson.loads(request.body) if request.body else {}
        status, payload = _route(emulator, request.method, request.segments[1:], body)
    except (ValueError, TypeError, KeyError) as exc:
        status, payload = 400, {"error": str(exc).strip("'\"")}
    return Response(status, payload)


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
            for name, value in body.items():
                if name in ("api_key", "security_key") or not hasattr(emulator.config, name):
                    raise ValueError(f"config field {name!r} cannot be set here")
                if name == "quirks":
                    value = Quirks.from_json(value)
                setattr(emulator.config, name, value)
            return 200, {"ok": True}
        case "POST", ["studies"]:
            known = {f.name for f in fields(StudySpec)}
            emulator.add_study(StudySpec(**{k: v for k, v in body.items() if k in known}))
            return 200, {"studies": emulator.study_keys}
        case "GET", ["studies", key, "counts"]:
            return 200, emulator.counts(key)
        case "GET", ["studies", key, "rows", route] if route in ENTITIES:
            return 200, emulator.rows(key, route)
        case "POST", ["studies", key, "mutations", op]:
            return 200, emulator.mutate(key, op, **body)
    return 404, {"error": f"no admin route {method} /_emulator/{'/'.join(segs)}"}
