"""An ingest of one object into a small and into a very large cube: does its cost grow with the archive?

    python -m benchmarks.p5_ingest [--sizes 10000 500000 --repeats 3]

For each size a cube is written as a real build of that many demo tiles would leave it
(``benchmarks/synthetic.py``: ledger, ledger index, manifests, time axis; local disk), then one new
tile at the end of a cell's time axis is ingested by name, ``--repeats`` times (a new tile each
time), exactly as an event or a user would: ``icefloe ingest SPEC URL --json`` against a Prefect
server of its own. Wall time and peak RSS of the command's whole process tree (the server is
separate, as in production).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import BIN, WORK, log, run_measured, save
from flows.local.stack import LocalStack
from lib.local.archive import DemoShape, step_path, write_step

SHAPES = {10_000: (10, 10, 100), 100_000: (20, 50, 100), 500_000: (50, 100, 100)}


def _cube(work: Path, size: int, executor: str) -> tuple[Path, Path, dict[str, Any]]:
    from benchmarks.synthetic import write_synthetic_cube
    from lib.spec import load_spec

    polygons, months, steps = SHAPES[size]
    archive, shape = work / "archive", DemoShape()
    for t in (0, 1):  # the template tiles the synthetic cube is made from
        write_step(step_path(archive, 0, 1, t), 0, 1, t, shape)
    spec = work / "cube.yaml"
    spec.write_text(
        f'name: p5i\nsource:\n  url: file://{archive}/\n  pattern: "polygon_{{polygon:d}}/month_{{month:d}}/'
        f'step_*.nc"\nconcat: [time]\nrepo:\n  url: file://{work}/cube\nexecution: {{executor: {executor}}}\n'
    )
    made = write_synthetic_cube(load_spec(spec), polygons, months, steps, log=log)
    return spec, archive, made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 500_000], choices=sorted(SHAPES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--executor", default="processes", choices=["processes", "threads"])
    a = ap.parse_args()
    root = (WORK / "p5_ingest").resolve()
    shutil.rmtree(root, ignore_errors=True)
    results: dict[str, Any] = {}
    with LocalStack(root / "stack") as stack:
        api = stack.start_prefect()
        for size in a.sizes:
            work = root / str(size)
            log(f"a synthetic cube of {size} objects")
            spec, archive, made = _cube(work, size, a.executor)
            steps = SHAPES[size][2]
            runs = []
            for i in range(a.repeats):
                path = write_step(step_path(archive, 0, 1, steps + i), 0, 1, steps + i, DemoShape())
                m = run_measured(
                    [str(BIN / "icefloe"), "ingest", str(spec), f"file://{path}", "--json"],
                    env={"PREFECT_API_URL": api},
                )
                assert m.returncode == 0, m.stderr[-3000:]
                summary = json.loads(m.stdout)
                assert summary["ingested"] == 1 and summary["published"], summary
                runs.append(
                    {
                        "seconds": m.seconds,
                        "peak_rss_mb": m.peak_rss_mb,
                        "in_flow_seconds": summary["seconds"],
                        "peak_by_process_mb": m.peak_breakdown_mb,
                    }
                )
                log(f"  ingest {i + 1}: {m.seconds:.1f} s, peak {m.peak_rss_mb:.0f} MB")
            results[str(size)] = {
                "objects": made["objects"],
                "refs": made["refs"],
                "cube_written_seconds": made["seconds"],
                "runs": runs,
                "median_seconds": statistics.median(r["seconds"] for r in runs),
                "median_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            }
    if len(a.sizes) > 1:
        small, large = (results[str(s)] for s in (min(a.sizes), max(a.sizes)))
        results["ratio_large_over_small"] = {
            "seconds": large["median_seconds"] / small["median_seconds"],
            "peak_rss": large["median_peak_rss_mb"] / small["median_peak_rss_mb"],
        }
    out = save(
        "p5_ingest" if a.executor == "processes" else f"p5_ingest_{a.executor}",
        {
            **results,
            "executor": a.executor,
            "command": "python -m benchmarks.p5_ingest --sizes "
            + " ".join(map(str, a.sizes))
            + f" --executor {a.executor}",
        },
    )
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
