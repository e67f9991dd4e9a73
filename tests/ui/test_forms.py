"""What the Prefect UI's run forms are built from: every deployed flow's parameter schema.

Why: the run form is the first thing a person meets. The UI turns `anyOf [..., null]`
into a "str / None" toggle with no text box, titles fields with whatever `title` says
(Prefect 3.9 puts the raw parameter name there unless told otherwise), shows no
`examples`, and the V1 UI renders descriptions as markdown, which drops a raw `<...>` as
HTML. These checks walk the schema as the UI does, nested row models included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

from deployments.definitions import PROJECT_ROOT, load_definitions
from flows.common import md_cell, md_table
from flows.extract_records import extract_records_by_criteria
from flows.open_queries import get_open_queries
from imednet_flows.emulator import EmulatorServer
from tests.conftest import SMALL

SPECS = load_definitions()
Env = Callable[[EmulatorServer], None]


def deployed_flow(spec: dict[str, Any]) -> Flow[Any, Any]:
    return load_flow_from_entrypoint(str(PROJECT_ROOT / spec["entrypoint"]))


def fields(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every field the form shows: parameters, then the fields of each nested model."""
    yield from schema["properties"].items()
    for model, definition in (schema.get("definitions") or {}).items():
        for name, prop in (definition.get("properties") or {}).items():
            yield f"{model}.{name}", prop


def toggles(node: Any) -> list[str]:
    """Places where the schema lets a value be null: the UI's "str / None" toggle."""
    found = []
    if isinstance(node, dict):
        for branch in node.get("anyOf", []) + node.get("oneOf", []):
            if branch.get("type") == "null":
                found.append(str(node.get("title")))
        if node.get("type") == "null" or node.get("default", "") is None:
            found.append(str(node.get("title")))
        for value in node.values():
            found += toggles(value)
    elif isinstance(node, list):
        for value in node:
            found += toggles(value)
    return found


def raw_angle_brackets(text: str) -> list[str]:
    """`<...>` outside backtick code spans, as markdown reads HTML (a letter, `/`, `!` or
    `?` after the `<`): what the renderer drops. `a < b` and `<=` are plain text."""
    return re.findall(r"<[A-Za-z/!?][^<>]*>", re.sub(r"`[^`]*`", "", text))


@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
def test_run_form_fields_have_human_titles_and_whole_descriptions(spec: dict[str, Any]) -> None:
    schema = parameter_schema(deployed_flow(spec)).model_dump()
    problems = []
    for name, prop in fields(schema):
        title = prop.get("title") or ""
        leaf = name.rsplit(".", 1)[-1]
        if not title or title == leaf or "_" in title or not title[0].isupper():
            problems.append(f"{name}: title {title!r} is not a human title")
        description = prop.get("description") or ""
        if not description.strip():
            problems.append(f"{name}: no description")
        if raw_angle_brackets(description):
            problems.append(f"{name}: {raw_angle_brackets(description)} vanish in the UI")
        if "examples" in prop:
            problems.append(f"{name}: `examples` are shown nowhere; say it in the description")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
def test_run_form_has_no_type_toggles(spec: dict[str, Any]) -> None:
    schema = parameter_schema(deployed_flow(spec)).model_dump()
    assert toggles(schema) == [], f"{spec['name']}: nullable fields render as type toggles"


def test_angle_bracket_check_sees_what_the_renderer_drops() -> None:
    assert raw_angle_brackets("writers take <cache_path>.lock") == ["<cache_path>"]
    assert raw_angle_brackets("`attribute<op>value` is code; == != < <= > >=") == []
    assert raw_angle_brackets("form_<KEY>.parquet") == ["<KEY>"]


