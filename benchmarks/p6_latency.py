"""Event-to-data latency: from the PUT of a new object to its data being readable on main, through the
real event path (SeaweedFS filer webhook → icefloe bridge → Prefect event → served ingest deployment),
into cubes of different sizes measured side by side in one run.

    python -m benchmarks.p6_latency --sizes 10000 500000 --objects 20 [--database sqlite|postgres]

Results go to ``results/p6_latency.json`` (``p6_latency_postgres.json`` with ``--database postgres``).

For each size, a fresh stack (Prefect server, SeaweedFS, bridge): the bucket receives the two real
template tiles of cell polygon 0, month 1, the cube of ``size`` objects is written by
:mod:`benchmarks.synthetic` (as a build of that many demo tiles leaves it: refs, ledger, its index,
the time axis), then ``icefloe serve`` runs the cube's deployments and new real tiles are PUT one at a
time, each after the previous one is on main, so every figure is one object's own latency. They
continue the time axis of that cell (steps ``steps``, ``steps + 1``…), so each is ingested, not
deferred or refused; a run that does otherwise stops the benchmark. The first ``--warmup`` objects
after the deployments start are measured but left out of the summary.

An event-triggered run lists the whole source; here the source holds only the real tiles, so the
listing is small whatever the cube's size. ``--full-listing`` times, apart, what discovery would do
with a listing of every object of the cube (spooling it and sorting it against the ledger's index).

"On main" is seen from the ledger's index (one shard per lookup, read only when main's tip moved),
so the measuring side costs the machine little even at 500,000 objects. The breakdown comes from
Prefect's records of the run that ingested the object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, WORK, log, run_measured, save
from flows.local.stack import LocalStack, wait_for
from lib.local.archive import EPOCH, DemoShape, step_path, write_step

STAGES = {
    "open": "open-cube",
    "discover": "discover-objects",
    "parse": "parse-batch",
    "plan": "plan-cube",
    "prepare": "prepare-staging",
    "commit": "commit-batch",
    "checks": "check-staging",
    "publish": "publish-cube",
    "report": "report-run",
}
STEPS = 100  # time steps per cell, as the demo's and P2's synthetic cubes have


def _ts(value: Any) -> float:
    return value.timestamp() if value is not None else float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def shape_of(size: int) -> tuple[int, int, int]:
    """(polygons, months, steps) of a cube of ``size`` objects: 100 steps a cell, 10 months a polygon up
    to 1,000 cells (10,000 objects: 10 x 10 x 100), 100 beyond (500,000: 50 x 100 x 100)."""
    cells, rest = divmod(size, STEPS)
    months = 10 if cells <= 1000 else 100
    polygons, rest2 = divmod(cells, months)
    if rest or rest2 or not polygons:
        raise SystemExit(f"--sizes: {size} is not a multiple of {STEPS * months} objects")
    return polygons, months, STEPS


def load() -> dict[str, Any]:
    """The machine's load, as `uptime` tells it."""
    text = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {"uptime": text, "loadavg": list(os.getloadavg())}


def breakdown(stack: LocalStack, flow_run_id: str, put_at: float, visible_at: float) -> dict[str, float]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    stack_ctx, client = stack._client()
    with stack_ctx:
        run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    out = {"event_delivery": _ts(run.created) - put_at}
    first_task = min((_ts(t.start_time) for t in tasks if t.start_time), default=float("nan"))
    out["flow_run_startup"] = first_task - _ts(run.created)
    for stage, prefix in STAGES.items():
        out[stage] = sum((t.total_run_time.total_seconds() for t in tasks if t.name.startswith(prefix)), 0.0)
    out["total"] = visible_at - put_at
    out["other"] = out["total"] - sum(v for k, v in out.items() if k != "total")
    return out


class MainWatch:
    """Whether an object is on main, from the ledger's index of main's tip; the tip is looked up on each
    call, the index (one shard) only read when the tip moved."""

    def __init__(self, spec_path: Path) -> None:
        from lib.repository import open_repository
        from lib.spec import load_spec

        repo = open_repository(load_spec(spec_path))
        assert repo is not None
        self.repo = repo
        self.tip = ""
        self.index: Any = None
        self.lookups = 0

    def status(self, url: str) -> str | None:
        from lib.ledger_index import LedgerIndex

        tip = self.repo.lookup_branch("main")
        if tip != self.tip:
            self.tip, self.index = tip, LedgerIndex(self.repo.readonly_session(snapshot_id=tip).store)
            self.lookups += 1
        row = self.index.get(url)
        return str(row.status) if row is not None else None

    def run_of(self, url: str) -> dict[str, Any]:
        """The log's row of the object and the record of the run that wrote it (from the logs' last
        entries only)."""
        from lib.ledger import iter_rows, ledger_size, read_runs

        store = self.repo.readonly_session(snapshot_id=self.tip).store
        rows = [r for r in iter_rows(store, max(0, ledger_size(store) - 64)) if r.url == url]
        assert rows, f"{url} is in the index of main but not in the last rows of its log"
        row = rows[-1]
        record: dict[str, Any] = next((r for r in reversed(read_runs(store)) if r.get("run") == row.run), {})
        return {"row": row, "record": record}


