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

import hashlib
import inspect
import logging
import re
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

from pydantic import BeforeValidator, Field
from pydantic.fields import FieldInfo

from imednet_flows.edc.errors import ImednetFlowsError

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

#: 0 (the default) means the operator's setting IMEDNET_FLOWS_MAX_CONCURRENCY, 4 unless set:
#: one knob for every flow and deployment, a parameter only to override it per run. Not
#: None: the run form would show an "int / None" type toggle, or refuse an empty box.
Concurrency = Annotated[
    int,
    param(
        "Concurrent API requests",
        "Most API requests of this run in flight at once (the API rate-limits; 4 is safe). "
        "0: the setting IMEDNET_FLOWS_MAX_CONCURRENCY, 4 unless set.",
        ge=0,
        le=32,
    ),
]


def artifact_key(*parts: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only. A part with any other
    character (study "ONC_7", subject "01/002") gets a short digest of itself, so keys that
    differ only there ("ONC_7" and "ONC-7") never share an artifact and one study's latest
    report never hides another's. Letters differing only by case are not told apart."""
    return "-".join(_key_part(part) for part in parts)


def _key_part(part: str) -> str:
    slug = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", part.lower())).strip("-")
    if slug == part.lower():
        return slug
    digest = hashlib.sha256(part.encode()).hexdigest()[:6]
    return f"{slug}-{digest}" if slug else digest


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


# --------------------------------------------------------------------------- failure logs


class OneTracebackPerFailure(logging.Filter):
    """A failed deployment run logs its exception twice in Prefect 3.9: the flow engine's
    "Encountered exception during execution" with the traceback, then, for the same
    exception, the engine entry point's "Engine execution exited with unexpected
    exception" with it again. The second record of an exception already logged with its
    traceback becomes one line: what failed and what to do. Nothing of Prefect's is patched;
    this is a stdlib filter on the flow-run logger."""

    def __init__(self) -> None:
        super().__init__()
        # (flow run, exception): a parent run that re-raises a subflow's exception logs its
        # own traceback. Exceptions cannot be weakly referenced; the last few are kept.
        self._logged: deque[tuple[object, BaseException]] = deque(maxlen=8)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        run_id = getattr(record, "flow_run_id", None)
        if not any(run == run_id and seen is exc for run, seen in self._logged):
            self._logged.append((run_id, exc))
            return True
        run = getattr(record, "flow_run_name", None)
        record.msg = "%s failed: %s"
        record.args = (f"Flow run {run!r}" if run else "The flow run", failure_line(exc))
        record.exc_info = None
        record.exc_text = None
        return True


def failure_line(exc: BaseException) -> str:
    """One line for a failure. This project's own errors say what to do in their first
    line; anything else is unexpected, and the traceback logged above shows where."""
    text = str(exc).strip()
    first = text.splitlines()[0].rstrip(".:") if text else type(exc).__name__
    more = " (details above)" if "\n" in text else ""
    if isinstance(exc, ImednetFlowsError) or _raised_here(exc):
        return f"{first}{more}."
    return (
        f"{type(exc).__name__}: {first}{more}. Unexpected: the traceback above shows where; "
        "check the parameters and the API, then run again, or report it with that traceback."
    )


def _raised_here(exc: BaseException) -> bool:
    """Raised by this project's own code (e.g. the sync's RuntimeError naming the failed
    studies), whose messages were written to be read."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    return path.is_relative_to(_PROJECT) and path.relative_to(_PROJECT).parts[0] in _PACKAGES


_PROJECT = Path(__file__).resolve().parent.parent
_PACKAGES = {"flows", "tasks", "imednet_flows", "deployments"}


def install_failure_filter(logger_name: str = "prefect.flow_runs") -> None:
    """Idempotent. It runs when this module is imported, which every flow module does, so
    in a deployment run it is in place before the flow starts."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, OneTracebackPerFailure) for f in logger.filters):
        logger.addFilter(OneTracebackPerFailure())


install_failure_filter()


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
