"""Warm flow runs: the runner starts each flow run in a process forked from the fork server, which has
done the imports already; the run is an ordinary Prefect flow run, in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from prefect import flow
    from prefect.flow_engine import run_flow_in_subprocess

    @flow
    def probe(out: str) -> None:
        import gc, os, sys
        with open(out, "w") as f:
            json.dump({"pid": os.getpid(), "ppid": os.getppid(), "preloaded": "tabnanny" in sys.modules,
                       "frozen": gc.get_freeze_count()}, f)

    if __name__ == "__main__":
        if sys.argv[2] == "warm":
            from flows.services.warm import use_warm_processes
            use_warm_processes(["tabnanny", "prefect.flow_engine"])
        process = run_flow_in_subprocess(probe, parameters={"out": sys.argv[1]})
        process.join()
        print(json.dumps({"runner": os.getpid(), "exitcode": process.exitcode, "kind": type(process).__name__}))
""")


@pytest.mark.parametrize("mode", ["warm", "cold"])
def test_flow_runs_start_from_the_warm_fork_server(prefect_server: str, tmp_path: Path, mode: str) -> None:
    import json

    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    out = tmp_path / "child.json"
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script), str(out), mode], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runner = json.loads(done.stdout.strip().splitlines()[-1])
    child = json.loads(out.read_text())
    assert runner["exitcode"] == 0 and child["pid"] != runner["runner"]  # a process of its own either way
    if mode == "warm":
        assert runner["kind"] == "ForkServerProcess"
        assert child["preloaded"]  # imported by the fork server, not by the flow
        assert child["ppid"] != runner["runner"]  # forked by the fork server
        assert child["frozen"] > 10_000  # the fork server's heap, which the run's collections leave alone
    else:
        assert runner["kind"] == "SpawnProcess" and not child["preloaded"] and child["frozen"] == 0
