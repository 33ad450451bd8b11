"""Event-to-data latency: from the PUT of a new object to its data being readable on main, through the
real event path (SeaweedFS filer webhook → icefloe bridge → Prefect event → served ingest deployment).

    python benchmarks/p6_latency.py [--objects 20]

Objects are PUT one at a time, each after the previous one is on main, so every figure is one
object's own latency. The breakdown comes from Prefect's records of the run that ingested it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from benchmarks.common import WORK, log, save
from flows.local.stack import LocalStack, wait_for
from lib.local.archive import DemoShape, step_path, write_step

STAGES = {
    "parse": "parse-batch",
    "plan": "plan-cube",
    "prepare": "prepare-staging",
    "commit": "commit-batch",
    "checks": "check-staging",
    "publish": "publish-cube",
}


def _ts(value: Any) -> float:
    return value.timestamp() if value is not None else float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def breakdown(stack: LocalStack, flow_run_id: str, put_at: float, visible_at: float) -> dict[str, float]:
    stack_ctx, client = stack._client()
    with stack_ctx:
        run = client.read_flow_run(flow_run_id)
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    out = {"event_delivery": _ts(run.created) - put_at}
    first_task = min((_ts(t.start_time) for t in tasks if t.start_time), default=float("nan"))
    out["flow_run_startup"] = first_task - _ts(run.created)
    for stage, prefix in STAGES.items():
        out[stage] = sum((t.total_run_time.total_seconds() for t in tasks if t.name.startswith(prefix)), 0.0)
    out["total"] = visible_at - put_at
    out["other"] = out["total"] - sum(v for k, v in out.items() if k != "total")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=20)
    a = ap.parse_args()
    work = (WORK / "p6").resolve()
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    shape = DemoShape(polygons=1, months=1, steps=1)
    with LocalStack(work / "stack") as stack:
        stack.start_prefect()
        s3 = stack.start_s3("/buckets/archive/latency/")
        stack.start_bridge()
        import os

        os.environ.update(s3.env())
        client = s3.client()
        local = work / "local"

        def put(t: int) -> str:
            path = write_step(step_path(local, 0, 1, t), 0, 1, t, shape)
            key = f"latency/{path.relative_to(local)}"
            client.upload_file(str(path), "archive", key)  # type: ignore[attr-defined]
            return f"s3://archive/{key}"

        for t in range(2):
            put(t)
        spec_path = work / "cube.yaml"
        spec_path.write_text(
            f"name: latency\nsource:\n  url: s3://archive/latency/\n"
            f'  pattern: "polygon_{{polygon:d}}/month_{{month:d}}/step_*.nc"\n'
            f"  storage: {s3.storage_yaml()}\nconcat: [time]\nrepo:\n  url: s3://cubes/latency\n"
            f"execution: {{executor: threads, workers: 2}}\n"
        )
        built = stack.icefloe("build", str(spec_path), "--json")
        assert built.returncode == 0, built.stderr[-3000:]
        stack.serve(spec_path, "--sweep-cron", "0 0 1 1 *")
        wait_for("the ingest deployment's trigger", lambda: stack.trigger_ready("ingest_objects", "latency-ingest"))
        time.sleep(3)

        from lib.ledger import INGESTED, read_rows
        from lib.repository import open_repository
        from lib.spec import load_spec

        spec = load_spec(spec_path)

        def row_of(url: str) -> Any:
            repo = open_repository(spec)
            assert repo is not None
            for row in read_rows(repo.readonly_session(branch="main").store):
                if row.url == url and row.status == INGESTED:
                    return row
            return None

        samples = []
        for i in range(a.objects):
            t0 = time.time()
            url = put(2 + i)
            wait_for(f"object {i} on main", lambda url=url: row_of(url) is not None, timeout=300, poll=0.1)
            visible = time.time()
            row = row_of(url)
            parts = breakdown(stack, row.run, t0, visible)
            samples.append({"url": url, **parts})
            log(
                f"object {i + 1}/{a.objects}: {parts['total']:.1f} s "
                f"(event {parts['event_delivery']:.1f}, start-up {parts['flow_run_startup']:.1f}, "
                f"parse {parts['parse']:.2f}, commit {parts['commit']:.2f}, checks {parts['checks']:.2f})"
            )
            time.sleep(float(os.environ.get("P6_GAP", "1")))

    keys = [k for k in samples[0] if k != "url"]
    summary = {
        k: {
            "p50": percentile([s[k] for s in samples], 0.5),
            "p95": percentile([s[k] for s in samples], 0.95),
            "mean": statistics.fmean([s[k] for s in samples]),
        }
        for k in keys
    }
    out = save(
        "p6_latency",
        {
            "objects": a.objects,
            "summary": summary,
            "samples": samples,
            "command": f"python -m benchmarks.p6_latency --objects {a.objects}",
        },
    )
    log(f"wrote {out}")
    log(json.dumps({k: round(v["p50"], 2) for k, v in summary.items()}))


if __name__ == "__main__":
    main()
