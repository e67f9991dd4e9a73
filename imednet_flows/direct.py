"""The read workflows without Prefect: the functions the flows run, on plain threads.

What the command line uses when no Prefect API is configured (see `recording`): the same
`fetch_*` functions, the same client, retry policy and concurrency bound as a flow run,
only the listings start as threads instead of task runs, and nothing is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from imednet_flows.edc.client import Credentials, ImednetClient
from imednet_flows.listing import Row, Submit, list_rows
from imednet_flows.settings import Settings, settings

#: Listings started at once (extraction starts one per chunk); requests stay bounded above.
THREADS = 8
CREDENTIAL_FIELDS = ("api_key", "security_key", "base_url")


def environment_credentials(config: Settings) -> Credentials | None:
    """Keys and base URL when the environment holds all three, else None. The flows' client
    factory reads the environment first as well, and goes to Prefect only for what is
    missing there; with all three set it never does."""
    if config.api_key and config.security_key and config.base_url:
        return Credentials(
            base_url=config.base_url,
            api_key=config.api_key.get_secret_value(),
            security_key=config.security_key.get_secret_value(),
        )
    return None


def credentials(notice: Callable[[str], None]) -> Credentials:
    config = settings()
    found = environment_credentials(config)
    if found is not None:
        return found
    missing = [Settings.variable(n) for n in CREDENTIAL_FIELDS if not getattr(config, n)]
    notice(
        f"{', '.join(missing)} not set: reading them from Prefect (Secret blocks, Variable "
        "imednet-base-url), which starts Prefect and, with no Prefect API configured, a "
        "temporary server. Export all three to skip this."
    )
    from imednet_flows.credentials import resolve_credentials  # imports Prefect: only when needed

    return resolve_credentials()


@contextmanager
def session(notice: Callable[[str], None]) -> Iterator[tuple[ImednetClient, Submit]]:
    """A client and a `Submit` that lists on threads; a failure stops listings not yet
    started instead of waiting for them."""
    # The same bound as a flow run's default: a direct run loads the API no more.
    client = ImednetClient(credentials(notice), max_concurrency=settings().max_concurrency)
    pool = ThreadPoolExecutor(THREADS, thread_name_prefix="imednet-listing")

    def submit(route: str, study_key: str, **options: Any) -> Future[Sequence[Row]]:
        return pool.submit(list_rows, client, study_key, route, **options)

    try:
        yield client, submit
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        client.close()
