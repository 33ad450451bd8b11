"""Nativized coordinates: opening the cube then needs no source file, and values are unchanged."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
import xarray as xr

from lib.ledger import read_schema
from lib.runs import nativize_cube
from tests.helpers import dataset, make_spec, open_repo, read_cube, run_cube, write_nc4


def write_days(workdir: Path, days: range) -> list[Path]:
    return [write_nc4(workdir / "archive" / f"d{t:02d}.nc", dataset(t, scalar=1.0)) for t in days]


def test_nativize_an_existing_cube(workdir: Path) -> None:
    files = write_days(workdir, range(3))
    spec = make_spec(workdir, "d*.nc", extra="variables: {native: none}\n")
    assert run_cube(spec).exit_code == 0
    schema = read_schema(open_repo(spec).readonly_session(branch="main").store)
    assert {p for p, v in schema.variables.items() if v.kind == "virtual"} == {"tas", "lat", "lon", "height"}
    before = read_cube(spec).load()

    done = nativize_cube(spec, str(uuid.uuid4()))
    assert done["nativized"] == ["lat", "lon"] and done["published"]
    after = read_cube(spec).load()
    xr.testing.assert_identical(after, before)

    # new files still land, their lat/lon now loaded natively and compared by value
    write_days(workdir, range(3, 5))
    summary = run_cube(spec, "ingest")
    assert summary.exit_code == 0 and summary.ingested == 2

    shutil.move(workdir / "archive", workdir / "moved")
    cube = read_cube(spec)  # opening reads no source file any more
    assert cube.lat.values.tolist() == before.lat.values.tolist()
    with pytest.raises(Exception):  # noqa: B017 - the data itself is still only referenced
        cube.tas.load()
    del files


def test_nativize_as_a_build_option(workdir: Path) -> None:
    files = write_days(workdir, range(2))
    spec = make_spec(workdir, "d*.nc", extra="variables: {native: none, nativize: true}\n")
    summary = run_cube(spec)
    assert summary.exit_code == 0 and any("stored natively: lat, lon" in n for n in summary.notes)
    ref = xr.concat([xr.open_dataset(f).load() for f in files], dim="time", data_vars="minimal")
    xr.testing.assert_identical(read_cube(spec).load(), ref)
