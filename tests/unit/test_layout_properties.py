"""Properties of the layout, for any files in any order (Hypothesis): no two files of a cell overlap,
every block starts on a chunk boundary and covers whole chunks (a partial chunk only at the end of the
axis), each file's values sit consecutively on the axis, the placement does not depend on the order
the files arrive in, an existing cube's blocks only move where room is opened, and rectilinear edges
agree with every file's own chunks. No file is read: the layout is pure."""

from __future__ import annotations

import itertools
import random
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.layout import Axes, Occupied, Rules, plan_layout
from lib.validation import CONCAT, DATA, NATIVE, VIRTUAL, ConcatCoordinate, CubeSchema, FileEntry, VariableSchema

ENCODING = {"units": "days since 2000-01-01", "calendar": "proleptic_gregorian", "dtype": "<i8"}


def schema(chunk: int, rectilinear: bool = False) -> CubeSchema:
    data = VariableSchema(
        "v",
        DATA,
        VIRTUAL,
        {
            "shape": [chunk, 2],
            "data_type": "float32",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [chunk, 2]}},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
            "fill_value": 0.0,
            "dimension_names": ["time", "x"],
        },
    )
    time = VariableSchema("time", CONCAT, NATIVE, {"shape": [1], "data_type": "int64", "dimension_names": ["time"]})
    return CubeSchema(
        pattern={"member": "int"},
        concat=("time",),
        variables={"v": data, "time": time},
        concat_encoding={"time": dict(ENCODING)},
        rectilinear=("time",) if rectilinear else (),
    )


def entry(member: int, days: list[int], chunk: int | None = None) -> FileEntry:
    values = np.asarray(days, dtype=np.int64)
    return FileEntry(
        url=f"s3://archive/member_{member}/{days[0]:05d}.nc",
        etag="e",
        size=1,
        checksum="e",
        fields=(("member", member),),
        format="hdf5",
        parser="fast",
        schema_key="k",
        layout_key="l",
        concat={"time": ConcatCoordinate(values, {"units": ENCODING["units"]})},
        shared={},
        cell={},
        ref_count=1,
        encoded={"time": values},
        chunking=(("time", "v", chunk),) if chunk else (),
    )


@st.composite
def archives(draw: Any, rectilinear: bool = False) -> tuple[int, list[FileEntry]]:
    """Files of 1-3 members: runs of consecutive days, some of them in whole chunks, some not."""
    chunk = draw(st.integers(1, 3))
    entries = []
    for member in range(1, draw(st.integers(1, 3)) + 1):
        day = draw(st.integers(0, 3))
        for _ in range(draw(st.integers(1, 5))):
            length = draw(st.integers(1, 3)) * (1 if rectilinear else chunk) + draw(st.sampled_from([0, 0, 0, 1]))
            own = draw(st.integers(1, 3)) if rectilinear else None
            entries.append(entry(member, list(range(day, day + length)), own))
            day += length + draw(st.sampled_from([0, 0, 0, 1, 2]))  # now and then a gap, or a shared step
    return chunk, entries


def assert_layout_invariants(layout: Any, chunk: int, entries: list[FileEntry], rectilinear: bool = False) -> None:
    axis = layout.axes.concat["time"]
    assert np.all(np.diff(axis) > 0), "the axis is sorted and unique"
    by_url = {e.url: e for e in entries}
    placed = layout.placements
    assert not (set(placed) & set(layout.refused)), "a file is placed or refused, never both"
    assert set(placed) | set(layout.refused) | set(layout.deferred) == set(by_url), "every file is accounted for"
    for url, p in placed.items():
        a, z = p.range_of("time")
        np.testing.assert_array_equal(axis[a:z], by_url[url].encoded["time"])  # consecutive, in order
        if not rectilinear:
            assert a % chunk == 0, "a block starts on a chunk boundary"
            assert (z - a) % chunk == 0 or z == axis.size, "a partial chunk only at the end of the axis"
    for p, q in itertools.combinations(placed.values(), 2):
        if p.cell == q.cell:
            (a, z), (b, y) = p.range_of("time"), q.range_of("time")
            assert z <= b or y <= a, f"{p.url} and {q.url} overlap in their cell"
    if rectilinear and placed:
        edges = set(layout.axes.edges["time"]["v"])
        for url, p in placed.items():
            a, z = p.range_of("time")
            own = p.chunk_of("v", "time", chunk)
            cuts = {*range(a, z, own), z}
            assert {b for b in edges if a <= b <= z} == cuts, f"{url}: the grid's edges are the file's own chunks"


