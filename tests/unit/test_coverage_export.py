"""Coverage of a cube with known holes, the PNG map, and Kerchunk references that open like the cube."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from lib.coverage import coverage_markdown, coverage_png, measure_coverage
from lib.export import export_kerchunk
from tests.helpers import dataset, make_spec, open_repo, read_cube, run_cube, write_nc4


@pytest.fixture
def holey(workdir: Path) -> object:
    for member, days in ((1, range(4)), (2, range(2)), (3, (0, 2))):
        for day in days:
            write_nc4(workdir / "archive" / f"m{member}" / f"d{day}.nc", dataset(day, seed=member, scalar=1.0))
    (workdir / "archive" / "m2" / "d9.nc").write_bytes(b"not netCDF")
    spec = make_spec(workdir, "m{member:d}/d*.nc", extra="checks:\n  regular: []\n")
    assert run_cube(spec).exit_code == 3
    return spec


def test_coverage_of_a_cube_with_known_holes(holey: object) -> None:
    cov = measure_coverage(open_repo(holey), holey)  # type: ignore[arg-type]
    assert cov.dims == ["member"] and cov.labels == [[1, 2, 3]] and cov.axis_length == 4
    np.testing.assert_array_equal(cov.fraction, [1.0, 0.5, 0.5])
    np.testing.assert_array_equal(cov.quarantined, [0, 1, 0])
    assert cov.missing == {(2,): [2, 3], (3,): [1, 3]}
    t = cov.totals
    assert t["objects"] == 8 and t["refs"] == 8 * 4 and t["quarantined"] == 1
    assert t["source_bytes"] > 0 and t["repo_bytes"] > 0 and t["overhead_percent"] > 0
    report = coverage_markdown(cov)
    assert "| 100% | **50%** (1 q) | **50%** |" in report and "{'member': 2}: 2, 3" in report


def test_coverage_png_is_a_real_image(holey: object, tmp_path: Path) -> None:
    import matplotlib.image

    png = coverage_png(measure_coverage(open_repo(holey), holey))  # type: ignore[arg-type]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    height, width = image.shape[:2]
    assert height >= 200 and width >= 300 and image.shape[2] in (3, 4)
    assert "data:image/png;base64," in coverage_markdown(measure_coverage(open_repo(holey), holey), png)  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_kerchunk_export_opens_like_the_cube(holey: object, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"refs{suffix}"
    done = export_kerchunk(open_repo(holey), holey, out)  # type: ignore[arg-type]
    assert {"time", "lat", "lon", "member", "height"} <= set(done["inlined"])
    refs = xr.open_dataset(
        "reference://",
        engine="zarr",
        chunks=None,
        backend_kwargs={"consolidated": False, "storage_options": {"fo": str(out)}},
    )
    xr.testing.assert_identical(refs.load(), read_cube(holey).load())  # type: ignore[arg-type]


def test_kerchunk_export_refuses_other_formats(holey: object, tmp_path: Path) -> None:
    from lib.errors import IcefloeError

    with pytest.raises(IcefloeError, match=r"\.json file or a \.parquet directory"):
        export_kerchunk(open_repo(holey), holey, tmp_path / "refs.txt")  # type: ignore[arg-type]
