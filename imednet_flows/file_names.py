"""File and directory names made from keys (study keys, form keys), one scheme for every
file the project writes: Parquet snapshots and extraction files alike.

A key can hold any character, and two keys must never share a file: "A/B" and "A_B" once
both became ``A_B`` and one form's file overwrote the other's.
"""

from __future__ import annotations

import hashlib
import re

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME = 80


def safe_name(key: str) -> str:
    """A directory/file name for a key, distinct for distinct keys.

    Keys made only of ``[A-Za-z0-9._-]`` (not starting with a dot) are used as they are,
    so ``PHX-101`` stays readable. Anything else is sanitised and suffixed with ``~`` and a
    hash of the original key; ``~`` never survives sanitising, so a suffixed name can never
    equal an unchanged one, and two suffixed names differ unless their hashes collide.
    (On a case-insensitive file system, keys differing only in case still share a name.)
    """
    cleaned = _SAFE_CHARS.sub("_", key).lstrip(".")[:_MAX_NAME]
    if cleaned == key and cleaned:
        return cleaned
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{cleaned or 'key'}~{digest}"
