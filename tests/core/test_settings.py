"""The one settings object: every environment variable the product reads, typed and checked.

Why: an operator sets a variable once and every flow, direct run and retry honours it; a
wrong value is named with what it should hold, never echoed (it may be a pasted key); and
tests that set variables per test (monkeypatch) see them at once.
"""

from __future__ import annotations

import pytest

from imednet_flows.edc.client import Credentials, ImednetClient
from imednet_flows.edc.retry import RetrySettings, TransientRetryPolicy
from imednet_flows.settings import Settings, SettingsError, settings

VARIABLES = (
    "IMEDNET_API_KEY",
    "IMEDNET_SECURITY_KEY",
    "IMEDNET_BASE_URL",
    "IMEDNET_FLOWS_MAX_CONCURRENCY",
    "IMEDNET_FLOWS_MAX_ATTEMPTS",
    "IMEDNET_FLOWS_BACKOFF_BASE",
    "IMEDNET_FLOWS_BACKOFF_MAX",
    "IMEDNET_FLOWS_MAX_RETRY_AFTER",
    "IMEDNET_FLOWS_CRASH_AT",
    "IMEDNET_FLOWS_CRASH_MARKER",
    "IMEDNET_FLOWS_PROJECT",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_every_variable_is_a_field() -> None:
    names = {Settings.variable(f) for f in Settings.model_fields}
    assert set(VARIABLES) <= names


def test_defaults_when_nothing_is_set(clean_env: pytest.MonkeyPatch) -> None:
    config = settings()
    assert (config.max_concurrency, config.max_attempts) == (4, 6)
    assert (config.backoff_base, config.backoff_max, config.max_retry_after) == (1, 30, 120)
    assert config.api_key is None and config.base_url is None and config.crash_at is None


def test_read_when_asked_not_at_import(clean_env: pytest.MonkeyPatch) -> None:
    assert settings().max_concurrency == 4
    clean_env.setenv("IMEDNET_FLOWS_MAX_CONCURRENCY", "2")
    assert settings().max_concurrency == 2
    clean_env.setenv("IMEDNET_FLOWS_MAX_CONCURRENCY", "  ")  # blank is unset
    assert settings().max_concurrency == 4


def test_retry_and_client_take_their_defaults_from_settings(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("IMEDNET_FLOWS_MAX_ATTEMPTS", "3")
    clean_env.setenv("IMEDNET_FLOWS_BACKOFF_BASE", "0.5")
    clean_env.setenv("IMEDNET_FLOWS_BACKOFF_MAX", "2")
    clean_env.setenv("IMEDNET_FLOWS_MAX_RETRY_AFTER", "9")
    clean_env.setenv("IMEDNET_FLOWS_MAX_CONCURRENCY", "5")
    expected = RetrySettings(max_attempts=3, base_delay=0.5, max_delay=2.0, max_retry_after=9.0)
    assert RetrySettings.configured() == expected
    assert TransientRetryPolicy().settings == expected
    with ImednetClient(Credentials("http://127.0.0.1:9", "k", "s")) as client:
        assert (client.max_concurrency, client.retry) == (5, expected)
    with ImednetClient(Credentials("http://127.0.0.1:9", "k", "s"), max_concurrency=1) as client:
        assert client.max_concurrency == 1


def test_keys_never_show(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("IMEDNET_API_KEY", "api-key-sentinel")
    clean_env.setenv("IMEDNET_SECURITY_KEY", "security-key-sentinel")
    config = settings()
    assert config.api_key is not None and config.security_key is not None
    assert config.api_key.get_secret_value() == "api-key-sentinel"
    shown = f"{config!r} {config} {config.model_dump()} {config.model_dump_json()}"
    assert "sentinel" not in shown


@pytest.mark.parametrize(
    ("name", "value", "told"),
    [
        ("IMEDNET_FLOWS_MAX_CONCURRENCY", "many", "a whole number from 1 to 32"),
        ("IMEDNET_FLOWS_MAX_CONCURRENCY", "64", "a whole number from 1 to 32"),
        ("IMEDNET_FLOWS_MAX_ATTEMPTS", "0", "1 or more"),
        ("IMEDNET_FLOWS_BACKOFF_BASE", "-1", "0 or more"),
        ("IMEDNET_FLOWS_MAX_RETRY_AFTER", "soon", "0 or more"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_fix_but_not_the_value(
    clean_env: pytest.MonkeyPatch, name: str, value: str, told: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        settings()
    message = str(caught.value)
    assert name in message and told in message and "unset it" in message
    assert f"'{value}'" not in message and f"input_value={value}" not in message


def test_of_reads_a_given_environment_only(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("PREFECT_API_URL", "http://this-process/api")
    given = Settings.of({"PREFECT_API_URL": " http://h/api ", "IMEDNET_FLOWS_MAX_CONCURRENCY": "3"})
    assert (given.prefect_api_url, given.max_concurrency) == ("http://h/api", 3)
    assert Settings.of({}).prefect_api_url is None
    with pytest.raises(SettingsError, match="IMEDNET_FLOWS_MAX_ATTEMPTS"):
        Settings.of({"IMEDNET_FLOWS_MAX_ATTEMPTS": "x"})
