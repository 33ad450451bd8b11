"""P1 build throughput: icefloe build vs VirtualiZarr's open_virtual_mfdataset + to_icechunk, side by
side on the same archive, same machine, same run. Each is timed as a whole command as a user sees it
(a fresh process: imports and start-up included). Both cubes are then compared value for value.

    python benchmarks/p1_build.py [--polygons 5 --months 20 --steps 100]

Also reports parse-only throughput (files/s): icefloe's fast HDF5 parser, VirtualiZarr's HDFParser,
and VirtualiZarr's open_virtual_dataset (its per-file cost inside open_virtual_mfdataset).
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
import time

from benchmarks.common import BIN, WORK, log, python, run_measured, save
from benchmarks.generate import generate

VZ_BUILD = textwrap.dedent("""
    import sys, time, icechunk, itertools
    from concurrent.futures import ProcessPoolExecutor
    from obstore.store import LocalStore
    from obspec_utils.registry import ObjectStoreRegistry
    from virtualizarr import open_virtual_mfdataset
    from virtualizarr.parsers import HDFParser
    root, repo_dir, P, M, T, workers = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
    urls = [[[f"file://{root}/polygon_{p:03d}/month_{m:02d}/step_{t:04d}.nc" for t in range(T)]
             for m in range(1, M + 1)] for p in range(P)]
    registry = ObjectStoreRegistry({"file://": LocalStore()})
    parallel = ProcessPoolExecutor(workers) if workers > 1 else False
    if __name__ == "__main__":
        vds = open_virtual_mfdataset(urls, registry=registry, parser=HDFParser(), combine="nested",
                                     concat_dim=["polygon", "month", "time"], data_vars="all",
                                     coords="minimal", compat="override", parallel=parallel)
        config = icechunk.RepositoryConfig.default()
        config.set_virtual_chunk_container(icechunk.VirtualChunkContainer(f"file://{root}/",
                                           icechunk.local_filesystem_store(root + "/")))
        creds = icechunk.containers_credentials({f"file://{root}/": icechunk.credentials.LocalFileSystemAccess})
        repo = icechunk.Repository.create(icechunk.local_filesystem_storage(repo_dir), config,
                                          authorize_virtual_chunk_access=creds)
        session = repo.writable_session("main")
        vds.vz.to_icechunk(session.store)
        session.commit("virtualizarr build")
""")

PARSE_ONLY = textwrap.dedent("""
    import sys, time, glob, json
    from lib.parsing import ParseOptions
    from lib.parsing.hdf5 import parse_hdf5
    from lib.storage import source_registry
    from obstore.store import LocalStore
    from obspec_utils.registry import ObjectStoreRegistry
    from virtualizarr import open_virtual_dataset
    from virtualizarr.parsers import HDFParser
    root, n = sys.argv[1], int(sys.argv[2])
    urls = sorted("file://" + p for p in glob.glob(root + "/polygon_000/*/*.nc"))[:n]
    out = {}
    registry = source_registry("file://" + root + "/")
    options = ParseOptions(concat=("time",))
    parse_hdf5(urls[0], registry, options)
    t = time.perf_counter()
    for u in urls: parse_hdf5(u, registry, options)
    out["icefloe_fast_parser"] = len(urls) / (time.perf_counter() - t)
    vz_registry = ObjectStoreRegistry({"file://": LocalStore()})
    parser = HDFParser()
    parser(urls[0], vz_registry)
    t = time.perf_counter()
    for u in urls: parser(u, vz_registry)
    out["virtualizarr_hdfparser"] = len(urls) / (time.perf_counter() - t)
    t = time.perf_counter()
    for u in urls: open_virtual_dataset(u, registry=vz_registry, parser=parser)
    out["virtualizarr_open_virtual_dataset"] = len(urls) / (time.perf_counter() - t)
    print(json.dumps(out))
