"""The one door from the library into the Prefect project: `flows/`, `tasks/`, `deployments/`.

Why: an installed copy of imednet-flows holds the library only. Top-level packages named
`flows` or `tasks` in site-packages would collide with any other package of those names,
so the flows stay what Prefect makes of them, a project loaded from its folder (the
entrypoints in prefect.yaml are paths relative to it). The library imports that layer
nowhere but here, by name and only when a command runs a flow: direct runs, the emulator,
the cache commands, `doctor` and `configure` work without any project.

No Prefect import here: finding the project must not cost Prefect's import.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from imednet_flows.edc.errors import ImednetFlowsError
from imednet_flows.settings import Settings, settings

PROJECT_FILE = "prefect.yaml"
VARIABLE = Settings.variable("project")


class ProjectNotFound(ImednetFlowsError):
    """No project folder, or the one given is not one: what is missing and what to do."""


def is_project(folder: Path) -> bool:
    """prefect.yaml alone is not enough: another Prefect project may enclose this folder."""
    return (folder / PROJECT_FILE).is_file() and (folder / "flows" / "__init__.py").is_file()


def find_root(setting: str | None, cwd: Path, package_dir: Path) -> Path:
    """The project folder: the setting if given (a wrong one is an error, never skipped),
    else the nearest project at or above `cwd` (as Prefect finds prefect.yaml), else the
    checkout `package_dir` sits in (an editable install used from any folder)."""
    if setting:
        root = Path(setting).expanduser().resolve()
        if not is_project(root):
            raise ProjectNotFound(
                f"{VARIABLE}={root} is not an imednet-flows project folder: it needs "
                f"{PROJECT_FILE} and flows/. Set {VARIABLE} to the folder of your clone of "
                "the project that holds them, or unset it to use the current folder's."
            )
        return root
    cwd = cwd.resolve()  # as `load` compares module files, which it resolves
    for folder in (cwd, *cwd.parents):
        if is_project(folder):
            return folder
    if is_project(package_dir.resolve().parent):
        return package_dir.resolve().parent
    raise ProjectNotFound(
        f"this command runs a Prefect flow, and no imednet-flows project (a folder holding "
        f"{PROJECT_FILE} and flows/) was found in {cwd} or above it. Run it from the "
        f"project folder (your clone of the project), or set {VARIABLE} to that folder."
    )


def root() -> Path:
    """The project this process uses, found as `find_root` says."""
    return find_root(settings().project, Path.cwd(), Path(__file__).resolve().parent)


def load(target: str) -> Any:
    """An object of the project by "module:name", e.g. "flows.open_queries:get_open_queries".

    The project folder goes first on `sys.path` (once), so its packages win over any others
    of the same names; a module is imported by its package name only, never as a script, so
    Prefect and cloudpickle see one copy of each flow and task."""
    folder = root()
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    module_name, _, name = target.partition(":")
    module = importlib.import_module(module_name)
    source = Path(module.__file__ or "").resolve()
    if not source.is_relative_to(folder):
        raise ProjectNotFound(
            f"{module_name} was imported from {source}, not from the project at {folder}: "
            f"another package named '{module_name.split('.')[0]}' was imported first (an "
            "older install of imednet-flows that still holds it?). Uninstall that package, "
            "or reinstall imednet-flows (`make venv`)."
        )
    return getattr(module, name)
