"""Writing native copies (:mod:`lib.copies` says what they are): units read through the virtual
arrays and written natively in Icechunk forks over the run's executor, compared bit for bit with the
virtual data, and committed to staging a round at a time so a crash loses at most a round.

:func:`stage_copies` is the step every update runs (:meth:`lib.runs.CubeRun.rechunk`);
:func:`rechunk_cube` is ``icefloe rechunk``: make or bring up to date the spec's copies, and publish.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lib.copies import TASK_BYTES, CopyArray, Task, dirty_units, ensure_copy, read_record, unit_tasks, write_record
from lib.errors import IcefloeError, PublishBlocked, StorageError
from lib.executors import Executor, make_executor
from lib.hierarchy import array_at, open_root
from lib.ledger import ledger_size, read_moves, read_schema
from lib.local.faults import checkpoint
from lib.repository import commit_session, open_repository, publish, reset_branch
from lib.staging import RunInfo, commit_metadata, stage_run_record
from lib.state import CubeState, read_axes, read_cube_state

if TYPE_CHECKING:
    import icechunk
    from zarr.abc.store import Store

    from lib.spec import NativeCopy, Spec

__all__ = ["CopyResult", "compare_units", "rechunk_cube", "stage_copies", "write_units"]


def write_units(
    spec: Spec, snapshot: str, fork: Any, arrays: Sequence[CopyArray], units: Task
) -> tuple[Any, dict[str, int]]:
    """In a worker: read each unit's changed part through the virtual arrays at ``snapshot`` and
    write it into the copy in ``fork``; returns the fork (to merge) and the bytes read and written
    (uncompressed; Zarr rewrites each native chunk the part touches whole)."""
    repo = open_repository(spec)
    assert repo is not None
    source_root = open_root(repo.readonly_session(snapshot_id=snapshot).store)
    target_root = open_root(fork.store, "r+")
    by_name = {a.variable: a for a in arrays}
    done = {"units": 0, "bytes": 0}
    for variable, _, part in units:
        array = by_name[variable]
        region = tuple(slice(a, b) for a, b in part)
        values = array_at(source_root, variable)[region]
        array_at(target_root, array.path)[region] = values
        done["units"] += 1
        done["bytes"] += int(np.asarray(values).nbytes)
    return fork, done


def compare_units(
    store: Store,
    arrays: Sequence[CopyArray],
    written: dict[str, set[tuple[int, ...]]],
    sample: int,
    seed: int | None = None,
) -> list[str]:
    """Read ``sample`` of the written units (at least one per array written) through the virtual
    arrays and through the copy, and say where they are not bit-identical."""
    rng = random.Random(seed)
    root = open_root(store)
    problems = []
    for array in arrays:
        units = sorted(written.get(array.variable, ()))
        if not units:
            continue
        for index in rng.sample(units, min(len(units), max(1, sample))):
            region = array.region(index)
            virtual = np.asarray(array_at(root, array.variable)[region])
            native = np.asarray(array_at(root, array.path)[region])
            if virtual.dtype != native.dtype or virtual.tobytes() != native.tobytes():
                where = ", ".join(f"{d}={s.start}:{s.stop}" for d, s in zip(array.dims, region, strict=True))
                problems.append(
                    f"native copy {array.copy!r}: {array.variable} at {where} differs from the virtual data "
                    f"({_differing(virtual, native)} value(s))"
                )
    return problems


def _differing(a: np.ndarray, b: np.ndarray) -> int:
    """How many values differ bit for bit (a NaN equals the same NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return int(a.size)
    if a.dtype.itemsize in (1, 2, 4, 8):
        bits = np.dtype(f"u{a.dtype.itemsize}")
        return int(np.sum(a.view(bits) != b.view(bits)))
    return int(np.sum(a != b))


@dataclass
class CopyResult:
    """What bringing one copy up to date did."""

    name: str
    created: bool
    units: int = 0  # written in this run
    total_units: int = 0
    bytes: int = 0  # uncompressed, read through the virtual arrays and written natively
    coverage: float = 1.0
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def stage_copies(
    repo: icechunk.Repository,
    spec: Spec,
    state: CubeState,
    run: RunInfo,
    executor: Executor,
    copies: Sequence[NativeCopy],
    *,
    create: bool,
    progress: Callable[[str, int, int], None] | None = None,
    round_calls: int | None = None,
    task_bytes: int = TASK_BYTES,
    sample: int = 4,
    seed: int | None = None,
) -> list[CopyResult]:
    """Bring ``copies`` up to date with staging's virtual arrays, in staging commits.

    Copies that do not exist yet are made only with ``create`` (``icefloe rechunk``); an update of
    the cube brings the existing ones along. Units are written ``round_calls`` executor calls at a
    time, each round one commit that also records which units are still to write, so a crash loses
    at most a round. ``progress(copy, done, total)`` is told after each round. Sampled written units
    are compared with the virtual data at the end (:attr:`CopyResult.problems`).

    Raises
    ------
    StorageError
        A worker could not read the virtual data or write the copy (the step is retried).
    """
    snapshot = repo.lookup_branch(spec.repo.staging)
    store = repo.readonly_session(snapshot_id=snapshot).store
    schema = read_schema(store)
    if schema is None:
        return []
    axes = read_axes(store, schema)
    length, moves = ledger_size(store), len(read_moves(store))
    calls_per_round = round_calls or max(8, 4 * max(1, executor.workers))
    results = []
    for copy in copies:
        existed = read_record(store, copy.name)
        if existed is None and not create:
            continue
        session = repo.writable_session(spec.repo.staging)
        arrays, record, made = ensure_copy(session, copy, schema)
        result = CopyResult(copy.name, created=made)
        if made or record.ledger_at > length:  # new (or made for another ledger): every unit is pending
            record.ledger_at, record.moves_at = length, moves
            record.set_all_pending(arrays)
        units = dirty_units(store, schema, axes, arrays, record, state.ledger)
        result.total_units = sum(math.prod(a.grid) for a in arrays)
        tasks = unit_tasks(arrays, units, task_bytes)
        todo = sum(len(t) for t in tasks)
        if not todo and (record.ledger_at, record.moves_at) == (length, moves) and not session.has_uncommitted_changes:
            results.append(CopyResult(copy.name, False, total_units=result.total_units, coverage=1.0))
            continue  # up to date
        written: dict[str, set[tuple[int, ...]]] = {}
        if progress is not None:
            progress(copy.name, 0, todo)
        for start in range(0, max(len(tasks), 1), calls_per_round):
            chunk = tasks[start : start + calls_per_round]
            if chunk:
                forks = [session.fork() for _ in chunk]
                calls = [(spec, snapshot, fork, arrays, task) for fork, task in zip(forks, chunk, strict=True)]
                done = executor.map(write_units, calls)
                failed = [d for d in done if not isinstance(d, tuple)]
                if failed:
                    raise StorageError(
                        f"native copy {copy.name!r}: {len(failed)} write call(s) failed, e.g. {failed[0]}"
                    )
                session.merge(*(fork for fork, _ in done))
                for task in chunk:
                    for variable, index, _ in task:
                        written.setdefault(variable, set()).add(index)
                result.units += sum(stats["units"] for _, stats in done)
                result.bytes += sum(stats["bytes"] for _, stats in done)
            finished = start + calls_per_round >= len(tasks)
            for array in arrays:
                record.set_pending(array, units.get(array.variable, {}).keys() - written.get(array.variable, set()))
            if finished:
                record.ledger_at, record.moves_at, record.snapshot = length, moves, snapshot
            write_record(session, copy.name, record)
            commit_session(
                session,
                f"{run.operation}: native copy {copy.name}, {result.units}/{todo} unit(s) written",
                commit_metadata(state, run, "copy", copy=copy.name, units=result.units, of=todo),
            )
            if progress is not None:
                progress(copy.name, result.units, todo)
            if not finished:
                checkpoint("copy-round")
                session = repo.writable_session(spec.repo.staging)
        result.coverage = record.coverage(arrays)
        checked = repo.readonly_session(branch=spec.repo.staging).store
        result.problems = compare_units(checked, arrays, written, sample, seed)
        results.append(result)
    return results


def rechunk_cube(
    spec: Spec,
    run_id: str,
    flow_run: str | None = None,
    names: list[str] | None = None,
    progress: Any = None,
    **tuning: Any,
) -> dict[str, Any]:
    """Create the spec's native copies (or ``names`` of them), or bring them up to date, and publish.

    Resumable: a rerun after a crash continues from the units the interrupted run committed to
    staging. The written units are compared with the virtual data before anything is published.
    ``tuning`` goes to :func:`~lib.copies.stage_copies` (``round_calls``, ``task_bytes``).

    Raises
    ------
    SpecError
        The spec lists no native copies, or none called one of ``names``, or a copy does not fit the cube.
    IcefloeError
        There is no cube yet.
    PublishBlocked
        A copy differs from the virtual data: main did not move.
    ConflictError
        Another writer moved main or staging meanwhile.
    """
    copies = spec.chosen_copies(names)
    repo = open_repository(spec)
    if repo is None:
        raise IcefloeError(f"no cube at {spec.repo.url} yet: run `icefloe build` first")
    info = RunInfo(run_id=run_id, operation="rechunk", flow_run=flow_run)
    state = read_cube_state(repo, spec, "rechunk")
    if state.schema is None:
        raise IcefloeError(f"the cube at {spec.repo.url} has no data yet: run `icefloe build` first")
    started, clock = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), time.monotonic()
    with make_executor(spec.execution) as executor:
        results = stage_copies(repo, spec, state, info, executor, copies, create=True, progress=progress, **tuning)
    problems = [p for r in results for p in r.problems]
    staged = repo.lookup_branch(spec.repo.staging)
    if problems:
        reset_branch(repo, spec.repo.staging, state.main, expected=staged)
        raise PublishBlocked("native copy check failed, main was not moved: " + "; ".join(problems[:3]))
    published = staged != state.main
    if published:
        staged = stage_run_record(repo, spec, state, info, started, time.monotonic() - clock)
        publish(repo, spec, staged, state.main)
    return {
        "copies": [r.to_json() for r in results],
        "snapshot": repo.lookup_branch(spec.repo.branch),
        "published": published,
        "resumed": state.resumed,
        "seconds": round(time.monotonic() - clock, 3),
    }
