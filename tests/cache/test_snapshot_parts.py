"""How a snapshot table's id ranges are cut and which parts a set of changed ids touches."""

from __future__ import annotations

import pytest

from imednet_flows.cache.snapshots.parts import (
    Part,
    Range,
    chunk_sizes,
    parse_parts,
    part_file,
    ranges,
    touched,
)

PARTS = [
    Part(None, 10, part_file(0), 1),
    Part(100, 10, part_file(1), 1),
    Part(500, 3, part_file(2), 1),
]


def test_ranges_cover_every_id() -> None:
    assert ranges(PARTS) == [Range(None, 100), Range(100, 500), Range(500, None)]
    assert ranges(PARTS[:1]) == [Range(None, None)]


def test_touched_parts_hold_the_ids() -> None:
    assert touched(PARTS, []) == {}
    assert touched(PARTS, [-5, 99]) == {0: [-5, 99]}
    assert touched(PARTS, [100, 499]) == {1: [100, 499]}  # a lower bound belongs to its own part
    assert touched(PARTS, [500, 10**12, 1]) == {2: [500, 10**12], 0: [1]}
    assert touched(PARTS, ["a"]) is None  # an id of another type: rebuild the table


@pytest.mark.parametrize(
    ("rows", "split_above", "sizes"),
    [
        (0, 64, [0]),
        (64, 64, [64]),
        (65, 64, [22, 22, 21]),  # a built table: parts of at most 32, evenly filled
        (100, 64, [25, 25, 25, 25]),
        (65, 128, [65]),  # a rewritten part stays whole up to twice the size
        (129, 128, [26, 26, 26, 26, 25]),
    ],
)
def test_chunk_sizes(rows: int, split_above: int, sizes: list[int]) -> None:
    assert chunk_sizes(rows, 32, split_above) == sizes
    assert sum(sizes) == rows


def test_part_files_sort_in_id_order() -> None:
    names = [part_file(n) for n in (0, 9, 10, 99999)]
    assert sorted(names) == names


@pytest.mark.parametrize(
    "entry",
    [
        None,
        {},
        {"parts": []},
        {"parts": [{"lo": 5, "rows": 1, "file": "a", "bytes": 1}]},  # first must be open
        {"parts": [{"lo": None, "rows": 1, "file": "a"}]},
        {"parts": [p.entry() for p in (PARTS[0], PARTS[2], PARTS[1])]},  # out of order
        {"parts": [{"lo": None, "rows": 1, "file": "../../secret.parquet", "bytes": 1}]},
        {"parts": [PARTS[0].entry(), {"lo": "x", "rows": 1, "file": "b", "bytes": 1},
                   {"lo": 3, "rows": 1, "file": "c", "bytes": 1}]},
    ],
)  # fmt: skip
def test_malformed_entries_mean_rebuild(entry: object) -> None:
    assert parse_parts(entry) is None  # type: ignore[arg-type]


def test_entries_round_trip() -> None:
    assert parse_parts({"parts": [p.entry() for p in PARTS]}) == PARTS
