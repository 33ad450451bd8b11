"""P8 native copies: what a time-series copy costs to make and keep, and what it buys readers.

    python -m benchmarks.p8_native_copy [--polygons 5 --months 20 --steps 100 --workers 2]

On the 10,000-tile benchmark archive (``benchmarks/generate.py``), built into a virtual cube:

* **make**: ``rechunk_cube`` writes a copy of DIC chunked ``{time: 100, lat: 16, lon: 16}`` over the
  processes executor, side by side with the baseline in the same run: xarray + dask ``to_zarr`` of the
  same variable, read through the same virtual cube, into the same chunks and codec. Wall time, MB/s
  (uncompressed bytes of the variable) and peak RSS of each whole process tree.
* **read**: one point's time series (one cell: every step; every cell of a polygon: every month and
  step) and one full map at one step, through the virtual arrays and through the copy, as a reader
  would (``xr.open_zarr``), best of 3 with a fresh open each time.
* **keep**: one more step for every cell (1 % more time steps) ingested; the copy's units rewritten
  and their bytes, against the copy's size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BIN, WORK, log, python, run_measured, save
from benchmarks.generate import generate

COPY = "native_copies:\n  - {name: dic_ts, variables: [DIC], chunks: {time: 100, lat: 16, lon: 16}}\n"

OURS = """
import json, sys, time
from lib.spec import load_spec
from lib.runs import rechunk_cube
start = time.perf_counter()
done = rechunk_cube(load_spec(sys.argv[1]), "p8")
print(json.dumps({"seconds": time.perf_counter() - start, **done}))
"""

BASELINE = """
import json, sys, time
import dask, xarray as xr
from zarr.codecs import ZstdCodec
from lib.spec import load_spec
from lib.repository import open_repository
spec = load_spec(sys.argv[1])
start = time.perf_counter()
store = open_repository(spec).readonly_session(branch="main").store
ds = xr.open_zarr(store, consolidated=False, chunks={})[["DIC"]]  # dask chunks = the source chunks
ds = ds.chunk({"time": 100, "lat": 16, "lon": 16})
for v in ds.variables.values():
    v.encoding = {}
chunks = tuple(c[0] for c in ds.DIC.chunks)
with dask.config.set(scheduler="threads", num_workers=int(sys.argv[3])):
    ds.to_zarr(sys.argv[2], mode="w", zarr_format=3, consolidated=False,
               encoding={"DIC": {"chunks": chunks, "compressors": [ZstdCodec(level=3)]}})
