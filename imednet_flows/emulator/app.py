"""The emulator's ASGI app: the iMednet REST contract over real HTTP, plus an admin route.

Written against bare ASGI rather than a web framework because faults need
control a framework hides: a response cut off mid-body, a body that is not
valid JSON, a 502 sent after the batch was already accepted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from typing import Any

import orjson

from imednet_flows.emulator.admin import handle_admin
from imednet_flows.emulator.entities import ENTITIES, STUDY_ROUTES
from imednet_flows.emulator.handle import Emulator, RequestEntry
from imednet_flows.emulator.jobs import BadBatch, check_batch
from imednet_flows.emulator.quirks import listing_quirks
from imednet_flows.emulator.store import QueryError, parse_sorts
from imednet_flows.emulator.wire import Receive, Request, Response, Send, send_response

ADMIN_PREFIX = "/_emulator"
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 25
#: The API is a Java service: an int parameter past Integer.MAX_VALUE is a 400 there.
MAX_INT_PARAM = 2**31 - 1

_MESSAGES = {
    400: "The request was malformed or contains invalid parameters.",
    401: "Authentication credentials missing, invalid, or expired.",
    403: "Access is forbidden for the provided credentials.",
    404: "The requested resource could not be found.",
    405: "The method is not allowed for this resource.",
    413: "The request body is too large.",
    429: "Too many requests - rate limit exceeded, please try again later or contact support.",
    500: "An unexpected server error occurred. Please contact support.",
    502: "Bad gateway: the upstream service did not answer correctly.",
    503: "The service is temporarily unavailable. Please try again later.",
}


class DroppedConnection(Exception):
    """Raised after a partial body so the server closes the socket mid-response."""


class BodyTooLarge(Exception):
    """The body is over `EmulatorConfig.max_body_bytes`: answered with 413, never buffered."""


class ClientGone(Exception):
    """The client disconnected before its body arrived: there is no one left to answer."""


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    """The request body, refused as soon as it is known to exceed `limit` bytes.

    A declared Content-Length over the limit is refused before any of it is read; a
    chunked body is counted while it streams. Chunks are joined once at the end, since
    repeated `bytes +=` copies the body per chunk (quadratic in its size). A body left
    unread is drained and discarded by the server, so the connection stays usable.
    """
    if declared is not None and declared > limit:
        raise BodyTooLarge
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


def _too_large(limit: int) -> str:
    return (
        f"the request body is over this server's limit of {limit:,} bytes; "
        "send fewer records per request"
    )


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DroppedConnection))


logging.getLogger("uvicorn.error").addFilter(_QuietDrops())


class ApiError(Exception):
    def __init__(
        self, status: int, detail: str | None = None, field: dict[str, Any] | None = None
    ) -> None:
        super().__init__(detail or _MESSAGES.get(status, ""))
        self.status = status
        self.detail = detail
        self.field = field


def error_body(emulator: Emulator, request: Request, error: ApiError) -> dict[str, Any]:
    codes = {400: ("1000", "Field raised validation errors"), 401: ("9001", "Unauthorized")}
    code, description = codes.get(error.status, ("9000", "Unknown error"))
    detail: dict[str, Any] = {
        "message": _MESSAGES.get(error.status, str(error)),
        "code": code,
        "description": description,
    }
    if error.detail:
        detail["description"] = error.detail
    if error.field:
        detail["field"] = error.field
    return {
        "metadata": {
            "status": "ERROR",
            "method": request.method,
            "path": request.path,
            "timestamp": emulator.state.clock.now(),
            "error": detail,
        }
    }


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _int_param(
    request: Request, name: str, default: int, minimum: int, maximum: int = MAX_INT_PARAM
) -> int:
    raw = request.param(name, str(default))
    try:
        # int() alone would also take "1_000", " 7" and non-ASCII digits.
        value = int(raw) if _INTEGER.fullmatch(raw) else minimum - 1
    except ValueError:  # more digits than int() converts
        value = minimum - 1
    if not minimum <= value <= maximum:
        raise ApiError(
            400,
            f"{name} must be an integer from {minimum} to {maximum}",
            {"attribute": name, "value": raw[:100]},
        )
    return value


class EmulatorApp:
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        request = Request(scope, b"")
        if request.path.startswith(ADMIN_PREFIX + "/") or request.path == ADMIN_PREFIX:
            await self._admin(request, receive, send)
            return
        await self._api(request, receive, send)

    async def _admin(self, request: Request, receive: Receive, send: Send) -> None:
        limit = self.emulator.config.max_body_bytes
        try:
            request.body = await read_body(receive, limit, request.content_length)
        except BodyTooLarge:
            await send_response(send, Response(413, {"error": _too_large(limit)}))
            return
        except ClientGone:
            return
        await send_response(send, handle_admin(self.emulator, request))

    async def _api(self, request: Request, receive: Receive, send: Send) -> None:
        emulator = self.emulator
        entry = emulator.log.start(request.method, request.path, request.query)
        route = _route_name(request.segments)
        plan = emulator.faults.plan(route, request.method)
        if plan.latency:
            await asyncio.sleep(plan.latency)
        fault = plan.fault
        if fault is not None:
            entry.fault = fault.kind
        try:
            if fault is not None and fault.kind == "status":
                headers = []
                if fault.retry_after is not None:
                    headers.append((b"retry-after", str(math.ceil(fault.retry_after)).encode()))
                error = ApiError(fault.status)
                response = Response(fault.status, error_body(emulator, request, error), headers)
            else:
                response = await self._respond(request, receive, entry)
                if fault is not None and fault.kind == "commit_then_502":
                    response = Response(502, error_body(emulator, request, ApiError(502)))
        except ClientGone:
            return
        finally:
            entry.finished = time.monotonic()
        entry.status = response.status
        if fault is not None and fault.kind == "drop":
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [
                        *response.headers,
                        (b"content-length", str(len(response.body)).encode()),
                    ],
                }
            )
            await send(
                {
                    "type": "http.response.body",
                    "body": response.body[: len(response.body) // 2],
                    "more_body": True,
                }
            )
            raise DroppedConnection("fault: connection dropped mid-body")
        if fault is not None and fault.kind == "truncate":
            response.body = response.body[: max(1, len(response.body) // 2)]
        await send_response(send, response)

    async def _respond(self, request: Request, receive: Receive, entry: RequestEntry) -> Response:
        emulator = self.emulator
        emulator.advance_jobs()
        try:
            # Credentials first: an unauthenticated client gets no body read on its behalf.
            self._authenticate(request)
            limit = emulator.config.max_body_bytes
            try:
                request.body = await read_body(receive, limit, request.content_length)
            except BodyTooLarge:
                raise ApiError(413, _too_large(limit)) from None
            return self._dispatch(request, entry)
        except ApiError as error:
            return Response(error.status, error_body(emulator, request, error))
        except ClientGone:
            raise
        except Exception as exc:  # an emulator bug must still answer like the API
            logging.getLogger(__name__).exception("emulator error")
            error = ApiError(500, f"emulator error: {exc}")
            return Response(500, error_body(emulator, request, error))

    def _authenticate(self, request: Request) -> None:
        config = self.emulator.config
        if (
            request.headers.get("x-api-key") != config.api_key
            or request.headers.get("x-imn-security-key") != config.security_key
        ):
            raise ApiError(401)

    def _dispatch(self, request: Request, entry: RequestEntry) -> Response:
        segs = request.segments
        if segs[:3] != ["api", "v1", "edc"] or len(segs) < 4 or segs[3] != "studies":
            raise ApiError(404)
        rest = segs[4:]
        if not rest:
            self._refuse_forbidden("studies", None)
            self._only(request, "GET")
            return self._list(request, "studies", None)
        study_key = rest[0]
        if study_key not in self.emulator.state.studies:
            raise ApiError(
                self.emulator.config.unknown_study_status,
                f'study "{study_key}" does not exist or is not accessible',
            )
        if len(rest) >= 2:
            self._refuse_forbidden(rest[1], study_key)
        if len(rest) == 2 and rest[1] in STUDY_ROUTES:
            if rest[1] == "records" and request.method == "POST":
                return self._post_records(request, study_key, entry)
            self._only(request, "GET")
            return self._list(request, rest[1], study_key)
        if len(rest) == 2 and rest[1] == "jobs":
            self._only(request, "GET")
            if not self.emulator.config.jobs_listing:
                raise ApiError(404, "this API does not list jobs")
            jobs = [j.as_json() for j in self.emulator.jobs.values() if j.study_key == study_key]
            return Response(200, jobs)
        if len(rest) == 3 and rest[1] == "jobs":
            self._only(request, "GET")
            job = self.emulator.jobs.get(rest[2])
            if job is None or job.study_key != study_key:
                raise ApiError(404, f'no job with batchId "{rest[2]}" in study "{study_key}"')
            return Response(200, job.as_json())
        raise ApiError(404)

    def _refuse_forbidden(self, route: str, study_key: str | None) -> None:
        """403 where `EmulatorConfig.forbidden_routes` says this key has no access."""
        if route in self.emulator.config.forbidden_routes:
            where = f' of study "{study_key}"' if study_key is not None else ""
            raise ApiError(403, f'this key has no access to "{route}"{where}')

    @staticmethod
    def _only(request: Request, method: str) -> None:
        if request.method != method:
            raise ApiError(405, f"{request.method} is not supported here; use {method}")

    def _list(self, request: Request, route: str, study_key: str | None) -> Response:
        entity = ENTITIES[route]
        page = _int_param(request, "page", 0, 0)
        size = min(_int_param(request, "size", DEFAULT_PAGE_SIZE, 1), MAX_PAGE_SIZE)
        filter_text = request.param("filter") if entity.filterable else ""
        data_filter = request.param("recordDataFilter") if route == "records" else ""
        include_inactive = request.param("includeInactive", "false").lower() in ("true", "1")
        filter_text, size, finish = listing_quirks(
            self.emulator.config.quirks, entity, filter_text, size
        )
        try:
            sorts = parse_sorts(entity, request.query.get("sort", []))
            rows = self.emulator.state.list_rows(
                route,
                study_key,
                filter_text,
                data_filter,
                sorts,
                include_inactive=include_inactive if route == "users" else True,
            )
        except QueryError as exc:
            raise ApiError(
                400, str(exc), {"attribute": exc.attribute, "value": exc.value}
            ) from None
        total = len(rows)
        data = rows[page * size : (page + 1) * size]
        if route == "users" and self.emulator.config.strict_role_dates:
            data = [_array_role_dates(u) for u in data]
        effective = sorts or [(entity.default_sort, False)]
        payload = {
            "metadata": {
                "status": "OK",
                "method": "GET",
                "path": request.path,
                "timestamp": self.emulator.state.clock.now(),
                "error": {},
            },
            "pagination": {
                "currentPage": page,
                "size": size,
                "totalPages": math.ceil(total / size),
                "totalElements": total,
                "sort": [
                    {"property": p, "direction": "DESC" if d else "ASC"} for p, d in effective
                ],
            },
            "data": data,
        }
        return Response(200, finish(payload))

    def _post_records(self, request: Request, study_key: str, entry: RequestEntry) -> Response:
        try:
            body = orjson.loads(request.body) if request.body else None
        except orjson.JSONDecodeError as exc:
            raise ApiError(
                400,
                f"the body is not valid JSON: {exc}",
                {"attribute": "body", "value": request.body[:200].decode("utf-8", "replace")},
            ) from None
        try:
            items = check_batch(body)
        except BadBatch as exc:
            raise ApiError(400, str(exc), {"attribute": "body", "value": ""}) from None
        entry.items = len(items)
        job = self.emulator.submit(study_key, items, request.headers.get("x-email-notify"))
        return Response(202, job.accepted_json())


def _array_role_dates(user: dict[str, Any]) -> dict[str, Any]:
    def as_array(ts: Any) -> Any:
        if not isinstance(ts, str) or len(ts) < 19:
            return ts
        d, t = ts[:10], ts[11:19]
        return [*map(int, d.split("-")), *map(int, t.split(":")), 0]

    roles = [
        {
            **r,
            "dateCreated": as_array(r.get("dateCreated")),
            "dateModified": as_array(r.get("dateModified")),
        }
        for r in user.get("roles", [])
    ]
    return {**user, "roles": roles}


def _route_name(segments: list[str]) -> str:
    """The fault-matching name: "studies", an endpoint such as "records", or "jobs"."""
    rest = segments[4:] if segments[:4] == ["api", "v1", "edc", "studies"] else None
    if rest is None:
        return "?"
    if len(rest) <= 1:
        return "studies"
    return rest[1]
