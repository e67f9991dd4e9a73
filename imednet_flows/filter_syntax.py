"""The iMednet filter grammar (docs/api-behaviour.md) and timestamps as filter values.

Shared by the emulator, which evaluates filters, and by the flows, which build
them: both must agree on quoting, precedence and what a timestamp looks like.
Stdlib only.
"""

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from imednet_flows.timestamps import BadTimestamp, parse_instant

Comparison = Callable[[Any, Any], bool]


class FilterError(ValueError):
    """Raised for malformed syntax, unknown attribute, bad operator or bad value.

    The message is returned to API clients in a 400 body, so it names the offending piece of
    text and its position instead of describing parser internals.
    """


# --------------------------------------------------------------------------- lexical layer

_ATTRIBUTE_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A quoted value may hold any character; a backslash escapes the next one (`\"`, `\\`).
_QUOTED_RE: Final = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_ESCAPE_RE: Final = re.compile(r"\\(.)", re.DOTALL)
_UNQUOTED_RE: Final = re.compile(r'[^;,"]*')
_SEPARATORS: Final = ";,"

# Longest match first, so "<=" is never read as "<" followed by a value starting with "=".
_OPERATORS: Final = ("==", "!=", "<=", ">=", "=~", "~=", "<", ">")
CONTAINS_OPS: Final = frozenset({"=~", "~="})
FILTER_OPS_HINT: Final = "== != <= >= < >"
RECORD_DATA_OPS_HINT: Final = "== != <= >= < > =~ ~="

COMPARISONS: Final[Mapping[str, Comparison]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True, slots=True)
class Term:
    """One `attribute op value` triple with the offsets needed for error messages."""

    attribute: str
    op: str
    value: str
    position: int
    value_position: int


def _snippet(text: str, start: int) -> str:
    """The raw text of the term starting at `start`, for quoting it back in an error."""
    end = start
    while end < len(text) and text[end] not in _SEPARATORS:
        end += 1
    raw = text[start:end]
    return raw if len(raw) <= 60 else raw[:57] + "..."


def parse_dnf(text: str, param: str) -> list[list[Term]]:
    """Split `text` into OR-ed groups of AND-ed terms.

    `;` binds tighter than `,` (RSQL), so `a,b;c` is `[[a], [b, c]]`: a new group starts at
    every comma.
    """
    ops_hint = RECORD_DATA_OPS_HINT if param == "recordDataFilter" else FILTER_OPS_HINT
    groups: list[list[Term]] = [[]]
    pos = 0
    while True:
        term, pos = _parse_term(text, pos, param, ops_hint)
        groups[-1].append(term)
        if pos == len(text):
            return groups
        if text[pos] == ",":
            groups.append([])
        pos += 1


def _parse_term(text: str, pos: int, param: str, ops_hint: str) -> tuple[Term, int]:
    """Read one term at `pos`; return it and the offset of the following separator or end."""
    if pos == len(text):
        raise FilterError(
            f"empty term at end of {param} (position {pos}): "
            f'"{text[pos - 1]}" must be followed by another term'
        )
    if text[pos] in _SEPARATORS:
        raise FilterError(f'empty term at position {pos} in {param}: unexpected "{text[pos]}"')
    match = _ATTRIBUTE_RE.match(text, pos)
    if match is None:
        raise FilterError(
            f'malformed term "{_snippet(text, pos)}" at position {pos} in {param}: '
            "expected an attribute name ([A-Za-z_][A-Za-z0-9_]*)"
        )
    attribute = match.group()
    op_pos = match.end()
    op = next((o for o in _OPERATORS if text.startswith(o, op_pos)), None)
    if op is None:
        raise FilterError(
            f'malformed term "{_snippet(text, pos)}" at position {pos} in {param}: '
            f'expected one of {ops_hint} after "{attribute}" at position {op_pos}'
        )
    value_pos = op_pos + len(op)
    value, end = _parse_value(text, value_pos, param)
    return Term(attribute, op, value, pos, value_pos), end


def _parse_value(text: str, pos: int, param: str) -> tuple[str, int]:
    """Read a quoted or unquoted value at `pos`; return it and the offset just after it."""
    if pos == len(text) or text[pos] in _SEPARATORS:
        raise FilterError(
            f'missing value at position {pos} in {param} after "{_snippet_before(text, pos)}"'
        )
    if text[pos] == '"':
        return _parse_quoted(text, pos, param)
    match = _UNQUOTED_RE.match(text, pos)
    assert match is not None  # the pattern accepts the empty string
    end = match.end()
    if end < len(text) and text[end] == '"':
        raise FilterError(
            f"unexpected '\"' at position {end} in {param}: "
            'a value containing quotes must be quoted as a whole, with \\" inside'
        )
    return match.group(), end


def _parse_quoted(text: str, pos: int, param: str) -> tuple[str, int]:
    """Read `"..."` at `pos`, undoing backslash escapes."""
    match = _QUOTED_RE.match(text, pos)
    if match is None:
        raise FilterError(f"unterminated quoted value starting at position {pos} in {param}")
    end = match.end()
    if end < len(text) and text[end] not in _SEPARATORS:
        raise FilterError(
            f'unexpected "{text[end]}" at position {end} in {param} after a quoted value: '
            'expected ";", "," or the end of the filter'
        )
    return _ESCAPE_RE.sub(r"\1", match.group(1)), end


def _snippet_before(text: str, pos: int) -> str:
    """The term text leading up to `pos`, e.g. `formKey==` for a missing value."""
    start = pos
    while start > 0 and text[start - 1] not in _SEPARATORS:
        start -= 1
    return text[start:pos]


# --------------------------------------------------------------------------- timestamps


def parse_timestamp(value: str) -> datetime:
    """Parse any accepted timestamp form to an aware UTC datetime.

    Accepted: 'YYYY-MM-DD HH:MM:SS', 'YYYY-MM-DDTHH:MM:SS[.fff](Z|+hh:mm|-hh:mm)' and
    'YYYY-MM-DD' (= 00:00:00); no zone means UTC. Fractions beyond microseconds are truncated.
    """
    try:
        return parse_instant(value)[0]
    except BadTimestamp as exc:
        raise FilterError(f"invalid timestamp {value!r}: {exc}") from None


# --------------------------------------------------------------------------- building filters

_SAFE_VALUE_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")


def quote_value(value: object) -> str:
    """Quote a value the way SDK 0.5.0 does, so our requests look like the SDK's on the wire."""
    text = str(value)
    if _SAFE_VALUE_RE.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_term(term: Term) -> str:
    return f"{term.attribute}{term.op}{quote_value(term.value)}"


Dnf = list[list[str]]


def dnf(text: str | None, param: str = "filter") -> Dnf:
    """A filter as OR-groups of AND-ed rendered terms; empty text is `[[]]` (match all).

    Raises FilterError for malformed text, so a bad user filter fails before any request.
    """
    if not text or not text.strip():
        return [[]]
    return [[render_term(t) for t in group] for group in parse_dnf(text, param)]


def and_dnf(left: Dnf, right: Dnf) -> Dnf:
    """(a OR b) AND (c OR d) = a;c , a;d , b;c , b;d: the grammar has no parentheses."""
    return [a + b for a in left for b in right]


def any_of(attribute: str, values: list[object]) -> Dnf:
    """`attribute` equal to any of `values`, as OR-groups."""
    return [[f"{attribute}=={quote_value(v)}"] for v in values]


def render_dnf(groups: Dnf) -> str:
    return ",".join(";".join(group) for group in groups)
