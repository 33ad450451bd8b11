"""Native copies: variables rewritten into native chunks of the spec's choosing, beside the virtual
arrays, equal to the source files value for value, and kept in step by every later update."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from lib import rechunk
from lib.copies import CopyArray, CopyRecord, _unit_edge, copy_arrays, copy_status, read_record
from lib.errors import PublishBlocked, SpecError
from lib.hierarchy import array_at, open_root
from lib.ledger import read_schema
from lib.pipeline import Step, run_steps
from lib.rechunk import compare_units, rechunk_cube
from lib.runs import CubeRun
from lib.spec import Spec
from tests.helpers import dataset, make_spec, open_files, open_repo, read_cube, run_cube, write_nc4

PATTERN = "polygon_{polygon:d}/day_*.nc"
COPY = "native_copies:\n  - {name: ts, variables: [tas], chunks: {time: 4, lat: 4, lon: 6}}\n"


def write_day(workdir: Path, polygon: int, day: int) -> Path:
    return write_nc4(
        workdir / "archive" / f"polygon_{polygon}" / f"day_{day:05d}.nc", dataset(day, seed=polygon, scalar=1.0)
    )


def read_copy(spec: Spec, name: str = "ts", snapshot: str | None = None) -> xr.Dataset:
    repo = open_repo(spec)
    session = repo.readonly_session(snapshot_id=snapshot) if snapshot else repo.readonly_session(branch="main")
    return xr.open_zarr(session.store, group=name, consolidated=False, chunks=None)


def assert_copy_is_the_files(spec: Spec, workdir: Path) -> None:
    """The copy equals the virtual cube, and each polygon's files opened by xarray (netCDF-4 via h5netcdf)."""
    copy = read_copy(spec).load()
    cube = read_cube(spec).load()
    xr.testing.assert_identical(copy.tas, cube.tas)
    for polygon_dir in sorted((workdir / "archive").glob("polygon_*")):
        polygon = int(polygon_dir.name.split("_")[1])
        files = open_files(list(polygon_dir.glob("*.nc")))
        got = copy.tas.sel(polygon=polygon, drop=True).sel(time=files.time)
        xr.testing.assert_identical(got, files.tas)


def run_with_results(spec: Spec, operation: str = "ingest") -> tuple[Any, dict[Step, Any]]:
    """One update through every step, keeping each step's result."""
    run = CubeRun(spec, operation, str(uuid.uuid4()))
    results: dict[Step, Any] = {}

    def perform(step: Step, *args: Any) -> Any:
        results[step] = getattr(run, step.value)(*args)
        return results[step]

    try:
        run_steps(run, perform)
        return run.finish(), results
    finally:
        run.close()


@pytest.fixture
def cube(workdir: Path) -> Spec:
    for polygon in (1, 2):
        for day in range(6):
            write_day(workdir, polygon, day)
    spec = make_spec(workdir, PATTERN, extra=COPY)
    assert run_cube(spec).exit_code == 0
    return spec


# -- the pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "target", "unit"),
    [
        (1, 365, 365),  # a daily file per chunk, a year per output chunk: the output chunk
        (10, 365, 730),  # cheap to widen to whole source chunks: lcm(10, 365) = 730 <= 4 x 365
        (7, 365, 365),  # lcm 2555 would be 7 output chunks: too wide, output chunks it is
        (8, 4, 8),  # output chunks smaller than the source's: two of them per source chunk
        (16, 16, 16),
        (3, 2, 6),
    ],
)
def test_a_unit_is_whole_output_chunks_widened_to_source_chunks_when_cheap(source: int, target: int, unit: int) -> None:
    assert _unit_edge(source, target) == unit


def test_units_in_a_box_are_the_units_that_hold_any_of_it() -> None:
    array = CopyArray("ts", "tas", ("polygon", "time", "lat"), (2, 10, 4), (1, 4, 4), (1, 4, 4), 4)
    assert array.grid == (2, 3, 1)
    # each unit with the part of the box inside it: only that part is read again
    assert sorted(array.units_in([(1, 2), (3, 5), (0, 4)])) == [
        ((1, 0, 0), ((1, 2), (3, 4), (0, 4))),
        ((1, 1, 0), ((1, 2), (4, 5), (0, 4))),
    ]
    assert sorted(array.units_in([(0, 2), (8, 2**62), (0, 4)])) == [
        ((0, 2, 0), ((0, 1), (8, 10), (0, 4))),
        ((1, 2, 0), ((1, 2), (8, 10), (0, 4))),
    ]
    assert list(array.units_in([(0, 2), (10, 12), (0, 4)])) == []  # beyond the shape: nothing
    assert array.region((1, 2, 0)) == (slice(1, 2), slice(8, 10), slice(0, 4))  # clipped to the shape


def test_the_record_keeps_the_pending_units_through_json() -> None:
    array = CopyArray("ts", "tas", ("time", "lat"), (10, 4), (4, 4), (4, 4), 4)
    record = CopyRecord(["tas"], {"time": 4}, "zstd")
    record.set_pending(array, {(0, 0), (2, 0)})
    again = CopyRecord.from_json(record.to_json())
    assert again.pending_units(array) == {(0, 0), (2, 0)} and not again.complete
    assert again.coverage([array]) == pytest.approx(1 / 3)
    again.set_pending(array, set())
    assert again.complete and again.coverage([array]) == 1.0