def verify(spec_path: Path, local: Path, step: int) -> dict[str, Any]:
    """Main's time axis ends at ``step`` and the last object's data reads back equal to its file."""
    import numpy as np
    import xarray as xr

    from lib.repository import open_repository
    from lib.spec import load_spec

    repo = open_repository(load_spec(spec_path))
    assert repo is not None
    ds = xr.open_zarr(repo.readonly_session(branch="main").store, consolidated=False, chunks=None)
    last = ds["time"].values[-1]
    expected_time = (EPOCH + np.timedelta64(step, "D")).astype("datetime64[ns]")
    with xr.open_dataset(step_path(local, 0, 1, step), engine="h5netcdf") as f:
        want = f["DIC"].values[0]
    got = ds["DIC"].isel(polygon=0, month=0, time=-1).values
    ok = bool(last == expected_time and np.array_equal(got, want))
    return {"time_length": int(ds.sizes["time"]), "last_time": str(last), "data_equal": ok}


def full_listing(spec_path: Path, polygons: int, months: int, steps: int) -> dict[str, Any]:
    """What an event-triggered run's discovery would cost if the bucket held every object of the cube:
    the cube's objects, as a listing would name them (at the ETags the cube has for them), matched
    against the spec's pattern, spooled a page of 10,000 at a time and sorted against main's ledger
    index, as ``list_sources`` and ``classify_objects`` do. The S3 LIST itself is not included (the
    bucket holds only real tiles)."""
    import datetime as dt
    import tempfile

    from benchmarks.synthetic import _etag
    from lib.discovery import SourceObject, classify_objects, compile_pattern
    from lib.ledger_index import LedgerIndex
    from lib.listing import ObjectSpool
    from lib.repository import open_repository
    from lib.spec import load_spec

    spec = load_spec(spec_path)
    repo = open_repository(spec)
    assert repo is not None
    base = spec.source.url.rstrip("/") + "/"
    pattern = compile_pattern(spec.source.pattern)
    when = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    index = LedgerIndex(repo.readonly_session(branch="main").store)
    with tempfile.TemporaryDirectory() as tmp:
        spool = ObjectSpool(Path(tmp))
        page: list[SourceObject] = []
        for p in range(polygons):
            for m in range(1, months + 1):
                for t in range(steps):
                    path = f"polygon_{p:03d}/month_{m:02d}/step_{t:04d}.nc"
                    values = pattern.match(path)
                    assert values is not None
                    page.append(SourceObject(base + path, _etag(base + path), 0, when, tuple(values.items())))
                    if len(page) == 10_000:
                        spool.add(page, index.shard)
                        page = []
        spool.add(page, index.shard)
        spooled = time.perf_counter()
        found = classify_objects(spool, index)
        sorted_at = time.perf_counter()
        out = {
            "objects": polygons * months * steps,
            "spool_seconds": round(spooled - started, 2),
            "sort_seconds": round(sorted_at - spooled, 2),
            "unchanged": len(found.unchanged),
            "pending": len(found.pending),
            "changed": len(found.changed),
        }
    return out