print(json.dumps({"seconds": time.perf_counter() - start, "bytes": int(ds.DIC.nbytes), "chunks": chunks}))
"""


def _reads(spec_path: Path, repeats: int = 3) -> dict[str, Any]:
    """Reader timings through the virtual arrays and the copy (best of ``repeats``), values compared."""
    import numpy as np
    import xarray as xr

    from lib.repository import open_repository
    from lib.spec import load_spec

    spec = load_spec(spec_path)
    repo = open_repository(spec)
    assert repo is not None
    store = repo.readonly_session(branch="main").store
    reads = {
        "series_one_cell": {"polygon": 0, "month": 0, "depth": 0, "lat": 8, "lon": 8},
        "series_one_polygon": {"polygon": 0, "depth": 0, "lat": 8, "lon": 8},
        "map_one_step": {"polygon": 0, "month": 0, "time": 0},
    }
    out: dict[str, Any] = {}
    for name, where in reads.items():
        row: dict[str, Any] = {}
        values = {}
        for side, group in (("virtual", None), ("native", "dic_ts")):
            best = float("inf")
            for _ in range(repeats):
                ds = xr.open_zarr(store, group=group, consolidated=False, chunks=None)
                start = time.perf_counter()
                values[side] = ds.DIC.isel(where).values
                best = min(best, time.perf_counter() - start)
            chunks = ds.DIC.encoding["chunks"]
            touched = 1
            for dim, size, chunk in zip(ds.DIC.dims, ds.DIC.shape, chunks, strict=True):
                touched *= 1 if dim in where else -(-size // chunk)
            row[f"{side}_seconds"], row[f"{side}_chunks"] = best, touched
        assert np.array_equal(values["virtual"], values["native"], equal_nan=True), name
        row["values"] = int(values["virtual"].size)
        row["native_speedup"] = row["virtual_seconds"] / row["native_seconds"]
        out[name] = row
        log(
            f"{name}: virtual {row['virtual_seconds'] * 1000:.1f} ms ({row['virtual_chunks']} chunks), native "
            f"{row['native_seconds'] * 1000:.1f} ms ({row['native_chunks']}): {row['native_speedup']:.1f}x"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--polygons", type=int, default=5)
    ap.add_argument("--months", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    n = a.polygons * a.months * a.steps
    root = (WORK / f"p8-archive{n}").resolve()
    log(f"archive of {n} files at {root}")
    for extra in root.glob(f"polygon_*/month_*/step_{a.steps:04d}.nc"):  # the step a previous run added
        extra.unlink()
    generate(root, a.polygons, a.months, a.steps, a.workers)
    runs = (WORK / "p8").resolve()
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    spec = runs / "cube.yaml"
    spec.write_text(
        f'name: p8\nsource:\n  url: file://{root}/\n  pattern: "polygon_{{polygon:d}}/month_{{month:d}}/'
        f'step_*.nc"\nconcat: [time]\nrepo:\n  url: file://{runs}/cube\nexecution:\n'
        f"  executor: processes\n  workers: {a.workers}\n  batch_size: 2000\n{COPY}"
    )
    log("icefloe build")
    m = run_measured([str(BIN / "icefloe"), "build", str(spec), "--json"], env={"PREFECT_API_URL": ""})
    assert m.returncode == 0, m.stderr[-3000:]
    results: dict[str, Any] = {"files": n, "build_seconds": m.seconds}

    log("baseline: xarray + dask to_zarr of DIC into the copy's chunks")
    base = run_measured([*python(BASELINE), str(spec), str(runs / "baseline.zarr"), str(a.workers)])
    assert base.returncode == 0, base.stderr[-3000:]
    inner = json.loads(base.stdout.strip().splitlines()[-1])
    mb = inner["bytes"] / 1e6
    results["baseline"] = {
        "wall_seconds": base.seconds,
        "work_seconds": inner["seconds"],
        "peak_rss_mb": base.peak_rss_mb,
        "mb_per_s": mb / inner["seconds"],
        "chunks": inner["chunks"],
    }
    log(f"baseline: {inner['seconds']:.1f} s, {mb / inner['seconds']:.1f} MB/s, peak {base.peak_rss_mb:.0f} MB")

    log("icefloe rechunk (rechunk_cube over the processes executor)")
    ours = run_measured([*python(OURS), str(spec)])
    assert ours.returncode == 0, ours.stderr[-3000:]
    inner = json.loads(ours.stdout.strip().splitlines()[-1])
    [made] = inner["copies"]
    assert made["problems"] == [] and made["coverage"] == 1.0, made
    results["icefloe"] = {
        "wall_seconds": ours.seconds,
        "work_seconds": inner["seconds"],
        "peak_rss_mb": ours.peak_rss_mb,
        "mb_per_s": made["bytes"] / 1e6 / inner["seconds"],
        "units": made["units"],
        "bytes": made["bytes"],
    }
    results["make_throughput_ratio"] = results["icefloe"]["mb_per_s"] / results["baseline"]["mb_per_s"]
    log(
        f"icefloe: {inner['seconds']:.1f} s, {results['icefloe']['mb_per_s']:.1f} MB/s, peak "
        f"{ours.peak_rss_mb:.0f} MB: {results['make_throughput_ratio']:.2f}x the baseline's throughput"
    )

    results["reads"] = _reads(spec)

    log(f"one more step for each of the {a.polygons * a.months} cells (1 % more time steps), ingested")
    generate(root, a.polygons, a.months, a.steps + 1, a.workers)
    m = run_measured([str(BIN / "icefloe"), "ingest", str(spec), "--json"], env={"PREFECT_API_URL": ""})
    assert m.returncode == 0, m.stderr[-3000:]
    summary = json.loads(m.stdout)
    [kept] = summary["copies"]
    from lib.copies import read_record
    from lib.repository import open_repository
    from lib.spec import load_spec

    loaded = load_spec(spec)
    repo = open_repository(loaded)
    assert repo is not None
    record = read_record(repo.readonly_session(branch="main").store, "dic_ts")
    assert record is not None and record.complete
    copy_bytes = made["bytes"] * (a.steps + 1) / a.steps
    written = kept["bytes"]
    results["incremental"] = {
        "ingested": summary["ingested"],
        "units_rewritten": kept["units"],
        "units": kept["total_units"],
        "bytes_written": written,
        "copy_bytes": copy_bytes,
        "share_rewritten": written / copy_bytes,
        "ingest_seconds": m.seconds,
    }
    log(
        f"incremental: {kept['units']} of {kept['total_units']} unit(s), {written / 1e6:.2f} MB: "
        f"{100 * written / copy_bytes:.2f} % of the copy rewritten"
    )
    out = save(
        "p8_native_copy",
        {
            **results,
            "command": f"python -m benchmarks.p8_native_copy --polygons {a.polygons} --months {a.months} "
            f"--steps {a.steps} --workers {a.workers}",
        },
    )
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
