"""P5 memory: peak RSS of a whole `icefloe build` (client plus its worker processes; the Prefect server
runs apart and is not counted) at 100,000 and 500,000 files, to show whether it stays flat as the archive
grows, with a timeline of RSS over each build (benchmarks/results/p5_memory_timeline.png).

    python -m benchmarks.p5_memory [--sizes 100000 500000]

Archives are made fast by copying one real tile and patching its time value (benchmarks/generate.py
--copies): every file parses for real, only the data values repeat.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from benchmarks.common import BIN, RESULTS, WORK, log, run_measured, save
from benchmarks.generate import generate_copies
from flows.local.stack import LocalStack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000])
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    results = {}
    with LocalStack(WORK / "p5-prefect") as stack:
        api = stack.start_prefect()
        for size in a.sizes:
            run_dir, spec = copies_cube(size, f"p5-{size}", a.workers)
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
                "timeline": m.samples,  # (seconds, client MB, client + workers MB), once a second
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
    log(f"drew {plot_timelines(results)}")


def copies_cube(size: int, name: str, workers: int) -> tuple[Path, Path]:
    """An archive of ``size`` copies of one tile (100 months x 100 steps per polygon, made if missing)
    and a fresh spec building it into ``WORK/name``: (the run's directory, the spec)."""
    months, steps = 100, 100
    root = (WORK / f"copies{size // 1000}k").resolve()
    log(f"archive of {size} files (copies) at {root}")
    generate_copies(root, max(1, size // (months * steps)), months, steps)
    run_dir = (WORK / name).resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    spec = run_dir / "cube.yaml"
    spec.write_text(
        f'name: p5\nsource:\n  url: file://{root}/\n  pattern: "polygon_{{polygon:d}}/'
        f'month_{{month:d}}/step_*.nc"\nconcat: [time]\nrepo:\n  url: file://{run_dir}/cube\n'
        f"execution:\n  executor: processes\n  workers: {workers}\n  batch_size: 2000\n"
    )
    return run_dir, spec


def plot_timelines(results: dict[str, dict[str, object]]) -> Path:
    """RSS over each build (client, and client plus workers), one panel per size, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(9, 3.2 * len(results)), squeeze=False)
    for ax, (size, result) in zip(axes[:, 0], results.items(), strict=True):
        samples = result["timeline"]
        assert isinstance(samples, list)
        t = [s[0] / 60 for s in samples]
        ax.plot(t, [s[2] for s in samples], label="client + parse workers")
        ax.plot(t, [s[1] for s in samples], label="client")
        ax.axhline(1024, color="grey", linestyle="--", linewidth=0.8, label="1 GB")
        ax.set_title(f"icefloe build of {int(size):,} files: peak {result['peak_rss_mb']:.0f} MB")
        ax.set_xlabel("minutes")
        ax.set_ylabel("RSS, MB")
        ax.set_ylim(0, max(1100, max(s[2] for s in samples) * 1.05))
        ax.legend(loc="lower right")
    fig.tight_layout()
    path = RESULTS / "p5_memory_timeline.png"
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    main()
