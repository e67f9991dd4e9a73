"""Plain request and response objects over bare ASGI, shared by the API and admin routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.status = status
        self.body = orjson.dumps(payload)
        self.headers = [(b"content-type", b"application/json"), *(headers or [])]


class Request:
    __slots__ = ("body", "headers", "method", "path", "query", "segments")

    def __init__(self, scope: dict[str, Any], body: bytes) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        raw = scope.get("raw_path") or scope["path"].encode()
        raw_path = raw.decode("latin-1").split("?", 1)[0]
        # Decode segment by segment: a study key may contain an encoded "/".
        self.segments = [unquote(s) for s in raw_path.split("/") if s]
        self.query = parse_qs(
            scope.get("query_string", b"").decode("utf-8", "replace"), keep_blank_values=True
        )
        self.headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        self.body = body

    @property
    def content_length(self) -> int | None:
        """The declared body size; None for a chunked body (or none). The server has
        already rejected a malformed header."""
        raw = self.headers.get("content-length")
        return int(raw) if raw is not None and raw.isdigit() else None

    def param(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[0] if values else default


async def send_response(send: Send, response: Response) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [*response.headers, (b"content-length", str(len(response.body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": response.body})
