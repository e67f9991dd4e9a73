"""How a flow connects to iMednet: the one client factory every flow uses.

The keys are looked up by `imednet_flows.credentials` (the environment, else Prefect Secret
blocks and a Variable); they are never flow parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.logging import get_run_logger

from imednet_flows.credentials import resolve_credentials
from imednet_flows.edc.client import Credentials, ImednetClient


@contextmanager
def imednet_client(
    max_concurrency: int | None = None, credentials: Credentials | None = None
) -> Iterator[ImednetClient]:
    """A client for one flow run; its semaphore bounds every API task of the run.
    `max_concurrency`: 0 or None means the setting (IMEDNET_FLOWS_MAX_CONCURRENCY, 4
    unless set). `credentials`: already resolved (an async flow resolves them with
    `aresolve_credentials`); else looked up here."""
    credentials = credentials or resolve_credentials()
    client = ImednetClient(
        credentials, max_concurrency=max_concurrency or None, credentials_source=resolve_credentials
    )
    get_run_logger().info("iMednet API at %s", credentials.base_url or "the hosted service")
    try:
        yield client
    finally:
        client.close()
