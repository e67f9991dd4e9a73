"""Parameter types and small helpers every flow shares, so the UI forms read alike.

What the Prefect UI makes of a flow's parameter schema decides what a person meets
first, so the helpers here exist for the run form's sake:

- `param` gives a parameter a human title: Prefect 3.9 titles every parameter with its
  name and drops an Annotated Field's own title and description, but keeps a Field's
  `json_schema_extra`, so the title goes there too.
- `documented` writes the descriptions into the docstring, which Prefect does read.
- `OptionalText` is a plain text box: `str | None` renders as a "str / None" type toggle
  with no text box until the user picks "str". Blank means "not given"; Python callers
  may still pass None.
- Descriptions put examples in their own text (the UI shows no schema `examples`) and
  never a raw `<...>`: the V1 UI renders them as markdown, which drops it as HTML.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, get_type_hints

from pydantic import BeforeValidator, Field
from pydantic.fields import FieldInfo

F = TypeVar("F", bound=Callable[..., Any])

FILTER_HELP = (
    "In the API's own filter grammar: `attribute==value` with == != < <= > >= as the "
    "operator, `;` for AND, `,` for OR (`;` binds tighter), values with spaces or symbols in "
    "double quotes. Leave empty for no filter."
)


def param(title: str, description: str, **constraints: Any) -> FieldInfo:
    """A parameter's Field whose title survives into the run form (see the module doc)."""
    return Field(
        title=title,
        description=" ".join(description.split()),
        json_schema_extra={"title": title},
        **constraints,
    )


def _blank_is_empty(value: object) -> object:
    return "" if value is None or (isinstance(value, str) and not value.strip()) else value


#: Text that may be left empty: "" (or None, or only spaces) means "not given".
OptionalText = Annotated[str, BeforeValidator(_blank_is_empty)]

StudyKey = Annotated[
    str,
    param(
        "Study key",
        "iMednet study key, e.g. PHX-101 (case-sensitive).",
        min_length=1,
        pattern=r"\S",
    ),
]
Concurrency = Annotated[
    int,
    param(
        "Concurrent API requests",
        "Most API requests of this run in flight at once (the API rate-limits; 4 is safe).",
        ge=1,
        le=32,
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


# --------------------------------------------------------------------------- markdown


def md_cell(value: object) -> str:
    """A value as one markdown table cell: no line breaks, pipes or HTML, which would
    break the table or vanish in the UI's renderer."""
    text = "" if value is None else str(value)
    text = " ".join(text.split())
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def md_table(headers: list[str], rows: list[list[object]], empty: str = "none") -> str:
    """A markdown table, or `empty` in italics when there are no rows (an empty table
    renders as a bare header, which reads like a rendering fault)."""
    if not rows:
        return f"_{empty}_"
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
