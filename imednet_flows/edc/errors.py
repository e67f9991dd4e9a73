"""Errors that say what went wrong and what to do, in the words of a data manager."""

from __future__ import annotations

import json

import httpx
from imednet.errors import (
    ApiError,
    BadRequestError,
    ForbiddenError,
    NotFoundError,
    RateLimitError,
    RequestError,
    ServerError,
    UnauthorizedError,
)


class ImednetFlowsError(RuntimeError):
    """A failure with an explanation fit for a log line and a Prefect UI."""


def explain(exc: BaseException, what: str) -> ImednetFlowsError:
    """Turn an SDK or network exception into one that says what to do next."""
    if isinstance(exc, UnauthorizedError):
        hint = (
            "the API key or security key was rejected (HTTP 401). Check IMEDNET_API_KEY / "
            "IMEDNET_SECURITY_KEY or the Secret blocks imednet-api-key / "
            "imednet-security-key; keys are never passed as flow parameters"
        )
    elif isinstance(exc, ForbiddenError):
        hint = (
            "access was refused (HTTP 403): the study key is unknown or this API key has "
            "no access to it. Check the study key's spelling (it is case-sensitive) and the "
            "key's study permissions in iMednet"
        )
    elif isinstance(exc, NotFoundError):
        hint = (
            "the API has no such resource (HTTP 404); check the study key, batch id or "
            "IMEDNET_BASE_URL (it is the origin only, e.g. https://edc.prod.imednetapi.com)"
        )
    elif isinstance(exc, BadRequestError):
        hint = f"the API rejected the request (HTTP 400): {_api_message(exc)}"
    elif isinstance(exc, RateLimitError):
        hint = (
            "the API kept rate-limiting (HTTP 429) after every retry; lower the "
            "concurrency (IMEDNET_FLOWS_MAX_CONCURRENCY) or run later"
        )
    elif isinstance(exc, ServerError):
        hint = (
            f"the API kept failing (HTTP {getattr(exc, 'status_code', None) or '5xx'}) after "
            "every "
            "retry; it may be down, try again later"
        )
    elif isinstance(exc, RequestError | httpx.TransportError):
        hint = (
            "the API could not be reached or dropped the connection after every retry; "
            "check IMEDNET_BASE_URL and the network"
        )
    elif isinstance(exc, json.JSONDecodeError):
        hint = "the API kept sending incomplete (truncated) responses after every retry"
    else:
        hint = f"{type(exc).__name__}: {exc}"
    error = ImednetFlowsError(f"{what} failed: {hint}.")
    error.__cause__ = exc
    return error


def _api_message(exc: ApiError) -> str:
    body = getattr(exc, "response", None)
    if isinstance(body, dict):
        error = (body.get("metadata") or {}).get("error") or {}
        parts = [error.get("description"), error.get("message")]
        return "; ".join(p for p in parts if p) or str(body)
    return str(body or exc)
