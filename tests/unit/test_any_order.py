"""Archive life: files arrive in any order. Files beyond a gap wait and land when it fills, a stray far
from the axis is refused while its batch lands, back-fills and late files open room by moving
references (no data copied), and older snapshots keep what they showed."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from lib import ledger
from lib.pipeline import Step, run_steps
from lib.runs import CubeRun
from lib.spec import Spec
from tests.helpers import (
    EPOCH,
    dataset,
    file_url,
    locations,
    make_spec,
    open_files,
    open_repo,
    read_cube,
    run_cube,
    write_nc4,
)

PATTERN = "polygon_{polygon:d}/day_*.nc"


def write_day(workdir: Path, polygon: int, day: int) -> Path:
    return write_nc4(
        workdir / "archive" / f"polygon_{polygon}" / f"day_{day:05d}.nc",
        dataset(day, seed=polygon, scalar=float(polygon)),
    )


def assert_cube_is_the_files(spec: Spec, workdir: Path) -> None:
    """Every file exactly once in main, and the cube equals the files, cell by cell, value for value."""
    repo = open_repo(spec)
    rows = ledger.read_rows(repo.readonly_session(branch="main").store)
    current = {r.url: r.status for r in rows}
    files = sorted((workdir / "archive").rglob("*.nc"))
    assert {u for u, s in current.items() if s == "ingested"} == {file_url(f) for f in files}
    refs = collections.Counter(repo.readonly_session(branch="main").all_virtual_chunk_locations())
    assert set(refs) == {file_url(f) for f in files}
    cube = read_cube(spec).load()
    for polygon_dir in sorted((workdir / "archive").glob("polygon_*")):
        polygon = int(polygon_dir.name.split("_")[1])
        ref = open_files(list(polygon_dir.glob("*.nc")))
        got = cube.sel(polygon=polygon, drop=True).sel(time=ref.time)
        xr.testing.assert_identical(got.tas, ref.tas)


@pytest.fixture
def two_polygons(workdir: Path) -> Spec:
    for polygon in (1, 2):
        for day in range(5):
            write_day(workdir, polygon, day)
    spec = make_spec(workdir, PATTERN)
    assert run_cube(spec).exit_code == 0
    return spec


def test_out_of_order_files_wait_only_where_the_axis_demands_it(two_polygons: Spec, workdir: Path) -> None:
    spec = two_polygons
    new_polygon = [write_day(workdir, 3, day) for day in range(5)]
    early = write_day(workdir, 1, 6)  # day 5 has not arrived yet
    s = run_cube(spec, "ingest")
    assert (s.exit_code, s.ingested, s.quarantined) == (0, 5, []), s
    assert [d["url"] for d in s.deferred] == [file_url(early)]
    assert {file_url(f) for f in new_polygon} <= locations(spec) and file_url(early) not in locations(spec)
    assert read_cube(spec).sizes["polygon"] == 3
    write_day(workdir, 1, 5)
    s = run_cube(spec, "ingest")
    assert (s.exit_code, s.ingested, s.deferred) == (0, 2, []), s
    assert_cube_is_the_files(spec, workdir)


def test_a_stray_far_from_the_axis_is_refused_and_its_batch_lands(workdir: Path) -> None:
    good = [write_day(workdir, 1, day) for day in range(8)]
    stray = write_day(workdir, 1, 3650 + 3)  # ten years on: a mis-stamped date
    spec = make_spec(workdir, PATTERN)
    s = run_cube(spec)
    assert (s.exit_code, s.ingested, s.deferred) == (3, len(good), []), s
    [q] = s.quarantined
    assert q["url"] == file_url(stray)
    assert "has time 2010-01-01, 3646 steps beyond the axis end (2000-01-08); is its time right?" in q["reason"]
    stray.unlink()
    assert_cube_is_the_files(spec, workdir)


def test_a_deferred_file_that_waits_too_long_is_quarantined(two_polygons: Spec, workdir: Path) -> None:
    early = write_day(workdir, 1, 7)
    s = run_cube(two_polygons, "ingest")
    assert [d["url"] for d in s.deferred] == [file_url(early)]
    time.sleep(2.1)
    patient = make_spec(workdir, PATTERN, extra="checks:\n  max_wait: 1s\n")
    s = run_cube(patient, "ingest")
    assert s.exit_code == 3 and s.deferred == [] and [q["url"] for q in s.quarantined] == [file_url(early)]
    assert "longer than checks.max_wait (0:00:01)" in s.quarantined[0]["reason"]
    assert "waits for 2 missing step(s)" in s.quarantined[0]["reason"]


def test_a_back_fill_lands_in_front_and_old_snapshots_keep_what_they_showed(two_polygons: Spec, workdir: Path) -> None:
    spec = two_polygons
    before = open_repo(spec).lookup_branch("main")
    shown = read_cube(spec, snapshot=before).load()
    older = [write_day(workdir, polygon, day) for polygon in (1, 2) for day in (-3, -2, -1)]
    s = run_cube(spec, "ingest")
    assert (s.exit_code, s.ingested, s.quarantined, s.deferred) == (0, len(older), [], []), s
    assert read_cube(spec).time.values[0] == EPOCH - np.timedelta64(3, "D")
    assert_cube_is_the_files(spec, workdir)
    xr.testing.assert_identical(read_cube(spec, snapshot=before).load(), shown)
    moves = ledger.read_moves(open_repo(spec).readonly_session(branch="main").store)
    assert moves == [{"dim": "time", "at": 0, "by": 3}]


def test_a_late_file_inside_the_axis_opens_room_for_itself(workdir: Path) -> None:
    for day in (0, 1, 2, 4, 5):  # an axis with no day 3 (not declared regular: an irregular archive)
        write_day(workdir, 1, day)
    spec = make_spec(workdir, PATTERN, extra="checks:\n  regular: []\n")
    assert run_cube(spec).exit_code == 0
    before = open_repo(spec).lookup_branch("main")
    shown = read_cube(spec, snapshot=before).load()
    write_day(workdir, 1, 3)
    write_day(workdir, 2, 4)  # another polygon at an existing step
    s = run_cube(spec, "ingest")
    assert (s.exit_code, s.ingested, s.quarantined) == (0, 2, []), s
    assert_cube_is_the_files(spec, workdir)
    xr.testing.assert_identical(read_cube(spec, snapshot=before).load(), shown)


def test_room_that_is_not_whole_chunks_is_refused_with_the_reason(workdir: Path) -> None:
    def write(days: list[int]) -> Path:
        return write_nc4(
            workdir / "archive" / "polygon_1" / f"day_{days[0]:05d}.nc", dataset(days, scalar=1.0), chunks=(2, 2, 3)
        )

    for days in ([0, 1], [2, 3], [7, 8]):
        write(days)
    spec = make_spec(workdir, PATTERN, extra="checks:\n  regular: []\n")
    assert run_cube(spec).exit_code == 0
    late = write([4, 5, 6])  # three values into chunks of two
    s = run_cube(spec, "ingest")
    assert [q["url"] for q in s.quarantined] == [file_url(late)]
    assert (
        "inside the cube's 'time' axis (between 2000-01-04 and 2000-01-08): room for 3 value(s) at position 4 is "
        "not a whole number of chunks of 'tas' (it holds 2 along 'time')" in s.quarantined[0]["reason"]
    )


def test_a_new_ensemble_member_between_others_opens_room_along_its_pattern_dim(
    two_polygons: Spec, workdir: Path
) -> None:
    spec = two_polygons
    for day in range(5):
        write_day(workdir, 4, day)
    assert run_cube(spec, "ingest").exit_code == 0
    middle = [write_day(workdir, 3, day) for day in range(5)]  # sorts between 2 and 4
    s = run_cube(spec, "ingest")
    assert (s.exit_code, s.ingested, s.quarantined) == (0, len(middle), []), s
    assert read_cube(spec).polygon.values.tolist() == [1, 2, 3, 4]
    assert_cube_is_the_files(spec, workdir)


def test_monthly_steps_of_28_to_31_days_are_never_gaps(workdir: Path) -> None:
    starts = [np.datetime64(f"2000-{m:02d}-01", "ns") for m in range(1, 13)]
    for i, when in enumerate(starts):
        ds = dataset(i).assign_coords(time=[when])
        write_nc4(workdir / "archive" / "polygon_1" / f"day_{i:05d}.nc", ds)
    spec = make_spec(workdir, PATTERN)
    s = run_cube(spec)
    assert (s.exit_code, s.ingested, s.deferred) == (0, 12, []), s
    march = workdir / "archive" / "polygon_1" / "day_00002.nc"
    march.unlink()
    s = run_cube(make_spec(workdir, PATTERN, name="gap"))
    assert [d["url"].rsplit("/", 1)[-1] for d in s.deferred] == [f"day_{i:05d}.nc" for i in range(3, 12)]
    assert "waits for 1 missing step(s) of 'time' (one month each) after 2000-02-01" in s.deferred[0]["reason"]


def test_an_expectation_failing_on_new_values_refuses_only_the_files_that_brought_them(
    two_polygons: Spec, workdir: Path
) -> None:
    checked = make_spec(
        workdir,
        PATTERN,
        extra=(
            "checks:\n  expectations:\n    - {type: expect_column_values_to_be_between, variable: polygon, "
            "kwargs: {min_value: 1, max_value: 5}}\n"
        ),
    )
    fine = [write_day(workdir, 3, day) for day in range(5)]
    stray = [write_day(workdir, 9, day) for day in range(5)]  # a polygon number no polygon has
    plan = CubeRun(checked, "ingest", "dry", write=False)
    try:
        run_steps(plan, until=Step.PLAN)  # `icefloe plan` sees it too, before anything is written
    finally:
        plan.close()
    assert sorted(plan.plan_.quarantined) == sorted(file_url(f) for f in stray)  # type: ignore[union-attr]
    s = run_cube(checked, "ingest")
    assert (s.exit_code, s.ingested) == (3, len(fine)), s
    assert sorted(q["url"] for q in s.quarantined) == sorted(file_url(f) for f in stray)
    assert (
        "expect_column_values_to_be_between on 'polygon' fails for the values it brings" in s.quarantined[0]["reason"]
    )
    assert read_cube(checked).polygon.values.tolist() == [1, 2, 3]


def test_an_expectation_failing_on_the_cube_s_own_values_blocks_the_publish(two_polygons: Spec, workdir: Path) -> None:
    strict = make_spec(
        workdir,
        PATTERN,
        extra=(
            "checks:\n  expectations:\n    - {type: expect_column_values_to_be_between, variable: polygon, "
            "kwargs: {min_value: 2, max_value: 5}}\n"
        ),
    )
    tip = open_repo(strict).lookup_branch("main")
    write_day(workdir, 2, 5)
    s = run_cube(strict, "ingest")
    assert s.exit_code == 1 and "expect_column_values_to_be_between on 'polygon'" in (s.error or ""), s
    assert open_repo(strict).lookup_branch("main") == tip


def test_plan_shows_what_would_wait(two_polygons: Spec, workdir: Path) -> None:
    early = write_day(workdir, 2, 7)
    run = CubeRun(two_polygons, "ingest", "dry", write=False)
    try:
        run_steps(run, until=Step.PLAN)
        summary = run.finish()
    finally:
        run.close()
    assert [d["url"] for d in summary.deferred] == [file_url(early)] and summary.quarantined == []


def write_month(workdir: Path, polygon: int, year: int, month: int) -> Path:
    when = np.datetime64(f"{year}-{month:02d}-01", "ns")
    ds = dataset(year * 12 + month, seed=polygon, scalar=float(polygon)).assign_coords(time=[when])
    return write_nc4(workdir / "archive" / f"polygon_{polygon}" / f"day_{year}{month:02d}.nc", ds)


def test_years_back_filled_under_a_monthly_cube_and_a_missing_month_filled_late(workdir: Path) -> None:
    """A cube of 2002-2003 gets 2000-2001 (a back-fill in front), then a month missing inside the axis
    (an irregular archive: not declared regular); every value equals the files, old snapshots stay."""
    for year in (2002, 2003):
        for month in range(1, 13):
            if (year, month) != (2003, 6):
                write_month(workdir, 1, year, month)
    spec = make_spec(workdir, PATTERN, extra="checks:\n  regular: []\n")
    assert run_cube(spec).exit_code == 0
    before = open_repo(spec).lookup_branch("main")
    shown = read_cube(spec, snapshot=before).load()
    for year in (2000, 2001):
        for month in range(1, 13):
            write_month(workdir, 1, year, month)
    s = run_cube(spec, "ingest")
    assert (s.exit_code, s.ingested, s.quarantined) == (0, 24, []), s
    june = write_month(workdir, 1, 2003, 6)
    s = run_cube(spec, "ingest")
    assert (s.exit_code, s.ingested, s.quarantined) == (0, 1, []), s
    assert file_url(june) in locations(spec)
    assert read_cube(spec).sizes["time"] == 48
    assert_cube_is_the_files(spec, workdir)
    xr.testing.assert_identical(read_cube(spec, snapshot=before).load(), shown)
    assert [m["at"] for m in ledger.read_moves(open_repo(spec).readonly_session(branch="main").store)] == [0, 41]
