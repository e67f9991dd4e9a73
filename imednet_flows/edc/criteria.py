"""Server-side restriction: subject keys and visit ids become OR-lists in the filter.

The grammar has no parentheses, so `record_filter AND (key in K)` is written in
disjunctive normal form and split into several requests when one URL would grow
too long. Pulling the whole study to narrow it in Python is what this avoids.
"""

from __future__ import annotations

from imednet_flows.filter_syntax import Dnf, and_dnf, any_of, render_dnf

#: Filter length per request; well below common 8 KiB URL limits after encoding.
MAX_FILTER_CHARS = 3000


def restricted(
    base: Dnf,
    attribute: str,
    values: list[object],
    scope: Dnf | None = None,
    max_chars: int = MAX_FILTER_CHARS,
) -> list[Dnf]:
    """Filters equal to `base AND attribute in values`, each at most `max_chars` long once
    `scope` (terms the pager adds to every group, e.g. studyKey==K) is added too.

    No values means nothing can match: no requests at all, not an unrestricted one.
    """
    scope = scope or [[]]
    chunks: list[Dnf] = []
    current: list[object] = []
    for value in dict.fromkeys(values):  # dedupe, keep order
        candidate = [*current, value]
        rendered = render_dnf(and_dnf(and_dnf(base, any_of(attribute, candidate)), scope))
        if current and len(rendered) > max_chars:
            chunks.append(and_dnf(base, any_of(attribute, current)))
            current = [value]
        else:
            current = candidate
    if current:
        chunks.append(and_dnf(base, any_of(attribute, current)))
    return chunks
