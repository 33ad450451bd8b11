"""Round trips: every format and layout, read back through Icechunk with xarray, equals xarray on the files."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import xarray as xr

import lib.staging
from lib.local.archive import DemoShape, write_demo_archive
from tests.helpers import (
    dataset,
    file_url,
    locations,
    make_spec,
    open_repo,
    read_cube,
    run_cube,
    write_nc3,
    write_nc4,
)


def reference(files: list[Path], **kw: object) -> xr.Dataset:
    """xarray on the original files, concatenated along time the way the cube joins them."""
    parts = [xr.open_dataset(f, **kw).load() for f in files]  # type: ignore[arg-type]
    if len(parts) == 1:
        return parts[0]
    return xr.concat(
        parts,
        dim="time",
        data_vars="minimal",
        coords="minimal",
        compat="override",
        join="exact",
        combine_attrs="override",
    )


def test_netcdf4_chunked_zlib_shuffle_along_time_with_per_file_time_units(workdir: Path) -> None:
    files = [
        write_nc4(
            workdir / "archive" / f"day_{t}.nc", dataset(t, scalar=10.0), time_units=f"hours since 2000-01-{t + 1:02d}"
        )
        for t in range(5)
    ]
    spec = make_spec(workdir, "day_*.nc")
    summary = run_cube(spec)
    assert summary.exit_code == 0 and summary.ingested == 5 and summary.published
    assert summary.dims == {"time": 5, "lat": 4, "lon": 6}
    cube = read_cube(spec).load()
    xr.testing.assert_identical(cube, reference(files))
    assert locations(spec) == {file_url(f) for f in files}
    assert cube.tas.encoding["compressors"][-1].codec_config["level"] == 4  # codecs kept with their levels


def test_netcdf4_contiguous_single_file_cube(workdir: Path) -> None:
    path = write_nc4(workdir / "archive" / "one.nc", dataset([0, 1, 2], scalar=2.0), chunks=None, engine="netcdf4")
    with h5py.File(path) as f:
        assert f["tas"].chunks is None  # the layout under test really is contiguous
    spec = make_spec(workdir, "*.nc", concat="[]")
    assert run_cube(spec).exit_code == 0
    xr.testing.assert_identical(read_cube(spec).load(), reference([path]))


def test_plain_hdf5_written_with_h5py(workdir: Path) -> None:
    path = workdir / "archive" / "plain.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("grid", data=np.arange(12.0).reshape(3, 4))
        f.create_dataset("counts", data=np.arange(30, dtype="i4"), chunks=(10,), compression="gzip", shuffle=True)
        f.create_dataset("big_endian", data=np.arange(6, dtype=">f8"), chunks=(3,))
        f.attrs["institution"] = "test"
    spec = make_spec(workdir, "*.h5", concat="[]")
    assert run_cube(spec).exit_code == 0
    cube = read_cube(spec).load()
    xr.testing.assert_identical(cube, xr.open_dataset(path, engine="h5netcdf", phony_dims="sort").load())


@pytest.mark.parametrize("fmt", ["NETCDF3_CLASSIC", "NETCDF3_64BIT_OFFSET"])
def test_netcdf3_with_record_variables(workdir: Path, fmt: str) -> None:
    files = [
        write_nc3(workdir / "archive" / f"part_{i}.nc", dataset([3 * i, 3 * i + 1, 3 * i + 2], scalar=1.5), fmt)
        for i in range(3)
    ]
    with open(files[0], "rb") as f:
        assert f.read(4) == (b"CDF\x01" if fmt == "NETCDF3_CLASSIC" else b"CDF\x02")
    spec = make_spec(workdir, "part_*.nc")
    summary = run_cube(spec)
    assert summary.exit_code == 0 and summary.dims["time"] == 9
    xr.testing.assert_identical(read_cube(spec).load(), reference(files))


def test_fits_images_with_and_without_scaling(workdir: Path) -> None:
    from astropy.io import fits

    path = workdir / "archive" / "image.fits"
    primary = fits.PrimaryHDU(np.arange(20, dtype=">i2").reshape(4, 5))
    primary.header["BSCALE"], primary.header["BZERO"] = 0.5, 10.0
    fits.HDUList([primary, fits.ImageHDU(np.linspace(0, 1, 6, dtype=">f4").reshape(2, 3), name="ERR")]).writeto(path)
    spec = make_spec(workdir, "*.fits", concat="[]")
    assert run_cube(spec).exit_code == 0
    cube = read_cube(spec).load()
    with fits.open(path) as hdus:
        np.testing.assert_array_equal(cube["PRIMARY"].values, hdus[0].data.astype("f8"))
        np.testing.assert_array_equal(cube["ERR"].values, hdus["ERR"].data)
    assert locations(spec) == {file_url(path)}


def test_new_dims_from_integer_and_string_path_fields(workdir: Path) -> None:
    files = {}
    for model in ("access", "cesm"):
        for member in (1, 2):
            files[model, member] = [
                write_nc4(workdir / "archive" / model / f"r{member}" / f"t{t}.nc", dataset(t, seed=member))
                for t in range(3)
            ]
    spec = make_spec(workdir, "{model}/r{member:d}/t*.nc")
    summary = run_cube(spec)
    assert summary.exit_code == 0 and summary.dims == {"model": 2, "member": 2, "time": 3, "lat": 4, "lon": 6}
    cube = read_cube(spec).load()
    assert cube.model.values.tolist() == ["access", "cesm"] and cube.member.values.tolist() == [1, 2]
    for (model, member), paths in files.items():
        got = cube.sel(model=model, member=member).drop_vars(["model", "member"])
        xr.testing.assert_identical(got, reference(paths))


@pytest.mark.parametrize(
    ("sliced", "spec_refs_max"),
    [(False, 10**6), (True, 10**6), (True, 0)],
    ids=["whole-batches", "slices", "slices-calls-per-file"],
)
def test_demo_six_dimensional_cube(
    workdir: Path, sliced: bool, spec_refs_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if sliced:  # each batch of 4 files spooled in packed slices of 3 and 1
        monkeypatch.setattr("lib.spool.SLICE", 3)
    # every file's refs as a spec each, or (0) every file's block of a variable in a call of its own
    monkeypatch.setattr("lib.references.SPEC_REFS_MAX", spec_refs_max)
    spec = _demo(workdir)
    summary = run_cube(spec)
    assert summary.dims == {"polygon": 2, "month": 2, "time": 3, "depth": 5, "lat": 16, "lon": 16}
    cube = read_cube(spec).load()
    assert cube.DIC.dims == ("polygon", "month", "time", "depth", "lat", "lon")
    assert cube.injection_rate.dims == ("polygon", "month")
    _same_as_files(workdir, spec)


def _demo(workdir: Path) -> Any:
    write_demo_archive(workdir / "archive", DemoShape(polygons=2, months=2, steps=3))
    return make_spec(workdir, "polygon_{polygon:d}/month_{month:d}/step_*.nc")  # 12 files in batches of 4


def _same_as_files(workdir: Path, spec: Any) -> None:
    cube = read_cube(spec).load()
    for p in range(2):
        for m in (1, 2):
            paths = sorted((workdir / "archive" / f"polygon_{p:03d}" / f"month_{m:02d}").glob("*.nc"))
            want = reference(paths)
            got = cube.sel(polygon=p, month=m).drop_vars(["polygon", "month"])
            for name in ("DIC", "ALK", "injection_rate", *want.coords):  # the root attributes are the first file's
                xr.testing.assert_identical(got[name], want[name])


def test_rebuild_keeps_history_and_duplicates_nothing(workdir: Path) -> None:
    files = [write_nc4(workdir / "archive" / f"d{t}.nc", dataset(t)) for t in range(3)]
    spec = make_spec(workdir, "d*.nc")
    first = run_cube(spec)
    before = [s.id for s in open_repo(spec).ancestry(branch="main")]
    second = run_cube(spec)
    after = [s.id for s in open_repo(spec).ancestry(branch="main")]
    assert second.snapshot != first.snapshot and first.snapshot in after and len(after) > len(before)
    xr.testing.assert_identical(read_cube(spec).load(), reference(files))
    xr.testing.assert_identical(read_cube(spec, snapshot=first.snapshot).load(), reference(files))
    assert locations(spec) == {file_url(f) for f in files}


# -- a build reads each next batch back from the spool while the batch before it commits --------------


def test_each_batch_after_the_first_is_made_ahead_once_and_used(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[int, str]] = []
    original = lib.staging.batch_work

    def batch_work(*args: Any) -> Any:
        made.append((args[2], threading.current_thread().name))
        return original(*args)

    monkeypatch.setattr(lib.staging, "batch_work", batch_work)
    spec = _demo(workdir)
    summary = run_cube(spec)
    assert summary.exit_code == 0 and summary.ingested == 12
    # the first batch is made in place; the next two while the one before commits, and never again
    assert [b for b, _ in made] == [0, 1, 2]
    assert made[0][1] == threading.main_thread().name
    assert all(name.startswith("icefloe-next-batch") for _, name in made[1:])
    _same_as_files(workdir, spec)


def test_work_that_failed_ahead_is_made_again_in_its_own_batch(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failed: list[int] = []
    original = lib.staging.batch_work

    def batch_work(*args: Any) -> Any:
        if threading.current_thread() is not threading.main_thread() and not failed:
            failed.append(args[2])
            raise OSError("the spool could not be read just now")
        return original(*args)

    monkeypatch.setattr(lib.staging, "batch_work", batch_work)
    spec = _demo(workdir)
    summary = run_cube(spec)
    assert failed == [1]
    assert summary.exit_code == 0 and summary.ingested == 12 and summary.refs > 0
    _same_as_files(workdir, spec)
