"""Where snapshot sets live, how they are named, and how old ones go.

A study's directory holds complete sets named by UTC run time, ``latest`` (a relative
symlink to one of them, swapped atomically), and while a run writes, ``.tmp-<name>`` and
``.latest-tmp-<name>`` entries that the next run removes if that run died. Every path is
checked to resolve inside its parent, so no key can make a write land elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from imednet_flows.file_names import safe_name

LATEST = "latest"
MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
LINK_TMP_PREFIX = ".latest-tmp-"

_SET_NAME = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?$")


class UnsafeSnapshotPath(ValueError):
    """A study or form key would have resolved outside its snapshot directory."""


def inside(base: Path, name: str) -> Path:
    """``base/name``, refusing anything that does not resolve to a direct child of base."""
    root = base.resolve()
    target = (root / name).resolve()
    if target.parent != root or name in ("", ".", ".."):
        raise UnsafeSnapshotPath(f"{name!r} resolves outside {root}")
    return target


def study_path(snapshot_dir: str | Path, study_key: str) -> Path:
    """The study's directory under ``snapshot_dir`` (not created)."""
    return inside(Path(snapshot_dir), safe_name(study_key))


def set_key(name: str) -> tuple[str, int] | None:
    match = _SET_NAME.match(name)
    return (match.group(1), int(match.group(2) or 0)) if match else None


def _set_name(key: tuple[str, int]) -> str:
    return key[0] if key[1] == 0 else f"{key[0]}-{key[1]}"


def complete_sets(study_dir: Path) -> list[Path]:
    """Complete sets, oldest first: run-time-named directories holding a manifest."""
    if not study_dir.is_dir():
        return []
    found = []
    for entry in study_dir.iterdir():
        key = set_key(entry.name)
        if key and not entry.is_symlink() and (entry / MANIFEST).is_file():
            found.append((key, entry))
    return [path for _, path in sorted(found)]


def latest_target(study_dir: Path) -> Path | None:
    link = study_dir / LATEST
    if not link.is_symlink():
        return None
    target = (study_dir / os.readlink(link)).resolve()
    if target.parent != study_dir.resolve() or not (target / MANIFEST).is_file():
        return None
    return target


def latest_snapshot(snapshot_dir: str | Path, study_key: str) -> Path | None:
    """The complete set ``latest`` points to, as its concrete (stable) directory, or None.

    The concrete path rather than ``.../latest`` so a caller reading several files is not
    switched to a newer set half-way; it stays valid until retention deletes it.
    """
    return latest_target(study_path(snapshot_dir, study_key))


def read_manifest(set_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(set_dir) / MANIFEST).read_text())


def new_set_name(study_dir: Path, now: datetime) -> str:
    """The run time, made unique and later than every existing set, so names sort by age
    even if the clock steps back."""
    key = (now.strftime("%Y%m%dT%H%M%SZ"), 0)
    for existing in complete_sets(study_dir)[-1:]:
        last = set_key(existing.name)
        if last is not None and key <= last:
            key = (last[0], last[1] + 1)

    def taken(key: tuple[str, int]) -> bool:
        name = _set_name(key)
        return (study_dir / name).exists() or (study_dir / (TMP_PREFIX + name)).exists()

    while taken(key):
        key = (key[0], key[1] + 1)
    return _set_name(key)


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def clean_leftovers(study_dir: Path) -> None:
    """Remove what a crashed or failed run left: temporary sets and temporary links."""
    for entry in study_dir.iterdir():
        if entry.name.startswith((TMP_PREFIX, LINK_TMP_PREFIX)):
            remove(entry)


def point_latest(study_dir: Path, name: str) -> None:
    """Swap ``latest`` to `name` atomically: a new relative symlink renamed over it."""
    link_tmp = study_dir / f"{LINK_TMP_PREFIX}{name}"
    remove(link_tmp)
    os.symlink(name, link_tmp, target_is_directory=True)
    os.replace(link_tmp, study_dir / LATEST)


def apply_retention(study_dir: Path, retention: int) -> list[str]:
    """Delete all but the ``retention`` newest complete sets, never the one latest names.
    Files shared by hard links with kept sets live on through those links."""
    sets = complete_sets(study_dir)
    keep = {p.name for p in sets[-retention:]}
    current = latest_target(study_dir)
    if current is not None:
        keep.add(current.name)
    removed = []
    for path in sets:
        if path.name not in keep:
            # Renamed first so a crash mid-delete leaves a .tmp-* the next run removes,
            # not a manifest-less directory nothing would ever clean.
            doomed = path.with_name(f"{TMP_PREFIX}old-{path.name}")
            os.rename(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            removed.append(path.name)
    return removed
