"""Parameter types and small helpers every flow shares, so the UI forms read alike."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

FILTER_HELP = (
    "In the API's own filter grammar: `attribute<op>value` with == != < <= > >=, `;` for AND, "
    "`,` for OR (`;` binds tighter), values with spaces or symbols in double quotes."
)

StudyKey = Annotated[
    str,
    Field(
        description="iMednet study key, e.g. PHX-101 (case-sensitive).",
        min_length=1,
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
