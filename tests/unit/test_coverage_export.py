"""Coverage of a cube with known holes, the PNG map, and Kerchunk references that open like the cube."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from lib.coverage import Coverage, _binned, coverage_markdown, coverage_png, folded, measure_coverage
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


def test_the_map_of_a_large_cube_bins_its_cells() -> None:
    """50 polygons x 100 months: at most 40 x 40 squares, each the mean of the cells it bins (counts
    summed), labelled by its first and last value; the image stays small."""
    import matplotlib.image

    fraction = np.ones((50, 100))
    fraction[7, 33] = 0.5  # one cell half present: its bin (polygons 6-7, months 34-36) shows the mean
    quarantined = np.zeros((50, 100), dtype=np.int64)
    quarantined[49, 99] = 2
    cov = Coverage(
        ["polygon", "month"],
        [list(range(50)), list(range(1, 101))],
        fraction,
        quarantined,
        100,
        totals={"concat_dim": "time", "snapshot": "S", "written_at": "T"},
    )
    frac, quar, _, rows, cols, _, _ = _binned(*folded(cov))
    assert frac.shape == (25, 34) and len(rows) == 25 and len(cols) == 34
    assert rows[3] == "6-7" and cols[11] == "34-36" and cols[-1] == "100"
    assert frac[3, 11] == pytest.approx(1 - 0.5 / 6) and (frac == 1).sum() == frac.size - 1
    assert quar[24, 33] == 2 and quar.sum() == 2
    image = matplotlib.image.imread(io.BytesIO(coverage_png(cov)), format="png")
    assert image.shape[0] < 1500 and image.shape[1] < 2500


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


def _months(workdir: Path, bad: set[int]) -> None:
    for i in range(12):
        when = np.datetime64(f"2000-{i + 1:02d}-01", "ns")
        ds = dataset(i).assign_coords(time=[when])
        write_nc4(workdir / "archive" / "m1" / f"d{i:02d}.nc", ds, chunks=(1, 4, 6) if i in bad else (1, 2, 3))


def test_refused_and_waiting_months_are_holes_never_100_percent(workdir: Path) -> None:
    _months(workdir, bad={2, 4, 6, 8, 10})
    spec = make_spec(workdir, "m{member:d}/d*.nc", extra="checks:\n  regular: []\n")
    s = run_cube(spec)
    assert (s.ingested, len(s.quarantined)) == (7, 5)
    cov = measure_coverage(open_repo(spec), spec)
    assert cov.axis_length == 12 and cov.missing == {(1,): [2, 4, 6, 8, 10]}
    np.testing.assert_allclose(cov.fraction, [7 / 12])
    np.testing.assert_array_equal(cov.quarantined, [5])
    waiting = make_spec(workdir, "m{member:d}/d*.nc", name="waiting")  # the default: time is regular
    s = run_cube(waiting)
    assert (s.ingested, len(s.quarantined), len(s.deferred)) == (2, 5, 5)
    cov = measure_coverage(open_repo(waiting), waiting)
    np.testing.assert_allclose(cov.fraction, [2 / 12])
    np.testing.assert_array_equal(cov.deferred, [5])
    assert [w["url"].rsplit("/", 1)[-1] for w in cov.waiting] == [f"d{i:02d}.nc" for i in (3, 5, 7, 9, 11)]
    assert all(w["since"] and w["waited"] for w in cov.waiting)
    report = coverage_markdown(cov)
    assert "**17%** (5 q) (5 waiting)" in report and "Waiting for a gap on their axis to fill" in report
    assert f"snapshot `{open_repo(waiting).lookup_branch('main')}`" in report


def test_status_of_a_cube_never_published_says_so(workdir: Path) -> None:
    from lib.errors import IcefloeError
    from lib.repository import open_repository

    _months(workdir, bad=set())
    spec = make_spec(
        workdir,
        "m{member:d}/d*.nc",
        extra="checks:\n  expectations:\n    - {type: expect_column_values_to_be_between, variable: member, "
        "kwargs: {min_value: 5, max_value: 6}}\n",
    )
    s = run_cube(spec)  # the first build: every file refused by the expectation
    assert s.exit_code == 1 and not s.published
    repo = open_repository(spec)
    if repo is not None:  # nothing was written, or only what never reached main
        with pytest.raises(IcefloeError, match=r"no cube has been published at .* yet"):
            measure_coverage(repo, spec)
