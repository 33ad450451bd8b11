"""Crash safety with real SIGKILLs: whatever is killed when, main stays on a published snapshot and a
rerun of the same command finishes the job with every object in the cube exactly once."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import xarray as xr

from lib.ledger import read_ledger, read_moves, read_rows
from lib.local.faults import KILL_ENV, POINTS
from lib.spec import Spec, load_spec
from tests.helpers import dataset, file_url, open_repo, read_cube, spec_text, write_nc4

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CYCLES = 3  # per kill point; the random test adds kills at arbitrary moments


def write_day(root: Path, member: int, day: int) -> Path:
    return write_nc4(root / f"member_{member}" / f"day_{day:03d}.nc", dataset(day, seed=member, scalar=float(member)))


def run(cli: str, spec: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop(KILL_ENV, None)
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.run(
        [cli, "ingest", str(spec), "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def assert_exactly_once(spec: Spec, root: Path) -> None:
    """Every source object is in main's cube once (one current ledger row, its refs, its values), but
    those waiting for a gap on the axis to fill, which are nowhere in the cube."""
    repo = open_repo(spec)
    rows = read_rows(repo.readonly_session(branch="main").store)
    waiting = {
        url for url, row in read_ledger(repo.readonly_session(branch="main").store).items() if row.status == "deferred"
    }
    ingested = collections.Counter(r.url for r in rows if r.status == "ingested" and r.url not in waiting)
    files = sorted(f for f in root.rglob("*.nc") if file_url(f) not in waiting)
    assert set(ingested) == {file_url(f) for f in files}
    assert set(ingested.values()) == {1}, f"an object was ingested twice: {ingested.most_common(2)}"
    refs = collections.Counter(repo.readonly_session(branch="main").all_virtual_chunk_locations())
    assert set(refs) == {file_url(f) for f in files} and set(refs.values()) == {4}  # 4 chunks of tas per file
    cube = read_cube(spec).load()
    for member in {int(f.parent.name.split("_")[1]) for f in files}:
        member_files = sorted(f for f in (root / f"member_{member}").glob("*.nc") if file_url(f) not in waiting)
        ref = xr.concat([xr.open_dataset(f).load() for f in member_files], dim="time", data_vars="minimal")
        xr.testing.assert_identical(cube.tas.sel(member=member, drop=True).sel(time=ref.time), ref.tas)


@pytest.fixture
def crash_cube(prefect_server: str, icefloe_cli: str, tmp_path: Path) -> tuple[Path, Spec, Path]:
    root = tmp_path / "archive"
    for member in (1, 2):
        for day in range(2):
            write_day(root, member, day)
    spec_path = tmp_path / "cube.yaml"
    spec_path.write_text(
        spec_text(root, tmp_path / "cube", "member_{member:d}/day_*.nc").replace("batch_size: 4", "batch_size: 1")
    )
    p = run(icefloe_cli, spec_path)
    assert p.returncode == 0, p.stderr
    return spec_path, load_spec(spec_path), root


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_stage_then_rerun(crash_cube: tuple[Path, Spec, Path], icefloe_cli: str, point: str) -> None:
    """Each cycle's run appends a step to both members, back-fills one before the axis start (room
    opened by moving every reference), and defers one beyond a gap (filled by the next cycle)."""
    spec_path, spec, root = crash_cube
    day, first = 2, 0
    for _cycle in range(CYCLES):
        tip = open_repo(spec).lookup_branch("main")
        new = [write_day(root, member, day) for member in (1, 2)]
        first -= 1
        new.append(write_day(root, 1, first))  # a back-fill
        waits = write_day(root, 3, day + 3)  # a new member beyond a gap: waits until the steps between arrive
        day += 1
        killed = run(icefloe_cli, spec_path, kill_at=point)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert f"{KILL_ENV}={point}" in killed.stderr  # the run really reached the stage
        assert open_repo(spec).lookup_branch("main") == tip  # main is still the last published snapshot
        assert all(
            file_url(f) not in open_repo(spec).readonly_session(branch="main").all_virtual_chunk_locations()
            for f in new
        )
        again = run(icefloe_cli, spec_path)
        assert again.returncode == 0, again.stderr[-2000:]
        out = json.loads(again.stdout)
        moves = read_moves(open_repo(spec).readonly_session(branch="main").store)
        assert len(moves) == _cycle + 1, moves  # each back-fill opened room once, however the run was killed
        if _cycle == 0:
            assert [d["url"] for d in out["deferred"]] == [file_url(waits)]
        assert_exactly_once(spec, root)


def has_staged(spec: Spec) -> bool:
    """Whether staging holds work that main does not show."""
    repo = open_repo(spec)
    return bool(repo.lookup_branch(spec.repo.staging) != repo.lookup_branch("main"))


def start_ingest(cli: str, spec_path: Path) -> subprocess.Popen[bytes]:
    """An ingest in the background, with no kill point set and its output discarded."""
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    return subprocess.Popen(
        [cli, "ingest", str(spec_path), "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )


def timed_ingest(cli: str, spec_path: Path, spec: Spec) -> tuple[float, float]:
    """Run an ingest to its end, watching staging: (seconds the run took, seconds until it first had
    work on staging that main did not show)."""
    started = time.monotonic()
    proc = start_ingest(cli, spec_path)
    staged_at = None
    while proc.poll() is None:
        if staged_at is None and has_staged(spec):
            staged_at = time.monotonic() - started
        time.sleep(0.02)
    took = time.monotonic() - started
    assert proc.returncode == 0 and staged_at is not None, (proc.returncode, staged_at)
    return took, staged_at


def test_random_kills_then_rerun(crash_cube: tuple[Path, Spec, Path], icefloe_cli: str) -> None:
    """Kills at random moments of a run: each must land while the run is alive, half of them before it
    stages work and half after, and every rerun must finish the job exactly once."""
    spec_path, spec, root = crash_cube
    rng = random.Random(20261124)
    day = 2
    for member in (1, 2):  # one run without a kill: how long a run of this size takes here, today
        write_day(root, member, day)
    took, staged_at = timed_ingest(icefloe_cli, spec_path, spec)
    landed: list[tuple[float, bool]] = []  # per kill: when, and whether the run had staged work by then
    for k in range(6):
        day += 1
        for member in (1, 2):
            write_day(root, member, day)
        proc = start_ingest(icefloe_cli, spec_path)
        # half the kills at a random moment before the last run staged work; half at a random moment
        # of the time the last run had left once it had staged, counted from when this one stages
        started = time.monotonic()
        if k % 2 == 0:
            time.sleep(rng.uniform(0.15, 0.85) * staged_at)
        else:
            while proc.poll() is None and not has_staged(spec):
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.4) * (took - staged_at))
        at = time.monotonic() - started
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the run had finished before the kill: the kill landed after it"
        repo = open_repo(spec)
        landed.append((at, repo.lookup_branch(spec.repo.staging) != repo.lookup_branch("main")))
        again = run(icefloe_cli, spec_path)
        assert again.returncode == 0, again.stderr[-2000:]
        assert_exactly_once(spec, root)
        day += 1  # a run of the same size, timed, for the next kill
        for member in (1, 2):
            write_day(root, member, day)
        took, staged_at = timed_ingest(icefloe_cli, spec_path, spec)
        assert_exactly_once(spec, root)
    assert any(staged for _, staged in landed), f"no kill landed after the run had staged work: {landed}"
    assert not all(staged for _, staged in landed), f"no kill landed before the run staged work: {landed}"


def test_two_ingests_at_the_same_moment(crash_cube: tuple[Path, Spec, Path], icefloe_cli: str) -> None:
    spec_path, spec, root = crash_cube
    for day in (2, 3):
        for member in (1, 2, 3):
            write_day(root, member, day)
    for day in (0, 1):
        write_day(root, 3, day)
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    procs = [
        subprocess.Popen(
            [icefloe_cli, "ingest", str(spec_path), "--json"],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1000:] for o in outs]
    ingested = sorted(json.loads(o[0])["ingested"] for o in outs)
    assert ingested == [0, 8]  # one did the work, the other found nothing left to do
    assert_exactly_once(spec, root)