""")

COMPARE = textwrap.dedent("""
    import sys, numpy as np, xarray as xr, icechunk
    root, a_dir, b_dir = sys.argv[1:4]
    creds = icechunk.containers_credentials({f"file://{root}/": icechunk.credentials.LocalFileSystemAccess})
    def open_(d):
        repo = icechunk.Repository.open(icechunk.local_filesystem_storage(d), authorize_virtual_chunk_access=creds)
        return xr.open_zarr(repo.readonly_session("main").store, consolidated=False, chunks=None)
    a, b = open_(a_dir), open_(b_dir)
    problems = []
    for name in ("DIC", "ALK"):
        other = b[name].transpose(*a[name].dims)  # VirtualiZarr nests the new dims in its own order
        if other.shape != a[name].shape:
            problems.append(f"{name}: {a[name].dims}{a[name].shape} vs {b[name].dims}{b[name].shape}")
            continue
        for p in range(a.sizes["polygon"]):
            x, y = a[name].isel(polygon=p).values, other.isel(polygon=p).values
            if not np.array_equal(x, y, equal_nan=True):
                problems.append(f"{name} differs for polygon {p}")
    for c in ("time", "depth", "lat", "lon"):
        if not np.array_equal(a[c].values, b[c].values):
            problems.append(f"coordinate {c} differs")
    print("identical" if not problems else "DIFFERENT: " + "; ".join(problems))
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--polygons", type=int, default=5)
    ap.add_argument("--months", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--parse-sample", type=int, default=1000)
    a = ap.parse_args()
    n = a.polygons * a.months * a.steps
    root = (WORK / f"archive{n // 1000}k").resolve()
    log(f"archive of {n} files at {root}")
    generate(root, a.polygons, a.months, a.steps, a.workers)
    runs = WORK / "p1"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    results: dict[str, dict] = {}

    spec = runs / "cube.yaml"
    spec.write_text(
        f'name: p1\nsource:\n  url: file://{root}/\n  pattern: "polygon_{{polygon:d}}/month_{{month:d}}/'
        f'step_*.nc"\nconcat: [time]\nrepo:\n  url: file://{runs}/icefloe-cube\nexecution:\n'
        f"  executor: processes\n  workers: {a.workers}\n  batch_size: 2000\n"
    )
    log("icefloe build (whole command, Prefect's ephemeral API)")
    m = run_measured([str(BIN / "icefloe"), "build", str(spec), "--json"], env={"PREFECT_API_URL": ""})
    assert m.returncode == 0, m.stderr[-3000:]
    summary = json.loads(m.stdout)
    results["icefloe_build"] = {
        "seconds": m.seconds,
        "peak_rss_mb": m.peak_rss_mb,
        "ingested": summary["ingested"],
        "fast_path_share": summary["fast_path_share"],
        "refs": summary["refs"],
        "workers": a.workers,
    }
    log(f"  {m.seconds:.1f} s, peak {m.peak_rss_mb:.0f} MB")

    for label, workers in (("virtualizarr_serial", 1), (f"virtualizarr_{a.workers}_processes", a.workers)):
        log(f"{label}: open_virtual_mfdataset + to_icechunk")
        target = runs / label
        m = run_measured(
            [*python(VZ_BUILD), str(root), str(target), str(a.polygons), str(a.months), str(a.steps), str(workers)],
            env={"ICECHUNK_LOG": "error"},
        )
        assert m.returncode == 0, m.stderr[-3000:]
        results[label] = {"seconds": m.seconds, "peak_rss_mb": m.peak_rss_mb, "workers": workers}
        log(f"  {m.seconds:.1f} s, peak {m.peak_rss_mb:.0f} MB")
        check = run_measured(
            [*python(COMPARE), str(root), str(runs / "icefloe-cube"), str(target)], env={"ICECHUNK_LOG": "error"}
        )
        results[label]["same_cube_as_icefloe"] = check.stdout.strip()
        log(f"  cube comparison: {check.stdout.strip()} {check.stderr[-500:]}")

    log(f"parse-only throughput on {a.parse_sample} files")
    m = run_measured([*python(PARSE_ONLY), str(root), str(a.parse_sample)])
    assert m.returncode == 0, m.stderr[-3000:]
    results["parse_only_files_per_second"] = json.loads(m.stdout)

    best_vz = min(results[k]["seconds"] for k in results if k.startswith("virtualizarr_"))
    results["ratios"] = {
        "virtualizarr_serial_over_icefloe": results["virtualizarr_serial"]["seconds"]
        / results["icefloe_build"]["seconds"],
        "best_virtualizarr_over_icefloe": best_vz / results["icefloe_build"]["seconds"],
    }
    out = save(
        f"p1_build_{n // 1000}k",
        {
            "files": n,
            "results": results,
            "command": "python benchmarks/p1_build.py "
            + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()),
        },
    )
    log(f"wrote {out}")
    log(json.dumps(results["ratios"]))


if __name__ == "__main__":
    start = time.time()
    main()
    log(f"done in {time.time() - start:.0f} s")
