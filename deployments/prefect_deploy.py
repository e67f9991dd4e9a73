"""How `prefect deploy` reads prefect.yaml's `schedules` and `triggers`: the one place the
project uses Prefect's private API.

Prefect has no public function for this translation, and copying it would let `serve`
(see `definitions`) and `prefect deploy` drift apart on the same prefect.yaml. So the
private functions are called here and nowhere else, and tests/deployments/test_prefect_deploy.py
pins what is relied on (interval and cron entries with timezone, slug and parameters; event
triggers with expect, match, templated parameters and a default name): an upgrade of
Prefect that changes them fails that test first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
from prefect.cli.deploy._triggers import _initialize_deployment_triggers
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.events import DeploymentTriggerTypes


def schedules(entries: Iterable[Mapping[str, Any]]) -> list[DeploymentScheduleCreate]:
    """A deployment's `schedules:` entries as `prefect deploy` creates them."""
    return [
        DeploymentScheduleCreate(**_schedule_config_to_deployment_schedule(dict(entry)))
        for entry in entries
    ]


def triggers(deployment: str, entries: Iterable[Mapping[str, Any]]) -> list[DeploymentTriggerTypes]:
    """A deployment's `triggers:` entries as `prefect deploy` creates them (an unnamed one
    is named after the deployment). The entries are copied: Prefect's function fills in
    names in place."""
    return _initialize_deployment_triggers(deployment, [dict(entry) for entry in entries])
