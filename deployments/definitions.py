"""Deployments as `prefect.yaml` defines them, for serving without a work pool.

`prefect.yaml` is the one definition; this module reads it and builds the same
deployments with Prefect's own translation of schedules and triggers (see
`prefect_deploy`), so `serve` and `prefect deploy` cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import RunnerDeployment
from prefect.flows import load_flow_from_entrypoint

from deployments import prefect_deploy

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT_FILE = PROJECT_ROOT / "prefect.yaml"


def load_definitions(path: Path = PREFECT_FILE) -> list[dict[str, Any]]:
    with path.open() as handle:
        return yaml.safe_load(handle)["deployments"]


def _concurrency(value: Any) -> int | ConcurrencyLimitConfig | None:
    if isinstance(value, dict):
        return ConcurrencyLimitConfig(**value)
    return value


def runner_deployment(spec: dict[str, Any], root: Path = PROJECT_ROOT) -> RunnerDeployment:
    flow = load_flow_from_entrypoint(str(root / spec["entrypoint"]))
    return flow.to_deployment(
        name=spec["name"],
        description=spec.get("description"),
        tags=spec.get("tags"),
        parameters=spec.get("parameters") or {},
        schedules=prefect_deploy.schedules(spec.get("schedules") or []),
        triggers=prefect_deploy.triggers(spec["name"], spec.get("triggers") or []),
        concurrency_limit=_concurrency(spec.get("concurrency_limit")),
    )


def runner_deployments(path: Path = PREFECT_FILE) -> list[RunnerDeployment]:
    return [runner_deployment(spec, path.parent) for spec in load_definitions(path)]
