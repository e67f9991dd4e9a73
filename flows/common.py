"""Parameter types and small helpers every flow shares, so the UI forms read alike."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, get_type_hints

from pydantic import Field
from pydantic.fields import FieldInfo

F = TypeVar("F", bound=Callable[..., Any])

FILTER_HELP = (
    "In the API's own filter grammar: `attribute<op>value` with == != < <= > >=, `;` for AND, "
    "`,` for OR (`;` binds tighter), values with spaces or symbols in double quotes."
)

StudyKey = Annotated[
    str,
    Field(
        description="iMednet study key, e.g. PHX-101 (case-sensitive).",
        min_length=1,
        pattern=r"\S",
        examples=["PHX-101"],
    ),
]
Concurrency = Annotated[
    int,
    Field(
        ge=1,
        le=32,
        description="Most API requests of this run in flight at once "
        "(the API rate-limits; 4 is safe).",
    ),
]


def artifact_key(*parts: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")


def documented(fn: F) -> F:
    """Write an "Args:" docstring section from the parameters' Field descriptions.

    Prefect 3.9 builds the UI's run form from the signature but takes parameter
    descriptions only from the docstring (an Annotated Field's description is
    replaced by None). Applied under @flow, this keeps one source for both.
    """
    lines = []
    for name, hint in get_type_hints(fn, include_extras=True).items():
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, FieldInfo) and meta.description:
                lines.append(f"    {name}: {' '.join(meta.description.split())}")
    if lines:
        fn.__doc__ = f"{inspect.getdoc(fn) or ''}\n\nArgs:\n" + "\n".join(lines) + "\n"
    return fn
