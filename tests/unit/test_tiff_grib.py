"""TIFF/GeoTIFF (virtual-tiff) and GRIB2 (gribberish) sources, detected by magic bytes, round-tripped
against tifffile and cfgrib reads of the same files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import xarray as xr

from tests.helpers import file_url, locations, make_spec, read_cube, run_cube


def write_tiff(path: Path, seed: int, **kw: object) -> np.ndarray:
    import tifffile

    data = np.random.default_rng(seed).integers(0, 4000, (48, 64), dtype=np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, **kw)  # type: ignore[arg-type]
    return data


def write_grib(path: Path, when: dt.datetime, seed: int) -> np.ndarray:
    import eccodes

    values = 270 + 30 * np.random.default_rng(seed).random(32)
    handle = eccodes.codes_grib_new_from_samples("regular_ll_sfc_grib2")
    try:
        for key, value in (
            ("Ni", 8),
            ("Nj", 4),
            ("latitudeOfFirstGridPointInDegrees", 30.0),
            ("latitudeOfLastGridPointInDegrees", 0.0),
            ("longitudeOfFirstGridPointInDegrees", 0.0),
            ("longitudeOfLastGridPointInDegrees", 70.0),
            ("iDirectionIncrementInDegrees", 10.0),
            ("jDirectionIncrementInDegrees", 10.0),
            ("dataDate", int(when.strftime("%Y%m%d"))),
            ("dataTime", when.hour * 100),
        ):
            eccodes.codes_set(handle, key, value)
        eccodes.codes_set_values(handle, values)
        values = np.asarray(eccodes.codes_get_values(handle))  # what the packing keeps of them
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            eccodes.codes_write(handle, f)
    finally:
        eccodes.codes_release(handle)
    return values


def test_tiff_scenes_tiled_and_striped(workdir: Path) -> None:
    import tifffile

    tiled = {
        s: write_tiff(workdir / "archive" / f"scene_{s}.tif", s, tile=(16, 16), compression="zlib") for s in range(3)
    }
    spec = make_spec(workdir, "scene_{scene:d}.tif", concat="[]")
    summary = run_cube(spec)
    assert summary.exit_code == 0 and summary.dims == {"scene": 3, "y": 48, "x": 64}
    cube = read_cube(spec).load()
    for s, data in tiled.items():
        np.testing.assert_array_equal(
            cube["0"].sel(scene=s).values, tifffile.imread(workdir / "archive" / f"scene_{s}.tif")
        )
        np.testing.assert_array_equal(cube["0"].sel(scene=s).values, data)
    assert locations(spec) == {file_url(workdir / "archive" / f"scene_{s}.tif") for s in tiled}

    striped = workdir / "archive" / "scene_3.tif"
    write_tiff(striped, 3)  # uncompressed strips: another chunking, so it cannot join this cube
    summary = run_cube(spec, "ingest")
    assert [q["url"] for q in summary.quarantined] == [file_url(striped)]
    assert "has chunks" in summary.quarantined[0]["reason"] and "'0'" in summary.quarantined[0]["reason"]


def test_grib2_messages_along_time(workdir: Path) -> None:
    start = dt.datetime(2024, 1, 1)
    files = {}
    for hour in range(3):
        when = start + dt.timedelta(hours=6 * hour)
        files[when] = write_grib(workdir / "archive" / f"t_{hour}.grib2", when, hour)
    spec = make_spec(workdir, "t_*.grib2")
    summary = run_cube(spec)
    assert summary.exit_code == 0, summary
    assert summary.dims["time"] == 3 and summary.dims["latitude"] == 4 and summary.dims["longitude"] == 8
    cube = read_cube(spec).load()
    for hour, when in enumerate(files):
        ref = xr.open_dataset(
            workdir / "archive" / f"t_{hour}.grib2", engine="cfgrib", backend_kwargs={"indexpath": ""}
        ).load()
        got = cube["tmp"].sel(time=np.datetime64(when, "ns"))
        # ecCodes decodes to float64 exactly as gribberish does; cfgrib then hands out float32
        np.testing.assert_array_equal(got.values.ravel(), files[when])
        np.testing.assert_array_equal(got.values.astype(ref["t"].dtype), ref["t"].values)
        np.testing.assert_array_equal(got.latitude.values, ref.latitude.values)
        np.testing.assert_array_equal(got.longitude.values, ref.longitude.values)


def test_truncated_tiff_and_grib_are_quarantined(workdir: Path) -> None:
    good = workdir / "archive" / "scene_0.tif"
    write_tiff(good, 0, tile=(16, 16))
    bad = workdir / "archive" / "scene_1.tif"
    bad.write_bytes(good.read_bytes()[:200])
    summary = run_cube(make_spec(workdir, "scene_{scene:d}.tif", concat="[]"))
    assert [q["url"] for q in summary.quarantined] == [file_url(bad)]
    assert "scene_1.tif" in summary.quarantined[0]["reason"] and "tiff" in summary.quarantined[0]["reason"]
    assert summary.ingested == 1
