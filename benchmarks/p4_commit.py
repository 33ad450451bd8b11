"""P4 commit at scale: N million virtual refs written into one repository through the build's own
batch commits (``lib.staging.commit_prepare`` + ``commit_batch``: arrays at full size, refs placed at
their offsets through Icechunk forks, ledger rows, one commit per batch, manifests split along time).

    python benchmarks/p4_commit.py [--refs 10000000]

The objects are synthetic (8 refs each, like the benchmark tiles, each with its own ETag as on S3);
parsing is left out on purpose -- P1 measures it. Wall time and peak RSS of the whole process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap

from benchmarks.common import WORK, log, python, run_measured, save

SCRIPT = textwrap.dedent("""
    import sys, time, json, numpy as np
    from pathlib import Path
    from lib.demo import DemoShape, write_step
    from lib.spec import load_spec
    from lib.parsing import ParseOptions
    from lib.parsing.hdf5 import parse_hdf5
    from lib.storage import source_registry
    from lib.validation import schema_of, FileEntry
    from lib.layout import Axes, Placement
    from lib.planning import Plan
    from lib.repository import open_repository
    from lib.state import open_cube
    from lib.staging import RunInfo, commit_prepare, commit_batch, manifest_split
    from lib.repository import set_manifest_splitting

    work, n_files, batch_files = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    template = write_step(work / "src" / "polygon_000" / "month_01" / "step_0000.nc", 0, 1, 0, DemoShape())
    url0 = f"file://{template}"
    spec = load_spec(f"name: p4\\nsource: {{url: 'file://{work}/src/', pattern: 'polygon_{{polygon:d}}/month_{{month:d}}/step_*.nc'}}\\n"
                     f"concat: [time]\\nrepo: {{url: 'file://{work}/repo'}}\\n")
    frag = parse_hdf5(url0, source_registry(f"file://{work}/src/"), ParseOptions(concat=("time",)))
    schema = schema_of(frag, {"polygon": "int", "month": "int"}, ("time",))
    steps = 100
    cells = -(-n_files // steps)
    months = 100
    polygons = -(-cells // months)
    axes = Axes(pattern={"polygon": list(range(polygons)), "month": list(range(1, months + 1))},
                concat={"time": np.arange(steps, dtype="i8")})
    schema.concat_encoding = {"time": {"units": "days since 2000-01-01", "calendar": "proleptic_gregorian", "dtype": "<i8"}}

    def url(i): return f"file://{work}/src/f{i:08d}.nc"
    def where(i): return divmod(i // steps, months), i % steps

    class Lazy(dict):
        def __init__(self, make): self.make = make
        def __getitem__(self, u): return self.make(int(u[-11:-3]))
        def __contains__(self, u): return True
        def __len__(self): return n_files

    def placement(i):
        (p, m), t = where(i)
        return Placement(url(i), (p, m), (("time", t, t + 1),))

    def entry(i):
        (p, m), t = where(i)
        return FileEntry(url=url(i), etag=f"etag-{i}", size=1, checksum=f"etag-{i:08d}", fields=(("polygon", p), ("month", m + 1)),
                         format="hdf5", parser="fast", schema_key="", layout_key="", concat={}, shared={}, cell={},
                         ref_count=8)

    class Spool:
        def read(self, b):
            lo, hi = b * batch_files, min(n_files, (b + 1) * batch_files)
            out = []
            for i in range(lo, hi):
                f = frag.references_only()
                f.url = url(i)
                out.append(f)
            return out

    n_batches = -(-n_files // batch_files)
    batches = [[url(i) for i in range(b * batch_files, min(n_files, (b + 1) * batch_files))] for b in range(n_batches)]
    plan = Plan(schema=schema, axes=axes, fresh=True, placements=Lazy(placement), entries=Lazy(entry),
                quarantined={}, batches=[], grows=True, shared_source=None)
    plan.batches = batches
    start = time.perf_counter()
    repo = open_repository(spec, create=True)
    state = open_cube(repo, spec, "build")
    repo = set_manifest_splitting(repo, manifest_split(plan, batch_files))
    info = RunInfo("p4", "build")
    commit_prepare(repo, spec, state, plan, Spool(), info, {})
    refs = 0
    for b in range(n_batches):
        _, r = commit_batch(repo, spec, state, plan, Spool(), b, info, workers=2)
        refs += r
        plan.batches[b] = []  # a batch's URLs are not needed once committed
    seconds = time.perf_counter() - start
    print(json.dumps({"refs": refs, "files": n_files, "batches": n_batches, "seconds_in_process": seconds}))
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refs", type=int, default=10_000_000)
    ap.add_argument("--refs-per-batch", type=int, default=500_000)
    a = ap.parse_args()
    work = (WORK / "p4").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    files = a.refs // 8
    log(f"committing {a.refs} refs ({files} objects) in batches of {a.refs_per_batch} refs")
    m = run_measured(
        [*python(SCRIPT), str(work), str(files), str(a.refs_per_batch // 8)], env={"ICECHUNK_LOG": "error"}
    )
    assert m.returncode == 0, m.stderr[-3000:]
    inner = json.loads(m.stdout.strip().splitlines()[-1])
    result = {
        "refs": inner["refs"],
        "objects": files,
        "batches": inner["batches"],
        "wall_seconds": m.seconds,
        "commit_seconds": inner["seconds_in_process"],
        "peak_rss_mb": m.peak_rss_mb,
        "targets": {"seconds": 20, "peak_rss_mb": 1024},
        "icechunk_low_level_from_facts": {
            "default": {"seconds": 86.8, "peak_rss_mb": 5100},
            "batched_0.5M_split_0.5M": {"seconds": 20.3, "peak_rss_mb": 1200},
        },
    }
    out = save(
        f"p4_commit_{a.refs // 1_000_000}M",
        {"result": result, "command": f"python -m benchmarks.p4_commit --refs {a.refs}"},
    )
    log(f"{json.dumps(result)}\nwrote {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
