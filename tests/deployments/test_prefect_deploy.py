"""Pins what the project relies on from Prefect's private prefect.yaml translation.

Why: `deployments/prefect_deploy.py` is the one caller of `prefect.cli.deploy._schedules`
and `._triggers`. A Prefect upgrade that renames them or changes what they build breaks
this fast test first, before `serve` quietly differs from `prefect deploy`.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.events import DeploymentEventTrigger

from deployments import prefect_deploy
from deployments.definitions import load_definitions


def test_interval_and_cron_schedules_keep_timezone_slug_and_parameters() -> None:
    interval, cron = prefect_deploy.schedules(
        [
            {"interval": 900, "slug": "every-15", "parameters": {"study_keys": ["S"]}},
            {"cron": "0 6 * * *", "timezone": "UTC", "slug": "daily", "active": False},
        ]
    )
    assert isinstance(interval.schedule, IntervalSchedule)
    assert interval.schedule.interval == timedelta(seconds=900)
    assert (interval.slug, interval.parameters) == ("every-15", {"study_keys": ["S"]})
    assert isinstance(cron.schedule, CronSchedule)
    assert (cron.schedule.cron, cron.schedule.timezone) == ("0 6 * * *", "UTC")
    assert (cron.slug, cron.active) == ("daily", False)


def test_event_trigger_keeps_expect_match_and_templated_parameters() -> None:
    entry = {
        "type": "event",
        "enabled": True,
        "expect": ["imednet.sync.changed"],
        "match": {"prefect.resource.id": "imednet.study.*"},
        "parameters": {"study_key": "{{ event.resource['imednet.study-key'] }}"},
    }
    (trigger,) = prefect_deploy.triggers("report", [entry])
    assert isinstance(trigger, DeploymentEventTrigger)
    assert trigger.name == "report__automation_1"  # unnamed: named after the deployment
    assert "name" not in entry, "the caller's entry is left as it was"
    assert trigger.expect == {"imednet.sync.changed"}
    assert trigger.match.root == entry["match"]
    assert trigger.parameters == entry["parameters"] and trigger.enabled


def test_every_entry_of_prefect_yaml_translates() -> None:
    for spec in load_definitions():
        assert len(prefect_deploy.schedules(spec.get("schedules") or [])) == len(
            spec.get("schedules") or []
        )
        named = [t.name for t in prefect_deploy.triggers(spec["name"], spec.get("triggers") or [])]
        assert named == [t["name"] for t in spec.get("triggers") or []]