# -- making a copy -----------------------------------------------------------------------------


def test_rechunk_makes_a_copy_equal_to_the_files(cube: Spec, workdir: Path) -> None:
    before = open_repo(cube).lookup_branch("main")
    done = rechunk_cube(cube, str(uuid.uuid4()))
    [made] = done["copies"]
    assert done["published"] and made["created"] and made["problems"] == [] and made["coverage"] == 1.0
    assert made["units"] == made["total_units"] == 2 * 2  # 2 polygons x 6 days in chunks of 4
    assert_copy_is_the_files(cube, workdir)
    store = open_repo(cube).readonly_session(branch="main").store
    native = array_at(open_root(store), "ts/tas")
    assert native.chunks == (1, 4, 4, 6) and type(native.compressors[0]).__name__ == "ZstdCodec"
    assert read_record(store, "ts").snapshot  # what it was made from
    # readers of the snapshot before see no copy; the virtual arrays are untouched
    assert "ts" not in open_root(open_repo(cube).readonly_session(snapshot_id=before).store)
    xr.testing.assert_identical(read_cube(cube, snapshot=before).load(), read_cube(cube).load())

    again = rechunk_cube(cube, str(uuid.uuid4()))  # up to date: nothing to write, nothing published
    assert again["copies"][0]["units"] == 0 and not again["published"]


def test_a_copy_over_worker_processes_is_the_same(workdir: Path) -> None:
    for day in range(5):
        write_day(workdir, 1, day)
    spec = make_spec(workdir, PATTERN, extra=COPY)
    spec = spec.model_copy(update={"execution": spec.execution.model_copy(update={"executor": "processes"})})
    assert run_cube(spec).exit_code == 0
    done = rechunk_cube(spec, str(uuid.uuid4()), task_bytes=1)  # one unit per worker call
    assert done["copies"][0]["units"] == 2 and done["copies"][0]["problems"] == []
    assert_copy_is_the_files(spec, workdir)


# -- keeping it in step --------------------------------------------------------------------------


def test_an_ingest_rewrites_only_the_units_it_touched(cube: Spec, workdir: Path) -> None:
    rechunk_cube(cube, str(uuid.uuid4()))
    write_day(workdir, 1, 6)  # polygon 1's second time unit (days 4-7)
    summary, results = run_with_results(cube)
    assert summary.exit_code == 0 and summary.ingested == 1
    [copy] = results[Step.RECHUNK]
    assert (copy["units"], copy["total_units"], copy["problems"]) == (1, 4, [])
    assert copy["bytes"] == 4 * 6 * 4  # one day of one polygon read again (4 x 6 float32), not the unit
    assert summary.copies == [copy]
    assert_copy_is_the_files(cube, workdir)

    for polygon in (1, 2):  # a new time unit for both polygons: the copy grows with the cube
        for day in (7, 8):
            write_day(workdir, polygon, day)
    summary, results = run_with_results(cube)
    assert summary.exit_code == 0 and results[Step.RECHUNK][0]["units"] == 4  # (days 4-7, 8-11) x 2 polygons
    assert read_copy(cube).sizes["time"] == 9
    assert_copy_is_the_files(cube, workdir)


def test_back_fills_and_new_members_move_the_copy_along(cube: Spec, workdir: Path) -> None:
    rechunk_cube(cube, str(uuid.uuid4()))
    for polygon in (1, 2):
        for day in (-2, -1):  # a back-fill: the virtual references move, the copy is rewritten from there
            write_day(workdir, polygon, day)
    for day in range(-2, 6):
        write_day(workdir, 0, day)  # a new ensemble member in front of the others
    summary, results = run_with_results(cube)
    assert summary.exit_code == 0 and summary.ingested == 12 and results[Step.RECHUNK][0]["problems"] == []
    assert read_copy(cube).polygon.values.tolist() == [0, 1, 2]
    assert_copy_is_the_files(cube, workdir)


def test_a_build_remakes_the_copies_main_had(cube: Spec, workdir: Path) -> None:
    rechunk_cube(cube, str(uuid.uuid4()))
    write_day(workdir, 3, 0)
    summary = run_cube(cube, "build")
    assert summary.exit_code == 0 and any("native copy ts" in n for n in summary.notes)
    assert_copy_is_the_files(cube, workdir)


def test_a_cube_without_copies_is_not_given_any(workdir: Path) -> None:
    for day in range(3):
        write_day(workdir, 1, day)
    spec = make_spec(workdir, PATTERN, extra=COPY)
    assert run_cube(spec).exit_code == 0
    write_day(workdir, 1, 3)
    summary, results = run_with_results(spec)
    assert summary.exit_code == 0 and results[Step.RECHUNK] == []  # made only by `icefloe rechunk`
    assert "ts" not in open_root(open_repo(spec).readonly_session(branch="main").store)