def test_row_model_shows_the_api_fields() -> None:
    from flows.upsert_records import create_or_update_records

    schema = parameter_schema(create_or_update_records).model_dump()
    row = schema["definitions"][schema["properties"]["records"]["items"]["$ref"].split("/")[-1]]
    assert {"formKey", "formId", "recordId", "subjectKey", "intervalName", "siteName"} <= set(
        row["properties"]
    )
    assert row["properties"]["data"]["type"] == "object"
    assert schema["properties"]["records"]["default"] == []


def test_markdown_cells_keep_tables_whole() -> None:
    assert md_cell("a|b\nc <d>") == "a\\|b c &lt;d&gt;"
    assert md_table(["x"], []) == "_none_"
    assert md_table(["x", "y"], [[1, None]]).splitlines() == ["| x | y |", "|---|---|", "| 1 |  |"]


# --------------------------------------------------------------------------- blank is no filter


@pytest.mark.usefixtures("prefect_api")
def test_blank_and_none_filters_mean_no_filter(emulator: EmulatorServer, imednet_env: Env) -> None:
    """The form sends "" for an untouched text box; Python callers may still pass None."""
    imednet_env(emulator)
    key = SMALL.study_key
    every = extract_records_by_criteria(key)
    for given in ("", "  ", None):
        frame = extract_records_by_criteria(
            key, record_filter=given, subject_filter=given, visit_filter=given,
            record_data_filter=given, output_dir=given,
        )  # fmt: skip
        pd.testing.assert_frame_equal(frame, every)
        assert get_open_queries(key, filters=given).total == len(
            emulator.emulator.rows(key, "queries")
        )


# --------------------------------------------------------------------------- failure lines


def test_the_second_record_of_an_exception_is_one_line() -> None:
    """The flow-run logger's filter, as Prefect's engine calls it: the exception logged
    twice, the second time it becomes one line naming the run and what to do."""
    import logging

    from flows.common import OneTracebackPerFailure
    from imednet_flows.edc.errors import ImednetFlowsError

    logger = logging.getLogger("tests.one-traceback")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.addFilter(OneTracebackPerFailure())
    try:
        raise ImednetFlowsError("3 problem(s) in 2 row(s). Fix every row listed:\nrow 1: ...")
    except ImednetFlowsError:
        child = {"flow_run_id": "child", "flow_run_name": "child-run"}
        logger.exception("Encountered exception during execution", extra=child)
        # a parent run re-raising its subflow's exception logs its own traceback
        parent = {"flow_run_id": "parent", "flow_run_name": "parent-run"}
        logger.exception("Encountered exception during execution", extra=parent)
        logger.error(
            "Engine execution exited with unexpected exception", exc_info=True, extra=parent
        )
    first, in_parent, second = records
    assert first.exc_info is not None and in_parent.exc_info is not None
    assert second.exc_info is None and second.exc_text is None
    assert second.getMessage() == (
        "Flow run 'parent-run' failed: 3 problem(s) in 2 row(s). Fix every row listed "
        "(details above)."
    )


def test_failure_lines_tell_own_errors_from_unexpected_ones() -> None:
    from flows.common import failure_line
    from imednet_flows.edc.errors import ImednetFlowsError

    assert failure_line(ImednetFlowsError("study key is unknown; check it.")) == (
        "study key is unknown; check it."
    )
    try:
        {}["missing"]  # a defect, as a KeyError from nowhere would be
    except KeyError as exc:
        line = failure_line(exc)
    assert line.startswith("KeyError: 'missing'. Unexpected: the traceback above shows where")


def test_artifact_keys_of_different_studies_never_collide() -> None:
    """Keys that slug alike ("ONC_7", "ONC-7", "ONC 7") keep apart; plain keys stay readable."""
    from flows.common import artifact_key

    keys = {artifact_key("open-queries", k) for k in ("ONC_7", "ONC-7", "ONC 7", "onc.7")}
    assert len(keys) == 4
    assert artifact_key("open-queries", "PHX-101") == "open-queries-phx-101"
    for key in keys | {artifact_key("subject", "S/1", "??")}:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", key), key
