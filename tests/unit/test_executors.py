"""Executors outside the happy path: what is left behind when the run that owns them is killed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

KILLED_RUN = """
import os, signal
from lib.executors import PoolExecutor

pool = PoolExecutor("processes", 2)
forkserver = set(pool.map(os.getppid, [()] * 4))  # starts the workers; their parent is the forkserver
workers = {p.pid for p in pool._pool._processes.values()}
print(" ".join(map(str, sorted(workers | forkserver))), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a cancelled flow would: no clean-up runs
"""


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_worker_processes_go_when_their_run_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "pids"
    with out.open("w") as stdout:  # a file, not a pipe: lingering workers would hold a pipe open
        p = subprocess.run(
            [sys.executable, "-c", KILLED_RUN], stdout=stdout, stderr=subprocess.DEVNULL, cwd=ROOT, timeout=120
        )
    assert p.returncode == -9
    pids = [int(x) for x in out.read_text().split()]
    assert len(pids) >= 2 and os.getpid() not in pids
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.2)
    left = [pid for pid in pids if alive(pid)]
    for pid in left:  # do not leave them to the next test either
        os.kill(pid, 9)
    assert not left, f"processes of the killed run still running: {left}"


def test_workers_take_the_credentials_of_the_run_not_of_the_forkserver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The forkserver outlives runs (a served deployment, a test session); credentials that changed
    since it started (a rotated session token, another store) must reach the workers of a new run."""
    from lib.executors import PoolExecutor

    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    with PoolExecutor("processes", 1) as first:  # the forkserver starts with no token in the environment
        assert first.map(os.getenv, [("AWS_SESSION_TOKEN",)]) == [None]
    monkeypatch.setenv("AWS_SESSION_TOKEN", "rotated")
    with PoolExecutor("processes", 1) as second:
        assert second.map(os.getenv, [("AWS_SESSION_TOKEN",)]) == ["rotated"]
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    with PoolExecutor("processes", 1) as third:  # and one unset since is unset in the workers too
        assert third.map(os.getenv, [("AWS_SESSION_TOKEN",)]) == [None]
