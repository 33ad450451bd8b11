"""Shared helpers for icefloe's benchmarks: timing whole commands, peak memory of a process tree,
machine facts, and writing results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = Path(os.environ.get("ICEFLOE_BENCH_DIR", HERE / "work"))
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent
PACKAGES = ("icechunk", "virtualizarr", "zarr", "xarray", "h5py", "obstore", "prefect", "lithops", "numpy")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024
    return {
        "cpus": os.cpu_count(),
        "memory_mb": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {p: metadata.version(p) for p in PACKAGES},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _tree_rss_kb(pid: int) -> dict[int, int]:
    """Resident memory (kB) of a process and each of its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ppid = int(fields[1])
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss[int(entry)] = int(line.split()[1])
                        break
            children.setdefault(ppid, []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    tree, stack = {}, [pid]
    while stack:
        p = stack.pop()
        tree[p] = rss.get(p, 0)
        stack.extend(children.get(p, []))
    return tree


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float
    returncode: int
    stdout: str = ""
    stderr: str = ""
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (s, main MB, tree MB) each second
    peak_breakdown_mb: dict[str, float] = field(default_factory=dict)


def run_measured(
    cmd: list[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    interval: float = 0.1,
    timeout: float = 7200,
) -> Measured:
    """Run a command; its wall time as a user sees it and the peak RSS of its whole process tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    peak = 0
    at_peak: dict[int, int] = {}
    samples: list[tuple[float, float, float]] = []
    done = threading.Event()

    def watch() -> None:
        nonlocal peak, at_peak
        while not done.is_set():
            tree = _tree_rss_kb(proc.pid)
            if sum(tree.values()) > peak:
                peak, at_peak = sum(tree.values()), tree
            t = time.perf_counter() - start
            if not samples or t - samples[-1][0] >= 1.0:
                samples.append(
                    (round(t, 1), round(tree.get(proc.pid, 0) / 1024, 1), round(sum(tree.values()) / 1024, 1))
                )
            done.wait(interval)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate(timeout=timeout)
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    breakdown = {("main" if p == proc.pid else f"child {p}"): round(kb / 1024, 1) for p, kb in at_peak.items()}
    return Measured(seconds, peak / 1024, proc.returncode, out, err, samples, breakdown)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2, default=str) + "\n")
    return path


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
