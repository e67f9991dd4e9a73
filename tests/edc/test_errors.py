"""What an API error tells the operator to do, per status and network failure.

Pure functions, tested directly; expected values are written out by hand, never computed
by the code under test.
"""

from __future__ import annotations

import json

import httpx
import pytest
from imednet.errors import (
    BadRequestError,
    ForbiddenError,
    NotFoundError,
    RateLimitError,
    RequestError,
    ServerError,
    UnauthorizedError,
)

from imednet_flows.edc.errors import ImednetFlowsError, explain

# --------------------------------------------------------------------------------- explain


def _explained(exc: BaseException) -> str:
    error = explain(exc, "listing records of study PHX-101")
    assert isinstance(error, ImednetFlowsError)
    assert error.__cause__ is exc  # the SDK's exception stays reachable for debugging
    message = str(error)
    assert message.startswith("listing records of study PHX-101 failed: ")
    return message


def test_explain_401_points_at_the_keys() -> None:
    message = _explained(UnauthorizedError({"metadata": {}}, status_code=401))
    assert "HTTP 401" in message
    assert "IMEDNET_API_KEY" in message and "IMEDNET_SECURITY_KEY" in message
    assert "imednet-api-key" in message  # the Secret block, for deployments


def test_explain_403_points_at_the_study_key_and_permissions() -> None:
    message = _explained(ForbiddenError({"metadata": {}}, status_code=403))
    assert "HTTP 403" in message
    assert "study key" in message and "case-sensitive" in message
    assert "permissions" in message


def test_explain_404_names_the_status() -> None:
    message = _explained(NotFoundError({"metadata": {}}, status_code=404))
    assert "HTTP 404" in message


def test_explain_404_says_what_to_do() -> None:
    message = _explained(NotFoundError({"metadata": {}}, status_code=404))
    assert "check" in message.lower()


def test_explain_400_quotes_the_api_message() -> None:
    body = {
        "metadata": {
            "status": "BAD_REQUEST",
            "error": {"code": "INVALID_FILTER", "description": "unknown attribute 'sitId'"},
        }
    }
    message = _explained(BadRequestError(body, status_code=400))
    assert "HTTP 400" in message
    assert "unknown attribute 'sitId'" in message


def test_explain_400_without_error_details_shows_the_body() -> None:
    message = _explained(BadRequestError("plain text body", status_code=400))
    assert "HTTP 400" in message and "plain text body" in message


def test_explain_429_says_lower_the_concurrency() -> None:
    message = _explained(RateLimitError({"metadata": {}}, status_code=429))
    assert "HTTP 429" in message
    assert "IMEDNET_FLOWS_MAX_CONCURRENCY" in message and "later" in message


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        (503, "HTTP 503"),
        (502, "HTTP 502"),
        pytest.param(None, "HTTP 5xx"),
    ],
)
def test_explain_5xx_says_try_later(status: int | None, shown: str) -> None:
    message = _explained(ServerError({"metadata": {}}, status_code=status))
    assert shown in message
    assert "try again later" in message


@pytest.mark.parametrize(
    "exc", [RequestError("gave up"), httpx.ConnectError("refused"), httpx.ReadTimeout("slow")]
)
def test_explain_network_errors_point_at_the_base_url(exc: BaseException) -> None:
    message = _explained(exc)
    assert "could not be reached" in message
    assert "IMEDNET_BASE_URL" in message


def test_explain_truncated_json() -> None:
    exc = json.JSONDecodeError("Expecting value", '{"data": [', 10)
    message = _explained(exc)
    assert "incomplete (truncated)" in message


def test_explain_anything_else_names_the_exception() -> None:
    message = _explained(KeyError("pagination"))
    assert "KeyError: 'pagination'" in message
