"""Files of unequal length land on rectilinear axes (``rectilinear: [time]``): each file brings its own
chunk edges along the axis; the cube equals the files, value for value, decoded times included."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from lib.spec import Spec
from tests.helpers import dataset, file_url, make_spec, open_repo, read_cube, run_cube, write_nc4

EPOCH = np.datetime64("2000-01-01", "D")


def month(
    workdir: Path,
    year: int,
    number: int,
    *,
    polygon: int = 1,
    member: int = 1,
    chunk: int | None = None,
    complevel: int = 4,
) -> Path:
    """A month of daily data (or hourly: its first day), one chunk per file unless ``chunk`` says otherwise."""
    first = np.datetime64(f"{year}-{number:02d}-01", "D")
    last = first.astype("datetime64[M]") + np.timedelta64(1, "M")
    days = int((last.astype("datetime64[D]") - first).astype(int))
    offsets = [int((first - EPOCH).astype(int)) + d for d in range(days)]
    ds = dataset(offsets, seed=polygon * 10 + member, scalar=float(polygon))
    path = workdir / "archive" / f"polygon_{polygon}" / f"member_{member}" / f"{year}-{number:02d}.nc"
    return write_nc4(path, ds, chunks=(chunk or days, 2, 3), complevel=complevel, shuffle=complevel > 0)


def rectilinear_spec(workdir: Path, extra: str = "", name: str = "months") -> Spec:
    return make_spec(workdir, "polygon_{polygon:d}/member_{member:d}/*.nc", extra=extra, name=name).model_copy(
        update={"rectilinear": ("time",)}
    )


def assert_cube_is_the_files(spec: Spec, workdir: Path, **selection: int) -> None:
    cube = read_cube(spec).load()
    for cell in sorted((workdir / "archive").glob("polygon_*/member_*")):
        polygon, member = int(cell.parent.name.split("_")[1]), int(cell.name.split("_")[1])
        ref = xr.open_mfdataset(
            sorted(cell.glob("*.nc")), combine="by_coords", data_vars="minimal", compat="no_conflicts", join="outer"
        ).load()
        got = cube.sel(polygon=polygon, member=member, drop=True).sel(time=ref.time)
        xr.testing.assert_identical(got.tas, ref.tas)
        xr.testing.assert_identical(got.time, ref.time)


def test_a_leap_year_of_monthly_files_then_the_next_january(workdir: Path) -> None:
    for number in range(1, 13):
        month(workdir, 2000, number)
    spec = rectilinear_spec(workdir)
    s = run_cube(spec)
    assert (s.exit_code, s.ingested, s.quarantined, s.deferred) == (0, 12, [], []), s
    cube = read_cube(spec)
    assert cube.sizes["time"] == 366
    assert cube.tas.encoding["chunks"][2] == (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    month(workdir, 2001, 1)
    s = run_cube(spec, "ingest")
    assert (s.exit_code, s.ingested, s.quarantined, s.deferred) == (0, 1, [], []), s
    assert read_cube(spec).sizes["time"] == 366 + 31
    assert_cube_is_the_files(spec, workdir)


def test_without_rectilinear_the_reason_names_the_option(workdir: Path) -> None:
    for number in (1, 2, 3):
        month(workdir, 2000, number)
    s = run_cube(make_spec(workdir, "polygon_{polygon:d}/member_{member:d}/*.nc"))
    assert s.quarantined and all("rectilinear" in q["reason"] for q in s.quarantined), s.quarantined


def test_chunks_of_eight_along_a_31_day_axis(workdir: Path) -> None:
    """Uncompressed, the partial last chunk of each month is referenced by its values' bytes alone
    (edges 8, 8, 8, 7); compressed, it cannot be, and the file says why."""
    for number in (1, 2, 3):
        month(workdir, 2000, number, chunk=8, complevel=0)
    spec = rectilinear_spec(workdir)
    s = run_cube(spec)
    assert (s.exit_code, s.ingested, s.quarantined) == (0, 3, []), s
    assert read_cube(spec).tas.encoding["chunks"][2] == (8, 8, 8, 7, 8, 8, 8, 5, 8, 8, 8, 7)
    assert_cube_is_the_files(spec, workdir)
    other = workdir / "compressed"
    compressed = [month(other, 2000, number, chunk=8, complevel=4) for number in (1, 2)]
    s = run_cube(rectilinear_spec(other, name="compressed"))
    reasons = {q["url"]: q["reason"] for q in s.quarantined}
    assert (
        "ends with a partial chunk of 'tas' along 'time' (7 of 8 values) that HDF5 stores padded to a full chunk, "
        "filtered (shuffle, zlib)" in reasons[file_url(compressed[0])]
    ), reasons


def test_an_unlimited_time_dimension_chunked_past_the_data(workdir: Path) -> None:
    """A month chunked 1024 along an unlimited time dim: uncompressed the chunk is trimmed and lands;
    compressed it cannot be trimmed, and is refused with the reason."""
    for number, complevel in ((1, 0), (2, 0)):
        path = month(workdir, 2000, number, complevel=complevel)
        ds = xr.open_dataset(path).load()
        path.unlink()
        ds.to_netcdf(
            path,
            engine="h5netcdf",
            unlimited_dims=["time"],
            encoding={"tas": {"chunksizes": (1024, 2, 3), "zlib": False}},
        )
    spec = rectilinear_spec(workdir)
    s = run_cube(spec)
    assert (s.exit_code, s.ingested, s.quarantined) == (0, 2, []), s
    assert_cube_is_the_files(spec, workdir)
    other = workdir / "compressed"
    squeezed = month(other, 2000, 3)
    ds = xr.open_dataset(squeezed).load()
    squeezed.unlink()
    ds.to_netcdf(
        squeezed,
        engine="h5netcdf",
        unlimited_dims=["time"],
        encoding={"tas": {"chunksizes": (1024, 2, 3), "zlib": True}},
    )
    with h5py.File(squeezed) as f:
        assert f["tas"].chunks == (1024, 2, 3)
    s = run_cube(rectilinear_spec(other, name="squeezed"))
    reasons = {q["url"]: q["reason"] for q in s.quarantined}
    assert "(31 of 1024 values)" in reasons[file_url(squeezed)] and "filtered (zlib)" in reasons[file_url(squeezed)]


def test_an_hourly_archive_with_one_missing_hour_waits_for_it(workdir: Path) -> None:
    hours = np.timedelta64(1, "h")
    start = np.datetime64("2000-01-01T00", "ns")

    def write(first: int, count: int) -> Path:
        times = start + (np.arange(first, first + count) * hours)
        ds = dataset(list(range(count))).assign_coords(time=times)
        ds["time"].encoding = {"units": "hours since 2000-01-01", "dtype": "int64"}
        return write_nc4(workdir / "archive" / "polygon_1" / "member_1" / f"h{first:03d}.nc", ds, chunks=(count, 2, 3))

    for first, count in ((0, 6), (6, 5), (12, 6)):  # 11:00 is missing between the second and third file
        write(first, count)
    spec = rectilinear_spec(workdir)
    s = run_cube(spec)
    assert (s.exit_code, s.ingested, s.quarantined) == (0, 2, []), s
    [d] = s.deferred
    assert d["url"].endswith("h012.nc") and "waits for 1 missing step(s) of 'time' (1 hours each)" in d["reason"]
    write(11, 1)
    s = run_cube(spec, "ingest")
    assert (s.exit_code, s.ingested, s.deferred) == (0, 2, []), s
    assert read_cube(spec).tas.encoding["chunks"][2] == (6, 5, 1, 6)
    assert_cube_is_the_files(spec, workdir)


def test_polygons_and_members_on_a_rectilinear_time_axis(workdir: Path) -> None:
    """The 6-D shape of the demo: two pattern dims, and months of unequal length along time."""
    for polygon in (1, 2):
        for member in (1, 2):
            for number in (1, 2, 3):
                month(workdir, 2000, number, polygon=polygon, member=member)
    spec = rectilinear_spec(workdir)
    s = run_cube(spec)
    assert (s.exit_code, s.ingested, s.quarantined) == (0, 12, []), s
    assert_cube_is_the_files(spec, workdir)
    late = month(workdir, 1999, 12, polygon=2, member=2)  # a back-fill cannot move rectilinear chunks
    s = run_cube(spec, "ingest")
    [q] = s.quarantined
    assert q["url"] == file_url(late) and "room cannot be made on a rectilinear axis" in q["reason"]
    assert open_repo(spec).lookup_branch("main")


@pytest.mark.parametrize("hole", [(1, 2), (2, 1)])
def test_a_cell_may_fill_its_hole_when_its_chunks_agree(workdir: Path, hole: tuple[int, int]) -> None:
    for number in (1, 2, 3):
        month(workdir, 2000, number, polygon=1)
    for number in (1, 3):
        month(workdir, 2000, number, polygon=2)
    spec = rectilinear_spec(workdir, extra="checks:\n  regular: []\n")
    assert run_cube(spec).exit_code == 0
    month(workdir, 2000, 2, polygon=2)
    s = run_cube(spec, "ingest")
    assert (s.exit_code, s.ingested) == (0, 1), s
    split = month(workdir, 2000, 2, polygon=3, chunk=1)  # chunks of 1 where the axis has one of 29
    s = run_cube(spec, "ingest")
    [q] = s.quarantined
    assert q["url"] == file_url(split) and "do not line up with those already at positions 31:60" in q["reason"]


def test_kerchunk_refuses_a_rectilinear_cube_and_readers_are_told(workdir: Path) -> None:
    from lib.errors import IcefloeError
    from lib.export import export_kerchunk

    for number in (1, 2):
        month(workdir, 2000, number)
    spec = rectilinear_spec(workdir)
    s = run_cube(spec)
    assert any("zarr.config.set({'array.rectilinear_chunks': True})" in n for n in s.notes), s.notes
    with pytest.raises(IcefloeError, match="Kerchunk references cannot express the rectilinear chunk grid of time"):
        export_kerchunk(open_repo(spec), spec, workdir / "refs.json")
