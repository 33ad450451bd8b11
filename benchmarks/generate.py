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

from lib.local.archive import DemoShape, step_path, write_step


def _write(args: tuple[str, int, int, int]) -> None:
    root, p, m, t = args
    path = step_path(Path(root), p, m, t)
    if not path.exists():
        write_step(path, p, m, t, DemoShape())


def generate_copies(root: Path, polygons: int, months: int, steps: int) -> int:
    """A large archive fast: one real tile copied to every place, its time value patched per step.

    Every file is a valid netCDF-4 tile (h5py reads it, its time is its own); only the data values
    repeat. For memory and scale benchmarks, where millions of distinct values add nothing.
    """
    import h5py
    import numpy as np

    template = root.parent / f"{root.name}-template.nc"
    if not template.exists():
        write_step(template, 0, 1, 0, DemoShape())
        with h5py.File(template, "r+") as f:  # one unit for all copies: only the value differs
            f["time"].attrs["units"] = np.bytes_("days since 2000-01-01")
    with h5py.File(template, "r") as f:
        offset = f["time"].id.get_offset()
        assert offset is not None and f["time"].dtype == np.dtype("<i8"), "the template's time must be contiguous i8"
    data = bytearray(template.read_bytes())
    count = 0
    for p, m in itertools.product(range(polygons), range(1, months + 1)):
        folder = step_path(root, p, m, 0).parent
        folder.mkdir(parents=True, exist_ok=True)
        for t in range(steps):
            path = folder / f"step_{t:04d}.nc"
            if not path.exists():
                data[offset : offset + 8] = np.int64(t).tobytes()
                path.write_bytes(data)
            count += 1
    return count


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
    ap.add_argument("--copies", action="store_true", help="copy one tile and patch its time (fast, for scale)")
    a = ap.parse_args()
    if a.copies:
        n = generate_copies(a.root, a.polygons, a.months, a.steps)
    else:
        n = generate(a.root, a.polygons, a.months, a.steps, a.workers)
    print(f"{n} files under {a.root}")


if __name__ == "__main__":
    main()
