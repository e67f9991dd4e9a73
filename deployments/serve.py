"""Serve every deployment of prefect.yaml from this one process: `python -m deployments.serve`.

No worker or work pool needed: schedules and triggers fire runs here. Under a
service manager (systemd, supervisord) keep `pause_on_shutdown` off (the
default here), otherwise every restart would leave the schedules paused.
"""

from __future__ import annotations

import argparse

from prefect import serve

from deployments.definitions import runner_deployments


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
    serve(*runner_deployments(), pause_on_shutdown=args.pause_on_shutdown, limit=args.limit)


if __name__ == "__main__":
    main()
