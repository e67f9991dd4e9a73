"""Serve every deployment of prefect.yaml from this one process: `python -m deployments.serve`.

No worker or work pool needed: schedules and triggers fire runs here. Under a
service manager (systemd, supervisord) keep `pause_on_shutdown` off (the
default here), otherwise every restart would leave the schedules paused.
"""

from __future__ import annotations

import argparse

from prefect import serve
from prefect.client.orchestration import get_client
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectNotFound

from deployments.definitions import runner_deployments


def deployed_to_pools(deployments: list[RunnerDeployment]) -> list[str]:
    """Deployments of the same names already on a work pool. Serving would take them over
    (and drop the pool's pull steps), so workers would crash on them: refuse instead."""
    taken = []
    with get_client(sync_client=True) as client:
        for deployment in deployments:
            name = f"{deployment.flow_name}/{deployment.name}"
            try:
                existing = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            if existing.work_pool_name:
                taken.append(f"{name} (work pool {existing.work_pool_name})")
    return taken


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--pause-on-shutdown",
        action="store_true",
        help="Pause the schedules when this process stops (Prefect's default).",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="Most flow runs at once in this process."
    )
    args = parser.parse_args(argv)
    deployments = runner_deployments()
    taken = deployed_to_pools(deployments)
    if taken:
        raise SystemExit(
            "these deployments run on a work pool already: " + ", ".join(taken) + ". Serve "
            "or deploy, not both: delete them first (prefect deployment delete <name>) to "
            "serve from this process, or keep using the worker."
        )
    serve(*deployments, pause_on_shutdown=args.pause_on_shutdown, limit=args.limit)


if __name__ == "__main__":
    main()