def measure(size: int, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    polygons, months, steps = shape_of(size)
    name = f"latency-{size}"
    shape = DemoShape(polygons=1, months=1, steps=1)
    local = work / "local"
    log(f"{name}: {polygons} polygons x {months} months x {steps} steps, database {a.database}")
    result: dict[str, Any] = {"objects_in_cube": size, "shape": [polygons, months, steps], "load_before": load()}
    with LocalStack(work / "stack") as stack:
        if a.database == "postgres":
            stack.start_postgres()
        stack.start_prefect()
        s3 = stack.start_s3(f"/buckets/archive/{name}/")
        stack.start_bridge()
        os.environ.update(s3.env())
        client = s3.client()

        def upload(t: int) -> str:
            path = step_path(local, 0, 1, t)
            key = f"{name}/{path.relative_to(local)}"
            client.upload_file(str(path), "archive", key)  # type: ignore[attr-defined]
            return f"s3://archive/{key}"

        new = list(range(steps, steps + a.warmup + a.objects))
        for t in [0, 1, *new]:  # the files, written before any clock starts
            write_step(step_path(local, 0, 1, t), 0, 1, t, shape)
        for t in (0, 1):
            upload(t)
        spec_path = work / "cube.yaml"
        spec_path.write_text(
            f"name: latency\nsource:\n  url: s3://archive/{name}/\n"
            f'  pattern: "polygon_{{polygon:d}}/month_{{month:d}}/step_*.nc"\n'
            f"  storage: {s3.storage_yaml()}\nconcat: [time]\nrepo:\n  url: s3://cubes/{name}\n"
            f"execution: {{executor: threads, workers: 2}}\n"
        )
        log(f"{name}: writing the synthetic cube")
        cmd = [sys.executable, "-m", "benchmarks.synthetic", str(spec_path)]
        cmd += ["--polygons", str(polygons), "--months", str(months), "--steps", str(steps)]
        m = run_measured(cmd, env=stack.env, cwd=ROOT, interval=1.0)
        assert m.returncode == 0, m.stderr[-3000:]
        written = json.loads(m.stdout.strip().splitlines()[-1])
        assert written["objects"] == size, written
        result["refs"] = written["refs"]
        result["synthetic_cube"] = {"seconds": round(m.seconds, 1), "peak_rss_mb": round(m.peak_rss_mb)}
        log(f"{name}: {written['refs']:,} refs written in {m.seconds:.0f} s (peak {m.peak_rss_mb:.0f} MB)")

        stack.serve(spec_path, "--sweep-cron", "0 0 1 1 *")
        wait_for("the ingest deployment's trigger", lambda: stack.trigger_ready("ingest_objects", "latency-ingest"))
        time.sleep(3)
        watch = MainWatch(spec_path)
        samples: list[dict[str, Any]] = []
        warmup: list[dict[str, Any]] = []
        for i, t in enumerate(new):
            put_at = time.time()
            url = upload(t)
            wait_for(f"{url} on main", lambda: watch.status(url) is not None, timeout=300, poll=0.1)  # noqa: B023
            visible = time.time()
            found = watch.run_of(url)
            row, record = found["row"], found["record"]
            if row.status != "ingested":
                raise SystemExit(f"{url} was {row.status}, not ingested: {row.reason}")
            assert record.get("ingested", 0) >= 1 and not record.get("quarantined"), record
            parts = breakdown(stack, record.get("flow_run") or row.run, put_at, visible)
            sample = {"url": url, "status": str(row.status), **parts, "loadavg_1min": os.getloadavg()[0]}
            (warmup if i < a.warmup else samples).append(sample)
            log(
                f"{name} object {i + 1}/{len(new)}{' (warm-up)' if i < a.warmup else ''}: {parts['total']:.2f} s "
                f"(event {parts['event_delivery']:.2f}, start-up {parts['flow_run_startup']:.2f}, "
                f"discover {parts['discover']:.2f}, parse {parts['parse']:.2f}, plan {parts['plan']:.2f}, "
                f"commit {parts['commit']:.2f}, checks {parts['checks']:.2f}, other {parts['other']:.2f})"
            )
            time.sleep(a.gap)
        result["verified"] = verify(spec_path, local, new[-1])
        result["index_reads"] = watch.lookups
        log(f"{name}: main reads back: {result['verified']}")
        if a.full_listing:
            result["full_listing"] = full_listing(spec_path, polygons, months, steps)
            log(f"{name}: discovery over a listing of every object: {result['full_listing']}")
    keys = [k for k in samples[0] if k not in ("url", "status", "loadavg_1min")]
    result["summary"] = {
        k: {
            "p50": percentile([s[k] for s in samples], 0.5),
            "p95": percentile([s[k] for s in samples], 0.95),
            "mean": statistics.fmean([s[k] for s in samples]),
        }
        for k in keys
    }
    result["load_after"] = load()
    result["warmup"] = warmup
    result["samples"] = samples
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 500_000])
    ap.add_argument("--objects", type=int, default=20, help="objects measured per size")
    ap.add_argument("--warmup", type=int, default=1, help="objects PUT first after serve starts, not summarised")
    ap.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite", help="the Prefect server's")
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between an object on main and the next PUT")
    ap.add_argument("--keep", action="store_true", help="keep each size's stack directory")
    ap.add_argument(
        "--full-listing",
        action="store_true",
        help="also time discovery's sort of a listing that names every object of the cube against its index",
    )
    a = ap.parse_args()
    root = (WORK / "p6").resolve()
    shutil.rmtree(root, ignore_errors=True)
    sizes: dict[str, Any] = {}
    for size in a.sizes:
        sizes[str(size)] = measure(size, a, root / str(size))
        if not a.keep:
            shutil.rmtree(root / str(size), ignore_errors=True)
        s = sizes[str(size)]["summary"]["total"]
        log(f"{size}: p50 {s['p50']:.2f} s, p95 {s['p95']:.2f} s")
    small, large = str(min(a.sizes)), str(max(a.sizes))
    ratio = {
        q: sizes[large]["summary"]["total"][q] / sizes[small]["summary"]["total"][q] for q in ("p50", "p95", "mean")
    }
    command = f"python -m benchmarks.p6_latency --sizes {' '.join(map(str, a.sizes))} --objects {a.objects}"
    command += f" --database {a.database}" if a.database != "sqlite" else ""
    command += " --full-listing" if a.full_listing else ""
    out = save(
        "p6_latency" if a.database == "sqlite" else f"p6_latency_{a.database}",
        {
            "command": command,
            "database": a.database,
            "objects": a.objects,
            "warmup": a.warmup,
            "ratio": {"sizes": f"{large}/{small}", **ratio},
            "sizes": sizes,
        },
    )
    log(f"wrote {out}")
    log(f"{large}/{small}: p50 x{ratio['p50']:.2f}, p95 x{ratio['p95']:.2f}")
    for size, r in sizes.items():
        log(f"{size}: " + json.dumps({k: round(v["p50"], 2) for k, v in r["summary"].items()}))


if __name__ == "__main__":
    main()