@settings(max_examples=150, deadline=None)
@given(archives(), st.randoms(use_true_random=False))
def test_any_archive_is_laid_out_by_the_rules_whatever_the_order(
    drawn: tuple[int, list[FileEntry]], rng: random.Random
) -> None:
    chunk, entries = drawn
    layout = plan_layout(entries, schema(chunk), rules=Rules())
    assert_layout_invariants(layout, chunk, entries)
    shuffled = list(entries)
    rng.shuffle(shuffled)
    again = plan_layout(shuffled, schema(chunk), rules=Rules())
    assert again.placements == layout.placements and again.refused == layout.refused
    np.testing.assert_array_equal(again.axes.concat["time"], layout.axes.concat["time"])


@settings(max_examples=150, deadline=None)
@given(archives(rectilinear=True), st.randoms(use_true_random=False))
def test_rectilinear_edges_are_every_file_s_own_chunks(drawn: tuple[int, list[FileEntry]], rng: random.Random) -> None:
    chunk, entries = drawn
    rules = Rules(rectilinear=frozenset({"time"}))
    layout = plan_layout(entries, schema(chunk, rectilinear=True), rules=rules)
    assert_layout_invariants(layout, chunk, entries, rectilinear=True)
    shuffled = list(entries)
    rng.shuffle(shuffled)
    assert plan_layout(shuffled, schema(chunk, rectilinear=True), rules=rules).placements == layout.placements


@settings(max_examples=150, deadline=None)
@given(archives(), st.data())
def test_an_existing_cube_only_moves_where_room_is_opened(drawn: tuple[int, list[FileEntry]], data: Any) -> None:
    """Lay out some files, then the rest on top of them: what was placed stays put, but for the room
    opened before it (whole chunks, from the moves), and the new files keep every rule."""
    chunk, entries = drawn
    cut = data.draw(st.integers(0, len(entries)))
    first = plan_layout(entries[:cut], schema(chunk), rules=Rules())
    held = [
        Occupied(p.url, (("member", int(p.url.split("_")[1].split("/")[0])),), p.ranges)
        for p in first.placements.values()
    ]
    existing = first.axes if first.placements else None
    rest = [e for e in entries[cut:]]
    second = plan_layout(rest, schema(chunk), existing, held, Rules())
    for move in second.moves:
        if move.dim == "time":
            assert move.at % chunk == 0 and move.by % chunk == 0, "room is opened in whole chunks"
    old_axis, new_axis = first.axes.concat.get("time", np.zeros(0)), second.axes.concat["time"]
    assert set(old_axis.tolist()) <= set(new_axis.tolist()), "an axis never loses a value"
    for block in held:
        a, z = block.ranges[0][1], block.ranges[0][2]
        shifted = a + sum(m.by for m in second.moves if m.dim == "time" and m.at <= a)
        np.testing.assert_array_equal(new_axis[shifted : shifted + (z - a)], old_axis[a:z])
    assert_layout_invariants(second, chunk, rest)
    for url, p in second.placements.items():
        for block in held:
            if Axes.cell_of(second.axes, block.cell_values) == p.cell:
                a, z = p.range_of("time")
                b = block.ranges[0][1] + sum(
                    m.by for m in second.moves if m.dim == "time" and m.at <= block.ranges[0][1]
                )
                y = b + block.ranges[0][2] - block.ranges[0][1]
                assert z <= b or y <= a, f"{url} overlaps a block already in the cube"


@settings(max_examples=100, deadline=None)
@given(archives())
def test_on_a_regular_axis_what_is_placed_has_no_gap_and_the_rest_waits_or_is_refused(
    drawn: tuple[int, list[FileEntry]],
) -> None:
    chunk, entries = drawn
    layout = plan_layout(entries, schema(chunk), rules=Rules(regular=frozenset({"time"})))
    assert_layout_invariants(layout, chunk, entries)
    axis = layout.axes.concat["time"]
    # one step all along; which step is the files' to say (values 0 and 2 alone make a step of 2)
    assert len(set(np.diff(axis).tolist())) <= 1, f"a gap on a regular axis: {axis}"
    for url, reason in layout.deferred.items():
        assert "waits for" in reason and url not in layout.placements