# -- safety --------------------------------------------------------------------------------------


def test_a_rechunk_killed_midway_resumes_where_it_stopped(cube: Spec, workdir: Path) -> None:
    main = open_repo(cube).lookup_branch("main")
    script = (
        "import sys, uuid\n"
        "from lib.spec import load_spec\nfrom lib.rechunk import rechunk_cube\n"
        "rechunk_cube(load_spec(sys.argv[1]), str(uuid.uuid4()), round_calls=1, task_bytes=1)\n"
    )
    spec_path = workdir / "cube.yaml"
    spec_path.write_text(
        f'name: test\nsource:\n  url: {cube.source.url}\n  pattern: "{PATTERN}"\nconcat: [time]\n'
        f"repo:\n  url: {cube.repo.url}\nexecution: {{executor: threads, workers: 2, batch_size: 4}}\n{COPY}"
    )
    killed = subprocess.run(
        [sys.executable, "-c", script, str(spec_path)],
        env={**os.environ, "ICEFLOE_KILL_AT": "copy-round"},
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    repo = open_repo(cube)
    assert repo.lookup_branch("main") == main  # nothing published
    staged = read_record(repo.readonly_session(branch="ingest").store, "ts")
    assert staged is not None and not staged.complete  # the first round is on staging
    [status] = copy_status(repo.readonly_session(branch="ingest").store, cube)
    assert (status["coverage"], status["stale_units"]) == (0.25, 3)  # what status shows of such a copy
    assert status["stale"][0] == {"variable": "tas", "polygon": [0, 1], "time": [4, 6], "lat": [0, 4], "lon": [0, 6]}

    done = rechunk_cube(cube, str(uuid.uuid4()), round_calls=1, task_bytes=1)
    assert done["resumed"] and done["published"]
    assert done["copies"][0]["units"] == 3  # the other three units, not the whole copy again
    assert_copy_is_the_files(cube, workdir)


def test_a_copy_that_differs_from_the_virtual_data_blocks_the_publish(
    cube: Spec, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_units = rechunk.write_units

    def off_by_one(*args: Any) -> Any:  # a writer with a bug: every value one too high
        fork, done = write_units(*args)
        root = open_root(fork.store, "r+")
        target = array_at(root, "ts/tas")
        target[...] = np.asarray(target[...]) + 1
        return fork, done

    monkeypatch.setattr(rechunk, "write_units", off_by_one)
    main = open_repo(cube).lookup_branch("main")
    with pytest.raises(PublishBlocked, match=r"native copy 'ts': tas at polygon=\d+:\d+, time=\d+:\d+.* differs"):
        rechunk_cube(cube, str(uuid.uuid4()))
    repo = open_repo(cube)
    assert repo.lookup_branch("main") == main and repo.lookup_branch("ingest") == main


def test_compare_units_names_the_variable_and_the_region(cube: Spec) -> None:
    rechunk_cube(cube, str(uuid.uuid4()))
    repo = open_repo(cube)
    session = repo.writable_session("ingest")
    schema = read_schema(session.store)
    assert schema is not None
    [array] = copy_arrays(cube.native_copies[0], session.store, schema)
    target = array_at(open_root(session.store, "r+"), "ts/tas")
    target[1, 4:6, 0, 0] = -1.0
    units = {"tas": {(0, 0, 0, 0), (1, 1, 0, 0)}}
    assert compare_units(session.store, [array], units, sample=2) == [
        "native copy 'ts': tas at polygon=1:2, time=4:6, lat=0:4, lon=0:6 differs from the virtual data (2 value(s))"
    ]


@pytest.mark.parametrize(
    ("copy", "message"),
    [
        ("{name: ts, variables: [nope]}", "native copy 'ts' lists 'nope', which is not a variable of the cube"),
        ("{name: tas, variables: [tas]}", "native copy 'tas' has the name of a variable or group of the cube"),
        ("{name: ts, variables: [tas], chunks: {depth: 3}}", "sets chunks along ['depth'], which none of its"),
    ],
)
def test_a_copy_that_does_not_fit_the_cube_is_a_spec_error(workdir: Path, copy: str, message: str) -> None:
    for day in range(2):
        write_day(workdir, 1, day)
    spec = make_spec(workdir, PATTERN, extra=f"native_copies:\n  - {copy}\n")
    assert run_cube(spec).exit_code == 0
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        rechunk_cube(spec, "x")
    assert e.value.key == "native_copies"
    with pytest.raises(SpecError, match="the spec lists no native_copies"):
        rechunk_cube(make_spec(workdir, PATTERN), "x")


def test_values_differ_bit_for_bit_and_a_nan_equals_itself() -> None:
    from lib.rechunk import _differing

    nan = np.float32("nan")
    assert _differing(np.array([nan, 1, 2], "f4"), np.array([nan, 1, 3], "f4")) == 1
    assert _differing(np.array([0.0], "f8"), np.array([-0.0], "f8")) == 1  # equal as numbers, not as bits
    assert _differing(np.array([1, 2], "i4"), np.array([1, 2], "i8")) == 2  # another dtype: every value
