"""What `pip install .` puts into site-packages, and which way the imports go.

Why: top-level packages named `flows`, `tasks` or `deployments` in site-packages collide with
any other package of those names, and a library that imports its application layer cannot
be installed without it. An installed copy holds `imednet_flows` only; the flows stay a
Prefect project in their folder, which the library reaches through `imednet_flows.project`
alone.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPLICATION = ("flows", "tasks", "deployments")
#: The one module of the library that may reach the application layer.
ADAPTER = "imednet_flows/project.py"
#: Not part of a source distribution: the build must not see them.
NOT_SOURCES = shutil.ignore_patterns(
    ".venv", ".git", ".prefect", "build", "dist", "*.egg-info", "__pycache__", "*.sqlite*",
    ".pytest_cache", ".ruff_cache", "demo-output", "test-artifacts", "imednet-cache",
)  # fmt: skip


def application_imports(source: str) -> list[str]:
    """Modules of the application layer a source imports, at any depth (lazy ones too)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [name for name in names if name.split(".")[0] in APPLICATION]
    return found


def library_imports_of_the_application(root: Path = ROOT) -> dict[str, list[str]]:
    found = {}
    for path in sorted((root / "imednet_flows").rglob("*.py")):
        name = path.relative_to(root).as_posix()
        imports = application_imports(path.read_text(encoding="utf-8"))
        if imports and name != ADAPTER:
            found[name] = imports
    return found


def test_the_library_imports_the_application_only_through_the_adapter() -> None:
    found = library_imports_of_the_application()
    assert not found, (
        f"imednet_flows/ imports the application layer: {found}. Reach flows, tasks and "
        f"deployments through {ADAPTER} (`project.load('flows.module:name')`) instead."
    )


def test_the_check_sees_a_lazy_import(tmp_path: Path) -> None:
    """The check must be able to fail: an import inside a function is found, an import of a
    library module whose name merely starts with an application name is not."""
    (tmp_path / "imednet_flows").mkdir()
    source = "import flows_extra\ndef f():\n    from deployments.serve import main\n"
    (tmp_path / "imednet_flows" / "x.py").write_text(source)
    assert library_imports_of_the_application(tmp_path) == {
        "imednet_flows/x.py": ["deployments.serve"]
    }


def test_the_wheel_holds_the_library_only(tmp_path: Path) -> None:
    """The wheel `pip install .` installs, built from a copy of the sources (a build in the
    checkout would leave `build/` behind, whose stale files a later build can pick up)."""
    sources = tmp_path / "src"
    shutil.copytree(ROOT, sources, ignore=NOT_SOURCES, symlinks=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        cwd=sources,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("imednet_flows-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"imednet_flows"}
    assert "imednet_flows/project.py" in zipfile.ZipFile(wheel).namelist()
