"""P5 by step: where a build's memory goes. The steps of one build run in this process (no Prefect, the
processes executor as configured), and the client's RSS is sampled every 20 ms; for each step the
peak while it ran and the RSS after it. Two archive sizes side by side show which steps grow with the
archive (parse workers are separate processes and not counted: see P5).

    python -m benchmarks.p5_steps [--sizes 10000 50000]

Archives are copies of one real tile (benchmarks/generate.py --copies), as in P5.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import textwrap

from benchmarks.common import log, python, save
from benchmarks.p5_memory import copies_cube

SCRIPT = textwrap.dedent("""
    from lib.memory import limit_arenas
    limit_arenas()  # as the icefloe command does first thing
    import json, sys, threading, time, uuid
    from lib.pipeline import Step, run_steps
    from lib.runs import CubeRun
    from lib.spec import load_spec

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 1e6

    def main():
        spec = load_spec(sys.argv[1])
        peak = [rss()]

        def sample():
            while True:
                peak[0] = max(peak[0], rss())
                time.sleep(0.02)

        threading.Thread(target=sample, daemon=True).start()
        run = CubeRun(spec, "build", str(uuid.uuid4()))
        steps = {}

        def perform(step, *args):
            before = rss()
            peak[0] = before
            result = getattr(run, step.value)(*args)
            seen = steps.setdefault(step.value, {"peak_mb": 0.0, "after_mb": 0.0, "calls": 0})
            seen["peak_mb"] = round(max(seen["peak_mb"], peak[0]), 1)
            seen["after_mb"] = round(rss(), 1)
            seen["calls"] += 1
            return result

        started = time.monotonic()
        run_steps(run, perform)
        summary = run.finish()
        run.close()
        print(json.dumps({"steps": steps, "ingested": summary.ingested, "seconds": time.monotonic() - started}))

    main()
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    results = {}
    for size in a.sizes:
        run_dir, spec = copies_cube(size, f"p5-steps-{size}", a.workers)
        log(f"build of {size} files, step by step")
        done = subprocess.run([*python(SCRIPT), str(spec)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        results[str(size)] = json.loads(done.stdout.strip().splitlines()[-1])
        for step, seen in results[str(size)]["steps"].items():
            log(f"  {step:9s} peak {seen['peak_mb']:7.1f} MB, after {seen['after_mb']:7.1f} MB")
        shutil.rmtree(run_dir, ignore_errors=True)
    out = save(
        "p5_steps",
        {"results": results, "command": "python -m benchmarks.p5_steps --sizes " + " ".join(map(str, a.sizes))},
    )
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
