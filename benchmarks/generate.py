"""Generate a benchmark archive shaped like the demo: polygon_{p}/month_{m}/step_{t}.nc tiles, one
time step each, two chunked + compressed variables of time x depth x lat x lon with 4 chunks each,
CF time whose units differ per file.

    python benchmarks/generate.py DIR --polygons 5 --months 20 --steps 100   # 10,000 files
"""

from __future__ import annotations

import argparse
import itertools
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from lib.demo import DemoShape, step_path, write_step


def _write(args: tuple[str, int, int, int]) -> None:
    root, p, m, t = args
    path = step_path(Path(root), p, m, t)
    if not path.exists():
        write_step(path, p, m, t, DemoShape())


def generate(root: Path, polygons: int, months: int, steps: int, workers: int = 2) -> int:
    jobs = [(str(root), p, m, t) for p, m, t in itertools.product(range(polygons), range(1, months + 1), range(steps))]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write, jobs, chunksize=64))
    return len(jobs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--polygons", type=int, default=5)
    ap.add_argument("--months", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    n = generate(a.root, a.polygons, a.months, a.steps, a.workers)
    print(f"{n} files under {a.root}")


if __name__ == "__main__":
    main()
