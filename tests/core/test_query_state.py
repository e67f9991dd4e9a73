"""The open-queries report and the cache's `is_open` column use one latest-comment rule."""

from __future__ import annotations

from typing import Any

import pytest

from imednet_flows.cache.collections import BY_NAME
from imednet_flows.queries import classify


def _query(annotation_id: int, *comments: tuple[int | None, bool]) -> dict[str, Any]:
    return {
        "annotationId": annotation_id,
        "queryComments": [{"sequence": s, "closed": c} for s, c in comments],
    }


CASES = {
    "no comments": (_query(1), None),
    "closed last, listed first": (_query(2, (2, True), (1, False)), 0),
    "re-opened": (_query(3, (1, False), (2, True), (3, False)), 1),
    "sequence missing counts as 0": (_query(4, (None, False), (1, True)), 0),
}


@pytest.mark.parametrize("case", CASES)
def test_report_and_cache_agree_on_open(case: str) -> None:
    query, expected = CASES[case]
    column = next(c for c in BY_NAME["queries"].columns if c.name == "is_open")
    assert callable(column.source)
    assert column.source(query) == expected
    open_, undetermined, closed = classify([query])
    assert (len(open_), len(undetermined), closed) == {
        1: (1, 0, 0),
        0: (0, 0, 1),
        None: (0, 1, 0),
    }[expected]
