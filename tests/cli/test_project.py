"""How the command line finds the Prefect project (`flows/`, `tasks/`, `deployments/`), which
an installed copy does not hold.

Why: the flows are loaded from the project folder, as Prefect loads a project: from the
setting `IMEDNET_FLOWS_PROJECT`, else the folder holding prefect.yaml at or above the
current one, else the checkout an editable install points at. Commands that run no flow
must not need a project at all, and when one is needed but missing the error says what to
do. The finder is tested with explicit folders; the command line runs as a user runs it,
from a folder unrelated to the project, with another package named `flows` installed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imednet_flows import project
from imednet_flows.cli import app
from imednet_flows.emulator import EmulatorServer
from imednet_flows.project import ProjectNotFound, find_root
from tests.cli.test_runs import flow_run, recorded_run_id
from tests.cli_helpers import user_env
from tests.conftest import BIG

ROOT = Path(__file__).resolve().parents[2]
K = BIG.study_key


def make_project(folder: Path) -> Path:
    (folder / "flows").mkdir(parents=True)
    (folder / "flows" / "__init__.py").write_text("")
    (folder / "prefect.yaml").write_text("name: imednet-flows\n")
    return folder


def test_found_from_a_subfolder_of_the_project(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    deep = proj / "docs" / "notes"
    deep.mkdir(parents=True)
    assert find_root(None, deep, tmp_path / "site-packages" / "imednet_flows") == proj


def test_the_setting_wins_over_the_current_folder(tmp_path: Path) -> None:
    here, there = make_project(tmp_path / "here"), make_project(tmp_path / "there")
    assert find_root(str(there), here, here / "imednet_flows") == there


def test_a_setting_that_is_no_project_is_an_error_not_skipped(tmp_path: Path) -> None:
    here = make_project(tmp_path / "here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProjectNotFound, match=r"IMEDNET_FLOWS_PROJECT=.*empty.*prefect\.yaml"):
        find_root(str(tmp_path / "empty"), here, here / "imednet_flows")


def test_another_prefect_project_is_passed_over(tmp_path: Path) -> None:
    """A prefect.yaml without flows/ is someone else's project: look further up."""
    proj = make_project(tmp_path / "proj")
    other = proj / "other"
    other.mkdir()
    (other / "prefect.yaml").write_text("name: other\n")
    assert find_root(None, other, tmp_path / "site-packages" / "imednet_flows") == proj


def test_an_editable_install_finds_its_checkout_from_anywhere(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "proj")
    (tmp_path / "elsewhere").mkdir()
    assert find_root(None, tmp_path / "elsewhere", proj / "imednet_flows") == proj


def test_no_project_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ProjectNotFound) as caught:
        find_root(None, tmp_path, tmp_path / "site-packages" / "imednet_flows")
    message = str(caught.value)
    assert "prefect.yaml" in message and str(tmp_path) in message
    assert "Run it from the project folder" in message and "IMEDNET_FLOWS_PROJECT" in message


def test_a_flow_is_loaded_under_its_package_name_only() -> None:
    """One module per flow: the object the adapter loads is the one `flows.x` holds, so
    Prefect and cloudpickle never see a second copy loaded as a script."""
    from flows.open_queries import get_open_queries

    assert project.load("flows.open_queries:get_open_queries") is get_open_queries


def test_a_shadowing_package_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A module of the project already imported from elsewhere is refused, not run."""
    stray = tmp_path / "flows" / "stray.py"
    stray.parent.mkdir()
    stray.write_text("thing = 1\n")
    module = type(sys)("flows.stray")
    module.__file__ = str(stray)
    monkeypatch.setitem(sys.modules, "flows.stray", module)
    with pytest.raises(ProjectNotFound, match=r"flows\.stray was imported from .*another package"):
        project.load("flows.stray:thing")


@pytest.mark.parametrize(
    "args",
    [
        ["queries", "--study", K],
        ["sync", "--study", K, "--cache", "CACHE"],
        ["serve"],
        ["deploy"],
        ["demo"],
    ],
    ids=lambda args: args[0],
)
def test_a_flow_command_without_a_project_says_what_to_do(
    args: list[str], prefect_api_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One line that names the setting, before anything starts: no traceback, no work pool
    created, no emulator started."""
    monkeypatch.setenv("IMEDNET_FLOWS_PROJECT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    args = [str(tmp_path / "c.sqlite") if a == "CACHE" else a for a in args]
    result = CliRunner(mix_stderr=False).invoke(app, args)
    assert result.exit_code == 1, result.output
    assert f"IMEDNET_FLOWS_PROJECT={tmp_path} is not an imednet-flows project" in result.stderr
    assert result.stdout == "" and not isinstance(result.exception, ProjectNotFound)


#: Starts the command line as an install of this checkout does: `imednet_flows` alone is
#: mapped to the checkout (the checkout is not on `sys.path`), and any editable install's
#: finder (which may map `flows` too) is removed, so `flows` is found only if the command
#: line finds the project itself.
EDITABLE = """
import importlib.util, sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in f.__module__]
root = sys.argv.pop(1)
spec = importlib.util.spec_from_file_location(
    "imednet_flows", f"{root}/imednet_flows/__init__.py",
    submodule_search_locations=[f"{root}/imednet_flows"],
)
sys.modules["imednet_flows"] = module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from imednet_flows.cli import main
sys.argv = ["imednet-flows", *sys.argv[1:]]
main()
"""


def installed_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """The command line from `cwd`, with another package named `flows` installed."""
    decoy = cwd / "site-packages" / "flows"
    decoy.mkdir(parents=True, exist_ok=True)
    (decoy / "__init__.py").write_text("")
    env = {**env, "PYTHONPATH": str(decoy.parent)}
    return subprocess.run(
        [sys.executable, "-c", EDITABLE, str(ROOT), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_an_installed_cli_runs_flows_from_any_folder(
    emulator: EmulatorServer, prefect_api_url: str, tmp_path: Path
) -> None:
    """From a folder that is no project, next to another package named `flows`, a recorded
    command still runs the project's flow."""
    env = user_env(emulator, tmp_path / "prefect-home", api_url=prefect_api_url)
    done = installed_cli(["queries", "--study", K], env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = flow_run(recorded_run_id(done.stderr))
    assert run.state.is_completed() and run.parameters["study_key"] == K


def test_commands_that_run_no_flow_need_no_project(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """A direct run works with no project to be found."""
    env = user_env(emulator, tmp_path / "prefect-home")
    env["IMEDNET_FLOWS_PROJECT"] = str(tmp_path)  # no project there: any use of it fails
    done = installed_cli(["queries", "--study", K], env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not recorded in Prefect" in done.stderr and " open, " in done.stdout
