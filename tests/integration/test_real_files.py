"""Real files and real mistakes, through the command: no input ends in an internal error, nothing in
a source disappears silently, and what lands equals the file read by its own library."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from tests.helpers import file_url, icefloe_json, load_spec, open_repo, write_nc4
from tests.realfiles import CASES
from tests.unit.test_hostile_inputs import CORPUS, good

pytestmark = pytest.mark.integration


def case_spec(tmp_path: Path, pattern: str, concat: str, extra: str = "") -> Path:
    path = tmp_path / "cube.yaml"
    path.write_text(
        f'name: case\nsource:\n  url: file://{tmp_path / "archive"}/\n  pattern: "{pattern}"\n'
        f"concat: {concat}\nrepo:\n  url: file://{tmp_path / 'cube'}\n"
        f"execution: {{executor: threads, workers: 2}}\n"
        f"checks:\n  regular: []\n  spot_check: {{files: all, chunks_per_variable: 4}}\n{extra}"
    )
    return path


def build(tmp_path: Path, case: str) -> tuple[int, dict]:
    archive = tmp_path / "archive"
    archive.mkdir()
    pattern, concat = CASES[case](archive)
    code, out = icefloe_json("build", str(case_spec(tmp_path, pattern, concat)))
    assert not str(out.get("error", "")).startswith("internal"), out["error"]
    return code, out


def cube(tmp_path: Path, **kw: object) -> xr.Dataset:
    spec = load_spec(tmp_path / "cube.yaml")
    store = open_repo(spec).readonly_session(branch="main").store
    return xr.open_zarr(store, consolidated=False, chunks=None, **kw).load()  # type: ignore[arg-type]


def only(out: dict, key: str) -> list[str]:
    return [item["url"].rsplit("/", 1)[-1] for item in out[key]]


@pytest.mark.usefixtures("prefect_server")
def test_a_climatology_lands_with_a_note_to_open_it_without_decoding_times(tmp_path: Path) -> None:
    code, out = build(tmp_path, "climatology, one file")
    assert code == 0 and out["ingested"] == 1 and not out["quarantined"] and not out["skipped"], out
    assert any("decode_times=False" in n and "'time'" in n for n in out["notes"]), out["notes"]
    source = xr.open_dataset(tmp_path / "archive" / "clim0.nc", decode_times=False).load()
    xr.testing.assert_identical(cube(tmp_path, decode_times=False)[["sst", "time"]], source[["sst", "time"]])


@pytest.mark.usefixtures("prefect_server")
def test_a_concat_coordinate_that_cannot_be_decoded_quarantines_its_file(tmp_path: Path) -> None:
    code, out = build(tmp_path, "climatology along time")
    assert code == 1 and out["error"].startswith("every one of the 2 pending object(s) was quarantined"), out
    for item in out["quarantined"]:
        assert re.search(
            r"coordinate 'time' in '.*clim\d\.nc' cannot be decoded \(units 'hour since 0000-01-01'\)", item["reason"]
        )
    assert not (tmp_path / "cube").exists()  # a run that publishes nothing leaves no repository behind


@pytest.mark.usefixtures("prefect_server")
def test_a_header_only_netcdf3_file_lands_as_stored(tmp_path: Path) -> None:
    from scipy.io import netcdf_file

    code, out = build(tmp_path, "header-only netCDF-3")
    assert code == 0 and out["ingested"] == 1, out
    assert any("decode_times=False" in n for n in out["notes"]), out["notes"]
    got = cube(tmp_path, decode_times=False)
    with netcdf_file(tmp_path / "archive" / "header.nc", "r", mmap=False, maskandscale=False) as f:
        for name in ("time", "sst"):
            np.testing.assert_array_equal(got[name].values, f.variables[name][:])


@pytest.mark.usefixtures("prefect_server")
def test_a_fill_value_xarray_cannot_decode_leaves_its_variable_out_with_the_reason(tmp_path: Path) -> None:
    code, out = build(tmp_path, "one-byte string fill value")
    assert code == 0 and out["ingested"] == 2 and not out["quarantined"], out
    assert {(s["variable"], s["url"].rsplit("/", 1)[-1]) for s in out["skipped"]} == {
        ("flag", "d00.nc"),
        ("flag", "d01.nc"),
    }
    assert all("Failed to decode fill_value" in s["reason"] for s in out["skipped"]), out["skipped"]
    got = cube(tmp_path)
    assert "flag" not in got
    for t in range(2):
        with h5py.File(tmp_path / "archive" / f"d{t:02d}.nc") as f:
            np.testing.assert_array_equal(got.tas.isel(time=[t]).values, f["tas"][...])


@pytest.mark.usefixtures("prefect_server")
def test_a_table_no_reader_could_decode_is_left_out_and_the_image_lands(tmp_path: Path) -> None:
    from astropy.io import fits

    code, out = build(tmp_path, "FITS ASCII table")
    assert code == 0 and out["ingested"] == 1, out
    [skipped] = out["skipped"]
    assert (
        "virtualizarr.fits_ascii_table" in skipped["reason"]
        and "a reader of the cube could not decode it" in skipped["reason"]
    )
    with fits.open(tmp_path / "archive" / "obs.fits") as hdus:
        np.testing.assert_array_equal(cube(tmp_path)["PRIMARY"].values, hdus[0].data)


@pytest.mark.usefixtures("prefect_server")
def test_geotiff_bands_land_or_are_quarantined_with_the_reason(tmp_path: Path) -> None:
    import tifffile

    (tmp_path / "planar").mkdir()
    code, out = build(tmp_path / "planar", "GeoTIFF bands, planar")
    assert code == 0 and out["ingested"] == 1, out
    got = cube(tmp_path / "planar")
    [name] = [v for v in got.data_vars]
    np.testing.assert_array_equal(got[name].values, tifffile.imread(tmp_path / "planar" / "archive" / "bands.tif"))
    (tmp_path / "rgb").mkdir()
    code, out = build(tmp_path / "rgb", "GeoTIFF bands, interleaved")
    if code == 0:  # the parser takes interleaved bands: they must equal the file
        got = cube(tmp_path / "rgb")
        [name] = [v for v in got.data_vars]
        np.testing.assert_array_equal(
            np.squeeze(got[name].values), tifffile.imread(tmp_path / "rgb" / "archive" / "rgb.tif")
        )
    else:  # or every object was refused, each with a reason naming it: nothing published, no repository
        assert code == 1 and only(out, "quarantined") == ["rgb.tif"] and "rgb.tif" in out["quarantined"][0]["reason"]
        assert not (tmp_path / "rgb" / "cube").exists()


@pytest.mark.usefixtures("prefect_server")
def test_variables_that_were_never_written_land_as_their_fill_values(tmp_path: Path) -> None:
    code, out = build(tmp_path, "variables never written")
    assert code == 0 and out["ingested"] == 2 and not out["skipped"] and not out["quarantined"], out
    got = cube(tmp_path)
    assert {"depth", "never", "never_contiguous", "sst"} <= set(got.variables)
    for t in range(2):
        with h5py.File(tmp_path / "archive" / f"u{t}.nc") as f:
            np.testing.assert_array_equal(got["depth"].values, f["depth"][...])  # h5py reads the fill value
            for name in ("sst", "never", "never_contiguous"):
                np.testing.assert_array_equal(got[name].isel(time=[t]).values, f[name][...])


@pytest.mark.usefixtures("prefect_server")
def test_a_file_with_nothing_referenceable_is_quarantined_with_every_reason(tmp_path: Path) -> None:
    code, out = build(tmp_path, "nothing referenceable")
    assert code == 3 and out["ingested"] == 3 and only(out, "quarantined") == ["d09.nc"], out
    reason = out["quarantined"][0]["reason"]
    assert reason.startswith("nothing in '") and "'tas': a compound" in reason and "'ragged': variable-length" in reason
    got = cube(tmp_path)
    for t in range(3):
        with h5py.File(tmp_path / "archive" / f"d{t:02d}.nc") as f:
            np.testing.assert_array_equal(got.tas.isel(time=[t]).values, f["tas"][...])


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_no_bad_input_ends_in_an_internal_error(tmp_path: Path, kind: str) -> None:
    """Every fixture of the hostile-input corpus through ``icefloe build --json``."""
    make, _, _ = CORPUS[kind]
    archive = tmp_path / "archive"
    archive.mkdir()
    for t in range(4):
        write_nc4(archive / f"d{t:02d}.nc", good(day=t))
    make(archive / "d99.nc")
    code, out = icefloe_json("build", str(case_spec(tmp_path, "d*.nc", "[time]")))
    assert not str(out.get("error", "")).startswith("internal"), out["error"]
    assert code in (0, 3), out
    assert out["discovered"] == out["ingested"] + out["unchanged"] + len(out["changed"]) + len(out["quarantined"])
    assert file_url(archive / "d99.nc") in {q["url"] for q in out["quarantined"]} or out["ingested"] == 5, out
