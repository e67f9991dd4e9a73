"""API items as cache rows, at the speed a full sync needs.

A first sync turns hundreds of thousands of items into rows; a generic loop over column
specs spends more time in Python calls than SQLite spends storing them. So each collection
gets one small function, generated once from its spec, that reads its fields with plain
`dict.get` and serialises the item once for ``raw``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from imednet_flows.cache.collections import Collection

RowBuilder = Callable[[str, list[dict[str, Any]]], list[tuple[Any, ...]]]


class MalformedItem(ValueError):
    """An item the API sent cannot be stored (no id, or not an object)."""


_BUILDERS: dict[str, RowBuilder] = {}


def row_builder(spec: Collection) -> RowBuilder:
    """A function (study_key, items) -> rows in `spec.column_names` order."""
    if spec.name not in _BUILDERS:
        _BUILDERS[spec.name] = _generate(spec)
    return _BUILDERS[spec.name]


def _generate(spec: Collection) -> RowBuilder:
    env: dict[str, Any] = {"_dumps": orjson.dumps}
    parts = ["study_key", f"it[{spec.id_field!r}]"]
    for n, column in enumerate(spec.columns):
        if column.field is not None:
            parts.append(f"g({column.field!r})")
        else:
            env[f"_c{n}"] = column.source
            parts.append(f"_c{n}(it)")
    parts.append("_dumps(it).decode()")
    source = (
        "def build(study_key, items):\n"
        "    out = []\n"
        "    append = out.append\n"
        "    for it in items:\n"
        "        g = it.get\n"
        f"        append(({', '.join(parts)}))\n"
        "    return out\n"
    )
    exec(compile(source, f"<rows of {spec.name}>", "exec"), env)
    generated: RowBuilder = env["build"]

    def build(study_key: str, items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        try:
            return generated(study_key, items)
        except (KeyError, AttributeError, TypeError) as exc:
            ok = [isinstance(i, dict) and spec.id_field in i for i in items]
            bad = ok.index(False) if False in ok else None
            raise MalformedItem(
                f"the API sent a {spec.name} item (number {bad} of its page) without "
                f"{spec.id_field} or not as an object; nothing of this page was stored"
            ) from exc

    return build
