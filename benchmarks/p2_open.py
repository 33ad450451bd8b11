"""P2 open time: opening the cube (repository open + xr.open_zarr) vs xr.open_mfdataset on the same
files, at 1,000 files; and opening a synthetic 500,000-file cube (its refs point into a few real
files). Each figure is the median of fresh processes, imports excluded from the timed part (dask too,
which ``xr.open_zarr``'s default ``chunks={}`` would otherwise import inside the first open: ~1 s here).

    python benchmarks/p2_open.py
"""

from __future__ import annotations

import json
import shutil
import statistics
import textwrap

from benchmarks.common import BIN, WORK, log, python, run_measured, save
from benchmarks.generate import generate

OPEN_CUBE = textwrap.dedent("""
    import sys, time, json
    import icechunk, xarray as xr
    import dask.array  # xr.open_zarr's default chunks={} imports dask lazily: an import, outside the timing
    repo_dir, prefix = sys.argv[1], sys.argv[2]
    t = time.perf_counter()
    creds = icechunk.containers_credentials({prefix: icechunk.credentials.LocalFileSystemAccess})
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(repo_dir), authorize_virtual_chunk_access=creds)
    ds = xr.open_zarr(repo.readonly_session("main").store, consolidated=False)
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "sizes": dict(ds.sizes)}))
""")

OPEN_MF = textwrap.dedent("""
    import sys, time, json, glob
    import xarray as xr
    import dask.array  # as for the cube: imports stay outside the timing
    root = sys.argv[1]
    months = sorted(glob.glob(root + "/polygon_000/month_*"))
    nested = [sorted(glob.glob(m + "/*.nc")) for m in months]
    t = time.perf_counter()
    ds = xr.open_mfdataset(nested, combine="nested", concat_dim=["month", "time"], engine="h5netcdf",
                           data_vars="all", coords="minimal", compat="override", parallel=False)
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "sizes": dict(ds.sizes)}))
""")

SYNTHETIC = textwrap.dedent("""
    import sys, numpy as np, zarr
    from pathlib import Path
    from lib.local.archive import DemoShape, write_step
    from lib.parsing import ParseOptions
    from lib.parsing.hdf5 import parse_hdf5
    from lib.storage import source_registry, checksum_for
    from lib.spec import load_spec
    from lib.validation import schema_of
    from lib.layout import Axes
    from lib.assembly import prepare_arrays
    from lib.ledger import write_schema
    from lib.repository import open_repository
    import datetime as dt, os
    work, polygons, months, steps = Path(sys.argv[1]), *map(int, sys.argv[2:5])
    tiles = [write_step(work / "src" / f"t{i}.nc", 0, 1, 0, DemoShape()) for i in range(4)]
    spec = load_spec(f"name: p2\\nsource: {{url: 'file://{work}/src/', pattern: '*.nc'}}\\nconcat: [time]\\n"
                     f"repo: {{url: 'file://{work}/repo'}}\\n")
    reg = source_registry(f"file://{work}/src/")
    frags = [parse_hdf5(f"file://{t}", reg, ParseOptions(concat=("time",))) for t in tiles]
    schema = schema_of(frags[0], {"polygon": "int", "month": "int"}, ("time",))
    schema.concat_encoding = {"time": {"units": "days since 2000-01-01", "calendar": "proleptic_gregorian", "dtype": "<i8"}}
    axes = Axes(pattern={"polygon": list(range(polygons)), "month": list(range(1, months + 1))},
                concat={"time": np.arange(steps, dtype="i8")})
    repo = open_repository(spec, create=True)
    session = repo.writable_session("main")
    prepare_arrays(session.store, schema, axes, fresh=True)
    write_schema(session.store, schema)
    n = 0
    for p in range(polygons):
        for m in range(months):
            f = frags[(p + m) % len(frags)]
            tile = tiles[(p + m) % len(frags)]
            check = checksum_for(f"file://{tile}", None, dt.datetime.fromtimestamp(os.stat(tile).st_mtime, dt.UTC))
            for name in ("DIC", "ALK"):
                a = f.arrays[name]
                grid = a.lengths.shape  # (1, 1, 2, 2): one step; the cell's steps in one call
                offsets = np.tile(a.offsets.ravel(), steps)
                lengths = np.tile(a.lengths.ravel(), steps)
                session.store.set_virtual_refs_arr(name, (1, 1, steps, *grid[1:]), [f"file://{tile}"] * offsets.size,
                                                   offsets, lengths, arr_offset=(p, m, 0, 0, 0, 0), checksum=check)
            n += steps
        if p % 10 == 9:
            session.commit(f"synthetic polygons up to {p}")
            session = repo.writable_session("main")
    session.commit("synthetic cube") if session.has_uncommitted_changes else None
    print(n)
""")


