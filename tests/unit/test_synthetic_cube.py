"""The synthetic cube the large benchmarks (P6) measure against: it must be what a build of that many
tiles leaves, so that an ingest into it touches and proves what it would on a real cube."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from benchmarks.synthetic import write_synthetic_cube
from lib.ledger_index import LedgerIndex
from lib.local.archive import DemoShape, step_path, write_step
from lib.spec import load_spec
from tests.helpers import open_repo, read_cube, run_cube, spec_text

TILE = DemoShape(polygons=1, months=1, steps=1)


def test_a_synthetic_cube_takes_an_ingest_like_a_built_one(workdir: Path) -> None:
    source = workdir / "archive"
    for t in (0, 1):  # the template tiles: the only objects that exist
        write_step(step_path(source, 0, 1, t), 0, 1, t, TILE)
    spec = load_spec(spec_text(source, workdir / "cube", "polygon_{polygon:d}/month_{month:d}/step_*.nc"))

    out = write_synthetic_cube(spec, polygons=2, months=3, steps=4, batch_files=5, log=lambda *a: None)

    cube = read_cube(spec)
    assert out["objects"] == 24
    assert (cube.sizes["polygon"], cube.sizes["month"], cube.sizes["time"]) == (2, 3, 4)
    index = LedgerIndex(open_repo(spec).readonly_session(branch="main").store)
    assert len(index) == 24 and {r.status for r in index.rows()} == {"ingested"}
    # every object has its own location, as a real build's manifests hold them
    locations = set(open_repo(spec).readonly_session(branch="main").all_virtual_chunk_locations())
    assert len(locations) == 24

    # the next step of cell (0, 1) lands like a new object in any cube; the two real tiles are
    # recorded at their real ETags, so the ingest leaves them be (the other objects do not exist)
    write_step(step_path(source, 0, 1, 4), 0, 1, 4, TILE)
    summary = run_cube(spec, "ingest")
    assert summary.exit_code == 0 and summary.ingested == 1
    cube = read_cube(spec)
    assert cube.sizes["time"] == 5
    for t in (0, 1, 4):
        with xr.open_dataset(step_path(source, 0, 1, t)) as f:
            got = cube.sel(polygon=0, month=1).sel(time=f.time)
            for name in f.data_vars:
                np.testing.assert_array_equal(got[name].values, f[name].values, err_msg=f"{name} at step {t}")
