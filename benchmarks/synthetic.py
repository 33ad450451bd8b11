"""A cube as large as the archive icefloe exists for, written without parsing 500,000 files.

    python -m benchmarks.synthetic SPEC --polygons 50 --months 100 --steps 100

It prints one line per batch as it goes and, last, a JSON object: objects, refs, seconds.

The source of SPEC must hold the demo tiles of cell polygon 0, month 1 (``lib.local.archive``'s
layout, pattern ``polygon_{polygon:d}/month_{month:d}/step_*.nc``), at least steps 0 and 1. A real
plan of those tiles gives the schema, encodings and shared coordinates; then every one of the
``polygons x months x steps`` objects is written through the build's own staging code
(``stage_prepare``, ``stage_batch`` a batch at a time, ``stage_run_record``, ``publish``): its refs
(the template tile's offsets and lengths, at the object's own URL, as a real build's manifests hold
them: one location per object), its ledger row with its own ETag and its cell's digests, the time
axis and the ledger's index. The tiles that exist are written as themselves, with their real ETags.

The other objects are not in the bucket, so their chunks cannot be read: whatever reads them on an
update's path fails loudly. That is on purpose -- an update into this cube must touch only what it
changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from lib.layout import Axes, Placement
from lib.parsing.fragment import PackedSlice
from lib.pipeline import Step, run_steps
from lib.planning import Plan, SpilledURLs
from lib.repository import open_repository, publish, set_manifest_splitting
from lib.runs import CubeRun
from lib.spec import Spec, load_spec
from lib.spool import SLICE
from lib.staging import RunInfo, manifest_split, stage_batch, stage_prepare, stage_run_record
from lib.state import read_cube_state
from lib.validation import FileEntry, native_digest

__all__ = ["write_synthetic_cube"]


def _etag(url: str) -> str:
    return '"' + hashlib.md5(url.encode()).hexdigest() + '"'


class _ByIndex(dict):  # type: ignore[type-arg]
    """A read-only mapping of URL to a value made on demand from the object's number."""

    def __init__(self, number: dict[str, int], make: Any) -> None:
        super().__init__()
        self.number, self.make = number, make

    def __getitem__(self, url: str) -> Any:
        return self.make(url)

    def __contains__(self, url: object) -> bool:
        return True

    def __len__(self) -> int:
        return len(self.number)


def write_synthetic_cube(
    spec: Spec, polygons: int, months: int, steps: int, batch_files: int = 62_500, log: Any = print
) -> dict[str, Any]:
    """Write the cube of SPEC as a build of ``polygons x months x steps`` demo tiles leaves it; returns
    counts and timings."""
    started = time.perf_counter()
    real = CubeRun(spec, "build", "synthetic-template", write=False)
    run_steps(real, until=Step.PLAN)
    plan = real.plan_
    assert plan is not None and plan.schema is not None and not plan.quarantined, "the template tiles must land"
    template_entry = next(iter(plan.entries.values()))
    fragments = {f.url: f for b in range(len(real.batches)) for f in real.spool.read(b)}
    template = fragments[template_entry.url].references_only()
    cell_var = next(iter(template_entry.cell))  # the demo tiles' one variable without a concat dim
    cell_attrs = plan.schema.variables[cell_var].metadata.get("attributes", {})

    def cell_value(p: int, m: int) -> np.ndarray:
        return np.asarray(np.float32(1.0 + p + 0.1 * m)).reshape(np.shape(template.arrays[cell_var].values))

    probe = dict(template_entry.fields)
    assert (
        native_digest(cell_value(int(probe["polygon"]), int(probe["month"])), cell_attrs)
        == template_entry.cell[cell_var]
    )

    base = spec.source.url.rstrip("/") + "/"
    urls = [
        f"{base}polygon_{p:03d}/month_{m:02d}/step_{t:04d}.nc"
        for p in range(polygons)
        for m in range(1, months + 1)
        for t in range(steps)
    ]
    number = {u: i for i, u in enumerate(urls)}

    def where(i: int) -> tuple[int, int, int]:
        cell, t = divmod(i, steps)
        p, m = divmod(cell, months)
        return p, m + 1, t

    def entry(url: str) -> FileEntry:
        if url in plan.entries:
            return plan.entries[url]
        p, m, _ = where(number[url])
        return dataclasses.replace(
            template_entry,
            url=url,
            etag=_etag(url),
            checksum=_etag(url),
            fields=(("polygon", p), ("month", m)),
            cell={cell_var: native_digest(cell_value(p, m), cell_attrs)},
        )

    def placement(url: str) -> Placement:
        p, m, t = where(number[url])
        return Placement(url, (p, m - 1), (("time", t, t + 1),))

    def fragment(url: str) -> Any:
        if url in fragments:
            return fragments[url].references_only()
        p, m, _ = where(number[url])
        arrays = dict(template.arrays)
        arrays[cell_var] = dataclasses.replace(arrays[cell_var], values=cell_value(p, m))
        return dataclasses.replace(template, url=url, arrays=arrays)

    class Fragments:
        """The run's spool, as the parse workers would have left it: a batch's fragments packed a
        slice at a time, made when read."""

        def slices(self, batch: int, kind: str = "fragments") -> Iterator[PackedSlice]:
            assert kind == "fragments", "the synthetic plan is never spilled"
            mine = urls[batch * batch_files : (batch + 1) * batch_files]
            for start in range(0, len(mine), SLICE):
                yield PackedSlice.pack([fragment(u) for u in mine[start : start + SLICE]])

    axes = Axes(
        pattern={"polygon": list(range(polygons)), "month": list(range(1, months + 1))},
        concat={"time": np.arange(steps, dtype=plan.axes.concat["time"].dtype)},
    )
    batches: list[list[str] | SpilledURLs] = [urls[b : b + batch_files] for b in range(0, len(urls), batch_files)]
    synthetic = Plan(
        schema=plan.schema,
        axes=axes,
        fresh=True,
        placements=_ByIndex(number, placement),
        entries=_ByIndex(number, entry),
        batches=batches,
        grows=True,
        shared_source=template_entry.url,
    )
    repo = open_repository(spec, create=True)
    assert repo is not None
    state = read_cube_state(repo, spec, "build")
    repo = set_manifest_splitting(repo, manifest_split(synthetic, batch_files))
    info = RunInfo(str(uuid.uuid4()), "build")
    spool = Fragments()
    stage_prepare(repo, spec, state, synthetic, spool, info, {})  # type: ignore[arg-type]
    refs = 0
    for b in range(len(batches)):
        _, n = stage_batch(repo, spec, state, synthetic, spool, b, info)  # type: ignore[arg-type]
        refs += n
        log(f"  batch {b + 1}/{len(batches)}: {refs} refs")
    staged = stage_run_record(repo, spec, state, info, "", time.perf_counter() - started)
    publish(repo, spec, staged, state.main)
    real.close()
    return {"objects": len(urls), "refs": refs, "seconds": time.perf_counter() - started}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec")
    ap.add_argument("--polygons", type=int, default=50)
    ap.add_argument("--months", type=int, default=100)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-files", type=int, default=62_500)
    a = ap.parse_args()
    result = write_synthetic_cube(load_spec(a.spec), a.polygons, a.months, a.steps, a.batch_files)
    print(json.dumps(result), flush=True)  # the last line: what a benchmark driving this reads back


if __name__ == "__main__":
    main()