def median_open(code: str, args: list[str], runs: int) -> dict:
    times, sizes = [], None
    for _ in range(runs):
        m = run_measured([*python(code), *args], env={"ICECHUNK_LOG": "error"})
        assert m.returncode == 0, m.stderr[-3000:]
        out = json.loads(m.stdout.strip().splitlines()[-1])
        times.append(out["seconds"])
        sizes = out["sizes"]
    return {"median_seconds": statistics.median(times), "runs": times, "sizes": sizes}


def main() -> None:
    results: dict[str, dict] = {}
    root = (WORK / "archive1k").resolve()
    log("1,000-file archive (1 polygon x 10 months x 100 steps)")
    generate(root, 1, 10, 100)
    cube = (WORK / "p2" / "cube1k").resolve()
    shutil.rmtree(cube.parent, ignore_errors=True)
    cube.parent.mkdir(parents=True)
    spec = cube.parent / "cube.yaml"
    spec.write_text(
        f'name: p2\nsource:\n  url: file://{root}/\n  pattern: "polygon_{{polygon:d}}/month_{{month:d}}/'
        f'step_*.nc"\nconcat: [time]\nrepo:\n  url: file://{cube}\n'
    )
    m = run_measured([str(BIN / "icefloe"), "build", str(spec), "--json"])
    assert m.returncode == 0, m.stderr[-3000:]
    results["icefloe_open_1k"] = median_open(OPEN_CUBE, [str(cube), f"file://{root}/"], 7)
    results["xarray_open_mfdataset_1k"] = median_open(OPEN_MF, [str(root)], 3)
    log(
        f"1k: icefloe {results['icefloe_open_1k']['median_seconds']:.3f} s, "
        f"open_mfdataset {results['xarray_open_mfdataset_1k']['median_seconds']:.2f} s"
    )

    synth = (WORK / "p2" / "synthetic").resolve()
    log("synthetic 500,000-file cube (50 polygons x 100 months x 100 steps)")
    m = run_measured([*python(SYNTHETIC), str(synth), "50", "100", "100"], env={"ICECHUNK_LOG": "error"})
    assert m.returncode == 0, m.stderr[-3000:]
    results["synthetic_build"] = {"files": int(m.stdout.strip().splitlines()[-1]), "seconds": m.seconds}
    results["icefloe_open_500k"] = median_open(OPEN_CUBE, [str(synth / "repo"), f"file://{synth}/src/"], 7)
    log(f"500k: icefloe {results['icefloe_open_500k']['median_seconds']:.3f} s")
    results["ratio_open_mfdataset_over_icefloe_1k"] = (
        results["xarray_open_mfdataset_1k"]["median_seconds"] / results["icefloe_open_1k"]["median_seconds"]
    )
    out = save("p2_open", {"results": results, "target_seconds": 0.3, "command": "python -m benchmarks.p2_open"})
    log(f"wrote {out}")
    shutil.rmtree(WORK / "p2", ignore_errors=True)


if __name__ == "__main__":
    main()
