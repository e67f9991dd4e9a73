"""Rows for the Record Update flow from a file: a JSON array or JSON Lines.

Why a file: Prefect caps a flow run's parameters at 512 KB, and its errors echo the
parameters back, so rows travel as a path and are read inside the flow run. Row N is
the N-th row of the file (1-based), as in every message of the flow.

Errors name the file, say what is wrong (for JSON Lines, on which lines) and what is
expected, and never quote the file's contents: they are clinical data.

No Prefect imports.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from imednet_flows.edc.errors import ImednetFlowsError
from imednet_flows.edc.validation import row_ranges

EXPECTED = (
    "Expected: a JSON array of rows, or JSON Lines (one row per line), each row an object "
    "in the API's POST /records shape (formKey or formId, data, and what places it: "
    "recordId, subjectKey, siteName, ...)."
)
_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"


class RowsFileError(ImednetFlowsError):
    """The rows file cannot be used at all: nothing was read from it, nothing was sent."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"rows file {path}: {problem}. {EXPECTED}")
        self.path = path


def read_rows(path: str | os.PathLike[str]) -> list[Any]:
    """Every row of a JSON array or JSON Lines file, in file order.

    Which of the two is told by the first character ('[' or '{'). Rows that are not
    objects inside a JSON array are left to row validation, which reports each by number;
    a file that holds no row objects at all is refused here.
    """
    file = Path(path)
    try:
        handle = file.open("rb")
    except FileNotFoundError:
        raise RowsFileError(file, "no such file") from None
    except IsADirectoryError:
        raise RowsFileError(file, "is a folder, not a file") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RowsFileError(file, f"cannot be read ({reason})") from None
    with handle:
        first = _first_character(handle)
        if first == b"[":
            return _json_array(file, handle.read())
        if first == b"{":
            return _json_lines(file, handle)
    if not first:
        raise RowsFileError(file, "is empty")
    raise RowsFileError(
        file,
        "is not JSON: it starts with neither '[' (a JSON array) nor '{' (JSON Lines); "
        "a CSV or spreadsheet file must be converted first",
    )


def _first_character(handle: IO[bytes]) -> bytes:
    """The first byte that is not whitespace (or a UTF-8 byte order mark); the handle is
    left at the start of the file."""
    start = handle.read(len(_BOM))
    if start != _BOM:
        handle.seek(0)
    while chunk := handle.read(64 * 1024):
        text = chunk.lstrip(_WHITESPACE)
        if text:
            handle.seek(0)
            return text[:1]
    handle.seek(0)
    return b""


def _json_array(file: Path, data: bytes) -> list[Any]:
    try:
        rows = orjson.loads(data.removeprefix(_BOM))
    except orjson.JSONDecodeError as exc:
        raise RowsFileError(
            file, f"is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    if not isinstance(rows, list):
        raise RowsFileError(file, "is not one JSON array")
    if rows and not any(isinstance(row, dict) for row in rows):
        raise RowsFileError(
            file, f"is a JSON array, but not of row objects (its items are {_kinds(rows)})"
        )
    return rows


def _kinds(rows: list[Any]) -> str:
    names = {"list": "arrays", "str": "strings", "int": "numbers", "float": "numbers"}
    kinds = sorted({names.get(type(r).__name__, type(r).__name__) for r in rows[:1000]})
    return " and ".join(kinds)


def _json_lines(file: Path, handle: IO[bytes]) -> list[Any]:
    rows: list[Any] = []
    not_json: list[int] = []
    not_objects: list[int] = []
    empty: list[int] = []
    blank_run: list[int] = []  # blank lines are allowed at the end only
    for number, line in _numbered_lines(handle):
        if not line.strip(_WHITESPACE):
            blank_run.append(number)
            continue
        empty += blank_run
        blank_run = []
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            not_json.append(number)
            continue
        if not isinstance(row, dict):
            not_objects.append(number)
        rows.append(row)
    problems = [
        f"{_lines(not_json)} not JSON" if not_json else "",
        f"{_lines(not_objects)} not a JSON object" if not_objects else "",
        f"{_lines(empty)} empty" if empty else "",
    ]
    if any(problems):
        hint = (
            " (one object spread over several lines is not JSON Lines: put the rows in a "
            "JSON array instead)"
            if 1 in not_json
            else ""
        )
        raise RowsFileError(
            file, "is not valid JSON Lines: " + "; ".join(p for p in problems if p) + hint
        )
    return rows


def _numbered_lines(handle: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Lines numbered from 1, read one at a time (a large file is never held twice)."""
    for number, line in enumerate(handle, start=1):
        yield number, line.removeprefix(_BOM) if number == 1 else line


def _lines(numbers: list[int]) -> str:
    plural = len(numbers) > 1
    return f"line{'s' if plural else ''} {row_ranges(numbers)} {'are' if plural else 'is'}"
