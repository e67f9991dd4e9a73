"""The read workflows without Prefect: the functions the flows run, on plain threads.

What the command line uses when no Prefect API is configured (see `recording`): the same
`fetch_*` functions, the same client, retry policy and concurrency bound as a flow run,
only the listings start as threads instead of task runs, and nothing is recorded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from imednet_flows.edc.client import Credentials, ImednetClient
from imednet_flows.listing import Row, Submit, list_rows

#: The flows' default `max_concurrency`: a direct run loads the API no more than a flow run.
MAX_CONCURRENCY = 4
#: Listings started at once (extraction starts one per chunk); requests stay bounded above.
THREADS = 8
CREDENTIAL_VARIABLES = ("IMEDNET_API_KEY", "IMEDNET_SECURITY_KEY", "IMEDNET_BASE_URL")


def environment_credentials(environ: Mapping[str, str] = os.environ) -> Credentials | None:
    """Keys and base URL when the environment holds all three, else None. The flows' client
    factory reads the environment first as well, and goes to Prefect only for what is
    missing there; with all three set it never does."""
    api_key, security_key, base_url = (environ.get(n, "").strip() for n in CREDENTIAL_VARIABLES)
    if api_key and security_key and base_url:
        return Credentials(base_url=base_url, api_key=api_key, security_key=security_key)
    return None


def credentials(notice: Callable[[str], None]) -> Credentials:
    found = environment_credentials()
    if found is not None:
        return found
    missing = [n for n in CREDENTIAL_VARIABLES if not os.environ.get(n, "").strip()]
    notice(
        f"{', '.join(missing)} not set: reading them from Prefect (Secret blocks, Variable "
        "imednet-base-url), which starts Prefect and, with no Prefect API configured, a "
        "temporary server. Export all three to skip this."
    )
    from tasks.client import resolve_credentials  # imports Prefect: only when needed

    return resolve_credentials()


@contextmanager
def session(notice: Callable[[str], None]) -> Iterator[tuple[ImednetClient, Submit]]:
    """A client and a `Submit` that lists on threads; a failure stops listings not yet
    started instead of waiting for them."""
    client = ImednetClient(credentials(notice), max_concurrency=MAX_CONCURRENCY)
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
