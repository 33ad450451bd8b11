"""P5 memory: peak RSS of a whole `icefloe build` (client plus its worker processes; the Prefect server
runs apart and is not counted) at 10,000 and 100,000 files, to show it stays flat as the archive grows.

    python benchmarks/p5_memory.py [--sizes 10000 100000]

Archives are made fast by copying one real tile and patching its time value (benchmarks/generate.py
--copies): every file parses for real, only the data values repeat.
"""

from __future__ import annotations

import argparse
import json
import shutil

from benchmarks.common import BIN, WORK, log, run_measured, save
from benchmarks.generate import generate_copies
from flows.local.stack import LocalStack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    results = {}
    with LocalStack(WORK / "p5-prefect") as stack:
        api = stack.start_prefect()
        for size in a.sizes:
            months, steps = 100, 100
            polygons = max(1, size // (months * steps))
            root = (WORK / f"copies{size // 1000}k").resolve()
            log(f"archive of {size} files (copies) at {root}")
            generate_copies(root, polygons, months, steps)
            run_dir = (WORK / f"p5-{size}").resolve()
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            spec = run_dir / "cube.yaml"
            spec.write_text(
                f'name: p5\nsource:\n  url: file://{root}/\n  pattern: "polygon_{{polygon:d}}/'
                f'month_{{month:d}}/step_*.nc"\nconcat: [time]\nrepo:\n  url: file://{run_dir}/cube\n'
                f"execution:\n  executor: processes\n  workers: {a.workers}\n  batch_size: 2000\n"
            )
            log(f"icefloe build of {size} files")
            m = run_measured(
                [str(BIN / "icefloe"), "build", str(spec), "--json"],
                env={"PREFECT_API_URL": api, "ICECHUNK_LOG": "error"},
            )
            assert m.returncode == 0, m.stderr[-3000:]
            summary = json.loads(m.stdout)
            results[str(size)] = {
                "files": size,
                "ingested": summary["ingested"],
                "seconds": m.seconds,
                "peak_rss_mb": m.peak_rss_mb,
                "peak_rss_by_process_mb": m.peak_breakdown_mb,
                "refs": summary["refs"],
            }
            log(f"  {m.seconds:.1f} s, peak {m.peak_rss_mb:.0f} MB (client + workers): {m.peak_breakdown_mb}")
            shutil.rmtree(run_dir, ignore_errors=True)
    out = save(
        "p5_memory",
        {
            "results": results,
            "target_peak_rss_mb": 1024,
            "command": "python -m benchmarks.p5_memory --sizes " + " ".join(map(str, a.sizes)),
        },
    )
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
