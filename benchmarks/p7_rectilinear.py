"""P7 rectilinear: does a build on a rectilinear time axis cost more than a regular one?

    python -m benchmarks.p7_rectilinear [--polygons 84] [--months 24]

Two archives with the same number of files, variables and chunks per file, built in the same run
with the same settings: monthly files of daily data (28 to 31 days, one chunk per file) on a
rectilinear time axis, and files of exactly 30 days each on a regular one. Reported: wall time and
peak RSS of each build, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import BIN, WORK, log, run_measured, save
from flows.local.stack import LocalStack


def write_archive(root: Path, polygons: int, months: int, uneven: bool) -> int:
    """Monthly files of daily data from 2000-01 on (uneven) or 30-day files (even), one chunk each."""
    import xarray as xr

    count = 0
    for p in range(polygons):
        start = np.datetime64("2000-01-01", "D")
        for m in range(months):
            if uneven:
                first = (np.datetime64("2000-01", "M") + np.timedelta64(m, "M")).astype("datetime64[D]")
                last = (np.datetime64("2000-01", "M") + np.timedelta64(m + 1, "M")).astype("datetime64[D]")
                days = int((last - first) / np.timedelta64(1, "D"))
            else:
                first, days = start + np.timedelta64(30 * m, "D"), 30
            rng = np.random.default_rng(p * 1000 + m)
            ds = xr.Dataset(
                {"DIC": (("time", "lat", "lon"), (2000 + rng.standard_normal((days, 16, 16)) * 10).astype("f4"))},
                coords={
                    "time": ("time", (first + np.arange(days)).astype("datetime64[ns]")),
                    "lat": ("lat", np.linspace(-30.0, 30.0, 16)),
                    "lon": ("lon", np.linspace(150.0, 210.0, 16)),
                },
            )
            path = root / f"polygon_{p:03d}" / f"m{m:03d}.nc"
            path.parent.mkdir(parents=True, exist_ok=True)
            encoding: dict[str, dict[str, Any]] = {
                "DIC": {"chunksizes": (days, 8, 8), "zlib": True, "complevel": 4},
                "time": {"units": "days since 2000-01-01", "dtype": "int64"},
            }
            ds.to_netcdf(path, engine="h5netcdf", encoding=encoding)
            count += 1
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--polygons", type=int, default=84)
    ap.add_argument("--months", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    results = {}
    with LocalStack(WORK / "p7-prefect") as stack:
        api = stack.start_prefect()
        for kind, uneven in (("regular", False), ("rectilinear", True)):
            root = (WORK / f"p7-{kind}-archive").resolve()
            if not root.exists():
                log(f"writing the {kind} archive")
                write_archive(root, a.polygons, a.months, uneven)
            files = sum(1 for _ in root.rglob("*.nc"))
            run_dir = (WORK / f"p7-{kind}").resolve()
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            spec = run_dir / "cube.yaml"
            spec.write_text(
                f'name: p7\nsource:\n  url: file://{root}/\n  pattern: "polygon_{{polygon:d}}/*.nc"\n'
                f"concat: [time]\n{'rectilinear: [time]' if uneven else ''}\nrepo:\n  url: file://{run_dir}/cube\n"
                f"execution:\n  executor: processes\n  workers: {a.workers}\n  batch_size: 500\n"
            )
            log(f"icefloe build of {files} {kind} files")
            m = run_measured(
                [str(BIN / "icefloe"), "build", str(spec), "--json"],
                env={"PREFECT_API_URL": api, "ICECHUNK_LOG": "error"},
            )
            assert m.returncode == 0, m.stderr[-3000:]
            summary = json.loads(m.stdout)
            assert summary["ingested"] == files and not summary["quarantined"], summary
            results[kind] = {
                "files": files,
                "seconds": m.seconds,
                "peak_rss_mb": m.peak_rss_mb,
                "refs": summary["refs"],
            }
            log(f"  {m.seconds:.1f} s, peak {m.peak_rss_mb:.0f} MB")
            shutil.rmtree(run_dir, ignore_errors=True)
    ratio = results["rectilinear"]["seconds"] / results["regular"]["seconds"]
    out = save(
        "p7_rectilinear",
        {
            "results": results,
            "time_ratio_rectilinear_to_regular": round(ratio, 3),
            "rss_ratio_rectilinear_to_regular": round(
                results["rectilinear"]["peak_rss_mb"] / results["regular"]["peak_rss_mb"], 3
            ),
            "command": f"python -m benchmarks.p7_rectilinear --polygons {a.polygons} --months {a.months}",
        },
    )
    log(f"rectilinear / regular: {ratio:.2f}x the time; wrote {out}")


if __name__ == "__main__":
    main()
