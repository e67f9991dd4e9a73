"""One listing in full, and the shape of "start a listing" the read workflows are written
against, so the same workflow runs as Prefect task runs or on plain threads (no Prefect).

The flows pass a `Submit` that starts Prefect tasks (`tasks.api.submitter`); the command
line without a Prefect API passes one that starts threads (`imednet_flows.direct`). Both
end in `list_rows`, so rows, order and requests are the same either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from imednet_flows import progress
from imednet_flows.edc.client import ImednetClient
from imednet_flows.edc.paging import iter_pages
from imednet_flows.filter_syntax import Dnf

Row = dict[str, Any]
T_co = TypeVar("T_co", covariant=True)


class Pending(Protocol[T_co]):
    """A started listing: a Prefect future or a `concurrent.futures.Future`."""

    def result(self) -> T_co: ...


class Submit(Protocol):
    """Start listing `route` of a study, with `list_rows`'s keyword options."""

    def __call__(self, route: str, study_key: str, **options: Any) -> Pending[Sequence[Row]]: ...


def list_rows(
    client: ImednetClient,
    study_key: str,
    route: str,
    filter_text: str | None = None,
    record_data_filter: str | None = None,
    groups: Dnf | None = None,
) -> list[Row]:
    """Every row of a listing, page by page at the API's largest size, telling progress
    listeners (the command line's bar) after each page."""
    rows: list[Row] = []
    label = f"{study_key} {route}"
    key = progress.new_key(label)
    for page in iter_pages(
        client,
        study_key,
        route,
        filter_text=filter_text,
        record_data_filter=record_data_filter,
        groups=groups,
    ):
        rows.extend(page.items)
        if progress.listening():
            progress.publish(
                progress.Step(key, label, completed=page.number + 1, total=page.total_pages)
            )
    return rows
