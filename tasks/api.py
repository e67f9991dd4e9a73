"""One Prefect task per API call: listings, record creation and job status.

Retries live in the client (per HTTP request, transient faults only), so these
tasks have none of their own: a task retry would re-download a whole listing
and multiply attempts. Results are never cached: EDC data changes under us.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

from imednet_flows.edc.client import ImednetClient
from imednet_flows.filter_syntax import Dnf
from imednet_flows.listing import Submit, list_rows

Row = dict[str, Any]

_api_task = task(cache_policy=NO_CACHE, retries=0, log_prints=False)


class Rows(Sequence[Row]):
    """A listing's rows, read-only. Deliberately not a `list`: Prefect links every element of
    a returned list to the task run, 50,000 bookkeeping calls for a large listing."""

    __slots__ = ("_items",)

    def __init__(self, items: list[Row]) -> None:
        self._items = items

    def __getitem__(self, index):  # type: ignore[no-untyped-def,override]
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Rows({len(self._items)} rows)"


@_api_task(name="list-sites", task_run_name="list-sites[{study_key}]")
def list_sites(client: ImednetClient, study_key: str) -> Rows:
    return Rows(list_rows(client, study_key, "sites"))


@_api_task(name="list-forms", task_run_name="list-forms[{study_key}]")
def list_forms(client: ImednetClient, study_key: str) -> Rows:
    return Rows(list_rows(client, study_key, "forms"))


@_api_task(name="list-intervals", task_run_name="list-intervals[{study_key}]")
def list_intervals(client: ImednetClient, study_key: str) -> Rows:
    return Rows(list_rows(client, study_key, "intervals"))


@_api_task(name="list-variables", task_run_name="list-variables[{study_key}]")
def list_variables(client: ImednetClient, study_key: str) -> Rows:
    return Rows(list_rows(client, study_key, "variables"))


@_api_task(name="list-subjects", task_run_name="list-subjects[{study_key}]")
def list_subjects(
    client: ImednetClient, study_key: str, filter_text: str | None = None, groups: Dnf | None = None
) -> Rows:
    return Rows(list_rows(client, study_key, "subjects", filter_text, groups=groups))


@_api_task(name="list-visits", task_run_name="list-visits[{study_key}]")
def list_visits(
    client: ImednetClient, study_key: str, filter_text: str | None = None, groups: Dnf | None = None
) -> Rows:
    return Rows(list_rows(client, study_key, "visits", filter_text, groups=groups))


@_api_task(name="list-records", task_run_name="list-records[{study_key}]")
def list_records(
    client: ImednetClient,
    study_key: str,
    filter_text: str | None = None,
    record_data_filter: str | None = None,
    groups: Dnf | None = None,
) -> Rows:
    return Rows(list_rows(client, study_key, "records", filter_text, record_data_filter, groups))


@_api_task(name="list-queries", task_run_name="list-queries[{study_key}]")
def list_queries(
    client: ImednetClient, study_key: str, filter_text: str | None = None, groups: Dnf | None = None
) -> Rows:
    return Rows(list_rows(client, study_key, "queries", filter_text, groups=groups))


#: The listing task of each route, for `submitter`.
LISTINGS = {
    "sites": list_sites,
    "forms": list_forms,
    "intervals": list_intervals,
    "variables": list_variables,
    "subjects": list_subjects,
    "visits": list_visits,
    "records": list_records,
    "queries": list_queries,
}


def submitter(client: ImednetClient) -> Submit:
    """The shared read workflows' way to start a listing, as a task run of this flow run."""

    def submit(route: str, study_key: str, **options: Any) -> PrefectFuture[Rows]:
        return LISTINGS[route].submit(client, study_key, **options)

    return submit
