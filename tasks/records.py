"""Prefect tasks that write records: one POST per batch, one wait per job.

No task retries and no caching, as for every API task: a task retry of a POST
is exactly the blind resend `post_batch` exists to avoid, and polling retries
live in the client.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from imednet_flows import progress
from imednet_flows.edc import batches
from imednet_flows.edc.batches import PostOutcome
from imednet_flows.edc.client import ImednetClient
from imednet_flows.edc.validation import RecordItem

_records_task = task(cache_policy=NO_CACHE, retries=0, log_prints=False)


@_records_task(name="create-records", task_run_name="create-records[{study_key}#{batch_number}]")
def create_records(
    client: ImednetClient,
    study_key: str,
    items: list[RecordItem],
    batch_number: int,
    first_row: int = 1,
    email_notify: str | None = None,
    timeout: float = 60.0,
    poll_interval: float = 1.0,
) -> PostOutcome:
    """POST one batch; after a lost answer, only rows proven not applied are resent."""
    outcome = batches.post_batch(
        client,
        study_key,
        items,
        email_notify=email_notify,
        first_row=first_row,
        timeout=timeout,
        poll_interval=poll_interval,
    )
    logger = get_run_logger()
    rows = f"rows {outcome.first_row}-{outcome.last_row}"
    for note in outcome.interruptions:
        logger.warning("batch %d (%s): %s", batch_number, rows, note)
    if outcome.confirmed_rows:
        logger.info(
            "batch %d: %d row(s) found applied by reading back, not sent again",
            batch_number,
            len(outcome.confirmed_rows),
        )
    if outcome.resent_rows:
        logger.info(
            "batch %d: %d row(s) proven not applied were sent again",
            batch_number,
            len(outcome.resent_rows),
        )
    if outcome.batch_id:
        logger.info("batch %d (%s): job %s accepted", batch_number, rows, outcome.batch_id)
    progress.publish(
        progress.Step(
            progress.upsert_key(study_key, "rows"),
            f"{study_key} rows sent",
            "rows",
            advance=outcome.rows,
        )
    )
    return outcome


@_records_task(name="wait-for-job", task_run_name="wait-for-job[{study_key}:{batch_id}]")
def wait_for_job(
    client: ImednetClient, study_key: str, batch_id: str, timeout: float, poll_interval: float
) -> dict[str, Any]:
    """The job once COMPLETED, FAILED or CANCELLED; raises JobTimeout when time runs out."""
    job = batches.wait_for_job(client, study_key, batch_id, timeout, poll_interval)
    get_run_logger().info("job %s: %s", batch_id, batches.job_state(job))
    progress.publish(
        progress.Step(
            progress.upsert_key(study_key, "jobs"), f"{study_key} jobs finished", "jobs", advance=1
        )
    )
    return job
