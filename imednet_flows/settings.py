"""Every environment variable imednet-flows reads, read here and nowhere else.

One list is what an operator needs to find every knob, and one reader means a variable
is parsed, checked and explained the same way wherever it is used. `settings()` reads the
environment on every call instead of freezing it at import: a flow run, a Dask worker or
a test (monkeypatch) sees the environment as it is when the value is needed. The object
is built again only when a variable changed, so asking is cheap (crash points ask dozens
of times per sync).

The emulator's own command-line options are not settings: they configure a test server,
not the product.

No Prefect and no SDK imports: the command line reads these before deciding whether to
import Prefect at all (see `recording`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_core import PydanticUseDefault
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
    """An environment variable holds a value the product cannot use."""


class Settings(BaseSettings):
    """The environment, typed. Each field's alias is the variable's name; blank means
    unset. Keys are `SecretStr`: they never show in a repr, a log line or an error."""

    model_config = SettingsConfigDict(
        case_sensitive=True,
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
        populate_by_name=True,
    )

    # Where the API is, and the keys (else the Prefect Secret blocks and Variable).
    api_key: SecretStr | None = Field(
        None, alias="IMEDNET_API_KEY", description="the iMednet API key (x-api-key)"
    )
    security_key: SecretStr | None = Field(
        None,
        alias="IMEDNET_SECURITY_KEY",
        description="the iMednet security key (x-imn-security-key)",
    )
    base_url: str | None = Field(
        None,
        alias="IMEDNET_BASE_URL",
        description="the API's origin, e.g. https://edc.prod.imednetapi.com",
    )

    # How hard to load and to retry the API.
    max_concurrency: int = Field(
        4,
        ge=1,
        le=32,
        alias="IMEDNET_FLOWS_MAX_CONCURRENCY",
        description="a whole number from 1 to 32 (API requests of one run in flight at once)",
    )
    max_attempts: int = Field(
        6,
        ge=1,
        alias="IMEDNET_FLOWS_MAX_ATTEMPTS",
        description="a whole number of 1 or more (attempts per HTTP request, the first included)",
    )
    backoff_base: float = Field(
        1.0,
        ge=0,
        alias="IMEDNET_FLOWS_BACKOFF_BASE",
        description="seconds, 0 or more (the first retry waits up to this long)",
    )
    backoff_max: float = Field(
        30.0,
        ge=0,
        alias="IMEDNET_FLOWS_BACKOFF_MAX",
        description="seconds, 0 or more (the longest wait between two attempts)",
    )
    max_retry_after: float = Field(
        120.0,
        ge=0,
        alias="IMEDNET_FLOWS_MAX_RETRY_AFTER",
        description="seconds, 0 or more (a longer Retry-After fails the request instead)",
    )

    # Reliability tests only: where a sync kills itself (see `cache.crash`).
    crash_at: str | None = Field(
        None, alias="IMEDNET_FLOWS_CRASH_AT", description="a crash point's name"
    )
    crash_marker: str | None = Field(
        None,
        alias="IMEDNET_FLOWS_CRASH_MARKER",
        description="a file the crash point writes its name to",
    )

    # Where the Prefect project (prefect.yaml, flows/) is, when not found from the current
    # folder (see `project`).
    project: str | None = Field(
        None,
        alias="IMEDNET_FLOWS_PROJECT",
        description="a folder holding prefect.yaml and flows/ (the imednet-flows project)",
    )

    # Prefect's own variables, read the way Prefect reads them, to tell without importing
    # Prefect whether a run would be recorded (see `recording`).
    prefect_api_url: str | None = Field(
        None, alias="PREFECT_API_URL", description="the Prefect API's URL"
    )
    prefect_home: str | None = Field(None, alias="PREFECT_HOME", description="a folder")
    prefect_profiles_path: str | None = Field(
        None, alias="PREFECT_PROFILES_PATH", description="a profiles.toml file"
    )
    prefect_profile: str | None = Field(
        None, alias="PREFECT_PROFILE", description="a profile's name"
    )

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """Surrounding spaces are a copy-paste accident, and "  " means nothing set."""
        if isinstance(value, str):
            if not value.strip():
                raise PydanticUseDefault
            return value.strip()
        return value

    @classmethod
    def of(cls, environ: Mapping[str, str]) -> Settings:
        """The settings a given environment holds (a child process's, a test's), without
        reading this process's own. Raises SettingsError as `settings()` does."""
        try:
            return _Given(**{k: environ[k] for k in _VARIABLES if k in environ})
        except ValidationError as exc:
            raise SettingsError(_explain(exc)) from None

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable behind a field, for messages that tell what to set."""
        alias = cls.model_fields[field].alias
        assert alias is not None, field
        return alias


class _Given(Settings):
    """Settings from the values passed in only: `Settings.of`."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: Any, *_others: Any, **_: Any
    ) -> tuple[Any, ...]:
        return (init_settings,)


def settings() -> Settings:
    """The settings as the environment holds them now.

    Raises SettingsError naming the variable, what it should hold and its default; the
    value itself is never repeated (it may be a key pasted into the wrong variable)."""
    return _settings_of(tuple(os.environ.get(name) for name in _VARIABLES))


_VARIABLES = tuple(Settings.variable(name) for name in Settings.model_fields)


@lru_cache(maxsize=16)
def _settings_of(_environment: tuple[str | None, ...]) -> Settings:
    """`_environment` is only the cache key: the values Settings() is about to read."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    problems = []
    by_alias = {f.alias: f for f in Settings.model_fields.values()}
    for error in exc.errors(include_input=False, include_url=False):
        name = str(error["loc"][0]) if error["loc"] else "?"
        field = by_alias.get(name)
        expected = f"; it must be {field.description}" if field and field.description else ""
        default = f" ({field.default})" if field and field.default is not None else ""
        problems.append(
            f"environment variable {name}: {error['msg'].lower()}{expected}. Correct it, "
            f"or unset it to use the default{default}."
        )
    return "\n".join(problems)
