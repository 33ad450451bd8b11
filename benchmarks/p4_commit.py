"""P4 commit at scale: N million virtual refs written into one repository through the build's own
batch commits (``lib.staging.stage_prepare`` + ``stage_batch``: arrays at full size, refs placed at
their offsets from packed spool slices, ledger rows, one commit per batch, manifests split along time).

    python -m benchmarks.p4_commit [--refs 10000000] [--modes pipeline specs per-object bulk]

Beside the pipeline, the same refs go in through Icechunk's own API in the same run (see MODES): a
``VirtualChunkSpec`` per ref with its object's checksum, one ``set_virtual_refs_arr`` call per object
with its checksum (the two ways to keep each object's ETag), and FACTS.md's hand-tuned bulk calls
without checksums. The objects are synthetic (8 refs each, like the
benchmark tiles, each with its own ETag as on S3); parsing is left out on purpose -- P1 measures it.
For the pipeline, what parsing and planning leave behind -- the spooled, packed fragments and the
spilled plan's entries -- is written to a real spool first, outside the timed part
(``spool_seconds``). Reported: the timed part of each way (``commit_seconds``, which the ratio
``x_bulk`` compares), the measured process's whole wall time and its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap

from benchmarks.common import WORK, log, python, run_measured, save

SCRIPT = textwrap.dedent("""
    from lib.memory import limit_arenas
    limit_arenas()  # as the icefloe command does first thing
    import sys, time, json, numpy as np
    from pathlib import Path
    from lib.local.archive import DemoShape, write_step
    from lib.spec import load_spec
    from lib.parsing import ParseOptions
    from lib.parsing.hdf5 import parse_hdf5
    from lib.storage import source_registry
    from lib.validation import schema_of, FileEntry
    from lib.layout import Axes, Placement
    from lib.planning import Plan, PlannedFiles, SpilledURLs
    from lib.parsing.fragment import PackedSlice
    from lib.spool import Spool
    from lib.repository import open_repository
    from lib.state import read_cube_state
    from lib.staging import RunInfo, WorkAhead, stage_prepare, stage_batch, manifest_split
    from lib.repository import set_manifest_splitting

    work, n_files, batch_files, mode = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
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

    base = f"file://{work}/src/"
    def url(i): return f"{base}f{i:08d}.nc"
    def where(i): return divmod(i // steps, months), i % steps

    def placement(i):
        (p, m), t = where(i)
        return Placement(url(i), (p, m), (("time", t, t + 1),))

    def entry(i):
        (p, m), t = where(i)
        return FileEntry(url=url(i), etag=f"etag-{i}", size=1, checksum=f"etag-{i:08d}", fields=(("polygon", p), ("month", m + 1)),
                         format="hdf5", parser="fast", schema_key="", layout_key="", concat={}, shared={}, cell={},
                         ref_count=8)

    class Lazily:  # a batch's items, made a spool slice at a time as the spool writes them
        def __init__(self, make, lo, hi): self.make, self.lo, self.hi = make, lo, hi
        def __len__(self): return self.hi - self.lo
        def __getitem__(self, s): return [self.make(self.lo + i) for i in range(*s.indices(len(self)))]

    def fragment(i):
        f = frag.references_only()
        f.url = url(i)
        return f

    n_batches = -(-n_files // batch_files)
    spool = Spool(work)
    setup = time.perf_counter()
    plan = Plan(schema=schema, axes=axes, fresh=True, placements={}, entries={}, quarantined={}, batches=[], grows=True,
                shared_source=None)
    plan.batches = [SpilledURLs(min(n_files, (b + 1) * batch_files) - b * batch_files) for b in range(n_batches)]
    if mode == "pipeline":
        # what parsing and planning leave in the spool for the commits: packed fragments, and each
        # placed file's entry and placement (a spilled plan)
        for b in range(n_batches):
            lo, hi = b * batch_files, min(n_files, (b + 1) * batch_files)
            spool.write(b, Lazily(fragment, lo, hi), pack=PackedSlice.pack)
            spool.write(b, Lazily(lambda i: (entry(i), placement(i)), lo, hi), kind="plan", pack=PlannedFiles.pack)
        plan.spilled, plan._spool = True, spool
    start = time.perf_counter()
    setup = start - setup
    repo = open_repository(spec, create=True)
    state = read_cube_state(repo, spec, "build")
    repo = set_manifest_splitting(repo, manifest_split(plan, batch_files))
    info = RunInfo("p4", "build")
    stage_prepare(repo, spec, state, plan, spool, info, {})
    refs = 0
    if mode == "pipeline":
        ahead = WorkAhead()  # as the build does: the next batch is read back while one commits
        for b in range(n_batches):
            _, r = stage_batch(repo, spec, state, plan, spool, b, info, work=ahead.take(b),
                               while_committing=lambda epoch: ahead.start(plan, spool, b + 1, info, epoch))
            refs += r
        ahead.close()
    else:
        # Icechunk's own API on the same arrays and commits, without the pipeline around it
        per_var = [(v.path, (1, 1) + frag.arrays[v.path].lengths.shape, frag.arrays[v.path].offsets.ravel().astype("u8"),
                    frag.arrays[v.path].lengths.ravel().astype("u8")) for v in schema.by_role("data") if v.kind == "virtual"]
        assert all(len(grid) == 6 and grid[2] == 1 for _, grid, _, _ in per_var), per_var
        for b in range(n_batches):
            session = repo.writable_session(spec.repo.staging)
            st = session.store
            lo, hi = b * batch_files, min(n_files, (b + 1) * batch_files)
            if mode == "per-object":  # one call per object and variable, each with the object's own checksum
                for i in range(lo, hi):
                    (p, m), t = where(i)
                    u = url(i)
                    for path, grid, offs, lens in per_var:
                        st.set_virtual_refs_arr(path, grid, [u] * offs.size, offs, lens, arr_offset=(p, m, t, 0, 0, 0),
                                                checksum=f"etag-{i:08d}")
                        refs += offs.size
            elif mode == "specs":  # one call per cell and variable, a VirtualChunkSpec per ref with its object's checksum
                from icechunk import VirtualChunkSpec
                for c0 in range(lo, hi, steps):
                    (p, m), _ = where(c0)
                    files = range(c0, min(hi, c0 + steps))
                    for path, grid, offs, lens in per_var:
                        idx = list(np.ndindex(*grid[3:]))
                        ol, ll = offs.tolist(), lens.tolist()
                        specs = [VirtualChunkSpec([p, m, i % steps, *ix], url(i), o, n, etag_checksum=f"etag-{i:08d}")
                                 for i in files for ix, o, n in zip(idx, ol, ll)]
                        st.set_virtual_refs(path, specs)
                        refs += len(specs)
            else:  # "bulk": one call per cell and variable, no checksums (FACTS.md's hand-tuned way)
                for c0 in range(lo, hi, steps):
                    (p, m), _ = where(c0)
                    files = range(c0, min(hi, c0 + steps))
                    for path, grid, offs, lens in per_var:
                        locations = [url(i) for i in files for _ in range(offs.size)]
                        st.set_virtual_refs_arr(path, (1, 1, len(files)) + grid[3:], locations, np.tile(offs, len(files)),
                                                np.tile(lens, len(files)), arr_offset=(p, m, 0, 0, 0, 0))
                        refs += offs.size * len(files)
            session.commit(f"p4 {mode}: batch {b + 1}/{n_batches}")
    seconds = time.perf_counter() - start
    print(json.dumps({"refs": refs, "files": n_files, "batches": n_batches, "seconds_in_process": seconds, "spool_seconds": setup}))
""")

MODES = {
    "pipeline": "icefloe's stage_prepare + stage_batch: refs, ledger rows, one commit per batch, read from the spool",
    "per-object": "Icechunk's set_virtual_refs_arr directly, one call per object and variable with the "
    "object's own checksum, same arrays and commits: the floor for any writer that keeps per-object ETags",
    "specs": "Icechunk's set_virtual_refs directly, one call per cell and variable, a VirtualChunkSpec per ref "
    "with its object's own checksum, same arrays and commits: the floor for the way icefloe writes small blocks",
    "bulk": "Icechunk's set_virtual_refs_arr directly, one call per cell and variable, no checksums, "
    "same arrays and commits (FACTS.md's hand-tuned way)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refs", type=int, default=10_000_000)
    ap.add_argument("--refs-per-batch", type=int, default=500_000)
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    a = ap.parse_args()
    work = (WORK / "p4").resolve()
    files = a.refs // 8
    results = {}
    for mode in a.modes:
        log(f"{mode}: committing {a.refs} refs ({files} objects) in batches of {a.refs_per_batch} refs")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        m = run_measured(
            [*python(SCRIPT), str(work), str(files), str(a.refs_per_batch // 8), mode], env={"ICECHUNK_LOG": "error"}
        )
        assert m.returncode == 0, m.stderr[-3000:]
        inner = json.loads(m.stdout.strip().splitlines()[-1])
        results[mode] = {
            "refs": inner["refs"],
            "objects": files,
            "batches": inner["batches"],
            "wall_seconds": m.seconds,
            "commit_seconds": inner["seconds_in_process"],
            "spool_seconds": inner["spool_seconds"],
            "peak_rss_mb": m.peak_rss_mb,
        }
        log(f"  {json.dumps(results[mode])}")
    if "bulk" in results:  # the target's ratio, of the commits' own time (the spool is written before)
        for r in results.values():
            r["x_bulk"] = round(r["commit_seconds"] / results["bulk"]["commit_seconds"], 2)
    out = save(
        f"p4_commit_{a.refs // 1_000_000}M",
        {
            "results": results,
            "modes": MODES,
            "targets": {"x_bulk": 1.3, "peak_rss_mb": 1024},
            "icechunk_low_level_from_facts": {
                "default": {"seconds": 86.8, "peak_rss_mb": 5100},
                "batched_0.5M_split_0.5M": {"seconds": 20.3, "peak_rss_mb": 1200},
            },
            "command": f"python -m benchmarks.p4_commit --refs {a.refs} --modes {' '.join(a.modes)}",
        },
    )
    log(f"wrote {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
