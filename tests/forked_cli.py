"""`imednet-flows` in a process of its own, forked from one that has imported it already.

A killed sync must be a real process (SIGKILL, an OS lock released by the kernel), but a
fresh interpreter spends about 2.5 s importing Prefect and the flows before the sync
starts: most of a crash test. A fork server that preloaded them starts each run at once;
the run is still the CLI's `main()` in a new process, with the environment, folder and
standard streams a shell would give it.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.process import BaseProcess
from pathlib import Path

PRELOAD = ["imednet_flows.cli", "flows.incremental_sync", "tests.forked_cli"]


def _cli(argv: list[str], env: dict[str, str], cwd: str | None, out: str, err: str) -> None:
    """The child: what `cd cwd; env ... imednet-flows argv >out 2>err` would run."""
    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    for path, fd in ((out, 1), (err, 2)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = ["imednet-flows", *argv]
    from imednet_flows.cli import main

    main()


class ForkedCli:
    """Runs of the CLI forked from a server started with `env`: Prefect reads its settings
    when imported, so the server must see the Prefect API the runs use."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD)
        saved = dict(os.environ)
        os.environ.update(env)
        try:
            forkserver.ensure_running()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def start(self, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> _Started:
        folder = tempfile.mkdtemp(prefix="forked-cli-")
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        process = self._context.Process(
            target=_cli, args=(argv, env, None if cwd is None else str(cwd), str(out), str(err))
        )
        process.start()
        return _Started(argv, process, Path(folder))

    def run(
        self, argv: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        return self.start(argv, env, cwd).wait(timeout)


@dataclass
class _Started:
    """A run under way; `wait` gives what `subprocess.run(..., capture_output=True)` would."""

    argv: list[str]
    process: BaseProcess
    folder: Path

    def wait(self, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        try:
            self.process.join(timeout)
            out = (self.folder / "stdout").read_text()
            err = (self.folder / "stderr").read_text()
            if self.process.exitcode is None:
                raise subprocess.TimeoutExpired(self.argv, timeout, out, err)
            return subprocess.CompletedProcess(self.argv, self.process.exitcode, out, err)
        finally:
            self.stop()

    def stop(self) -> None:
        """Kill it if it still runs (a failed test must not leave it behind)."""
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join(10)
        shutil.rmtree(self.folder, ignore_errors=True)
