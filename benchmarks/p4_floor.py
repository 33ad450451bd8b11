"""P4's floor: what Icechunk itself takes per virtual reference on this machine, with nothing around it.

    python -m benchmarks.p4_floor [--refs 1000000] [--ranks 1 2 4 6]

For each array rank, a fresh local repository and one array of ``refs`` one-element chunks; the refs
go in with ``set_virtual_refs_arr``, 400 per call (no checksums, a few hundred distinct URLs), then one
commit. Timed in the process: the calls and the commit separately. This is the cost any writer pays
before doing any work of its own, and shows whether the arrays' rank matters (icefloe's cubes are
six-dimensional: pattern dims first).
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap

from benchmarks.common import WORK, log, python, run_measured, save

SCRIPT = textwrap.dedent("""
    import sys, time, json, numpy as np, icechunk as ic, zarr
    path, ndim, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    per = 400
    calls = n // per
    cfg = ic.RepositoryConfig.default()
    cfg.set_virtual_chunk_container(ic.VirtualChunkContainer("file:///data/", ic.local_filesystem_store("/data/")))
    repo = ic.Repository.create(ic.local_filesystem_storage(path), config=cfg)
    session = repo.writable_session("main")
    shape = (calls * per,) if ndim == 1 else (calls, per) + (1,) * (ndim - 2)
    zarr.group(session.store).create_array("a", shape=shape, chunks=(1,) * ndim, dtype="f4")
    session.commit("array")
    session = repo.writable_session("main")
    store = session.store
    locations = [f"file:///data/f{i:08d}.nc" for i in range(per)]
    offsets, lengths = np.arange(per, dtype="u8"), np.full(per, 10, dtype="u8")
    grid = (per,) if ndim == 1 else (1, per) + (1,) * (ndim - 2)
    start = time.perf_counter()
    for c in range(calls):
        where = (c * per,) if ndim == 1 else (c,) + (0,) * (ndim - 1)
        store.set_virtual_refs_arr("a", grid, locations, offsets, lengths, arr_offset=where)
    called = time.perf_counter()
    session.commit("refs")
    done = time.perf_counter()
    print(json.dumps({"calls_seconds": called - start, "commit_seconds": done - called}))
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refs", type=int, default=1_000_000)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 6])
    a = ap.parse_args()
    results = {}
    for ndim in a.ranks:
        repo = (WORK / f"floor{ndim}").resolve()
        shutil.rmtree(repo, ignore_errors=True)
        m = run_measured([*python(SCRIPT), str(repo), str(ndim), str(a.refs)], env={"ICECHUNK_LOG": "error"})
        assert m.returncode == 0, m.stderr[-3000:]
        inner = json.loads(m.stdout.strip().splitlines()[-1])
        total = inner["calls_seconds"] + inner["commit_seconds"]
        results[str(ndim)] = {**inner, "microseconds_per_ref": total / a.refs * 1e6, "peak_rss_mb": m.peak_rss_mb}
        log(f"rank {ndim}: {json.dumps(results[str(ndim)])}")
        shutil.rmtree(repo, ignore_errors=True)
    out = save(
        "p4_floor",
        {"refs": a.refs, "results": results, "command": f"python -m benchmarks.p4_floor --refs {a.refs}"},
    )
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
