"""Writing a run to the staging branch: a prepare commit, one commit per batch, the checks, and the
commit that takes quarantined files back out.

Each commit carries the references, native values and ledger rows of its batch together, with
metadata naming the run and what it did (never credentials). Every commit records the main snapshot
the run started from, so a rerun after a crash can tell whether staging's work can be resumed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from lib.assembly import clear_blocks, place_batch, prepare_arrays
from lib.expectations import coordinate_findings, coordinate_names, file_findings, new_value_owners
from lib.layout import Axes, Move, Placement
from lib.ledger import (
    DEFERRED,
    INGESTED,
    QUARANTINED,
    LedgerRow,
    append_moves,
    append_rows,
    append_run,
    append_texts,
    iter_current,
    moves_epoch,
    now,
    read_schema,
    write_schema,
)
from lib.ledger_index import LedgerIndex, cell_key, fold_index
from lib.local.faults import checkpoint
from lib.memory import gc_paused
from lib.planning import Plan
from lib.quality import Finding, SpotSample, choose_samples, spot_check, structural_findings
from lib.references import BatchItem, SlicePart
from lib.report import Operation
from lib.repository import commit_session
from lib.spool import Spool
from lib.state import CubeState, read_axes
from lib.validation import DATA, VIRTUAL, CubeSchema

if TYPE_CHECKING:
    import icechunk
    from icechunk import IcechunkStore
    from obspec_utils.registry import ObjectStoreRegistry

    from lib.discovery import SourceObject
    from lib.spec import Spec

__all__ = [
    "BatchWork",
    "RunInfo",
    "WorkAhead",
    "batch_work",
    "commit_metadata",
    "manifest_split",
    "placement_of",
    "refusal_rows",
    "run_checks",
    "stage_batch",
    "stage_prepare",
    "stage_quarantine",
    "staged_since_start",
]


@dataclass(frozen=True)
class RunInfo:
    """Who is writing: the run's id, its Prefect flow run (if any) and the operation."""

    run_id: str
    operation: Operation
    flow_run: str | None = None


def commit_metadata(state: CubeState, run: RunInfo, stage: str, **counts: Any) -> dict[str, Any]:
    meta = {
        "operation": run.operation,
        "stage": stage,
        "run": run.run_id,
        "main_at_start": state.main,
        "spec": state.spec_digest,
        "ledger_base": state.ledger_base,
        **counts,
    }
    if run.flow_run:
        meta["flow_run"] = run.flow_run
    return {"icefloe": meta}


def manifest_split(plan: Plan, batch_files: int) -> dict[str, int]:
    """How manifests are split: dim → chunks per split.

    A build commits files in path order (pattern dims, outermost first) ``batch_files`` at a time.
    Splitting the pattern dims so that one split holds about one batch of files means each commit
    writes manifests of its own, instead of rewriting every (growing) manifest at every commit. The
    concat dims are split at the axis' length as built, so an ingest that appends along them writes
    new manifests and leaves the built ones alone.
    """
    assert plan.schema is not None
    schema = plan.schema
    split: dict[str, int] = {d: 1 for d in schema.concat}
    for var in schema.by_role(DATA):
        if var.kind == VIRTUAL:
            for d, chunk in zip(var.dims, var.chunks, strict=True):
                if d in schema.concat:
                    edges = plan.axes.edges.get(d, {}).get(var.path)
                    count = len(edges) - 1 if edges else -(-int(plan.axes.concat[d].size) // chunk)
                    split[d] = max(split[d], count)
    cells = int(np.prod([max(len(plan.axes.pattern[d]), 1) for d in schema.pattern]))
    files_per_cell = max(1, -(-plan.accepted // max(cells, 1)))
    room = max(1, batch_files // files_per_cell)  # cells one batch covers
    for d in reversed(list(schema.pattern)):  # innermost pattern dims whole, while a batch holds them
        size = max(len(plan.axes.pattern[d]), 1)
        split[d] = max(1, min(size, room))
        room = max(1, room // size)
    return split


def refusal_rows(plan: Plan, objects: Mapping[str, SourceObject], run: RunInfo, at: str) -> list[LedgerRow]:
    """Ledger rows for the objects a plan quarantines and those it starts to defer (with their cell and
    concat values, so coverage can count the holes they leave)."""

    def etag(url: str) -> str:
        return objects[url].etag if url in objects else ""

    def fields(url: str) -> dict[str, Any]:
        return dict(objects[url].fields) if url in objects else {}

    rows = [
        LedgerRow(
            url=url,
            etag=etag(url),
            fields=fields(url),
            status=QUARANTINED,
            reason=reason,
            run=run.run_id,
            at=at,
            values=plan.values.get(url, {}),
        )
        for url, reason in plan.quarantined.items()
    ]
    rows += [
        LedgerRow(
            url=url,
            etag=etag(url),
            fields=fields(url),
            status=DEFERRED,
            reason=plan.deferred[url],
            run=run.run_id,
            at=at,
            since=since,
            values=plan.values.get(url, {}),
        )
        for url, since in plan.waiting.items()
    ]
    return rows


def stage_prepare(
    repo: icechunk.Repository,
    spec: Spec,
    state: CubeState,
    plan: Plan,
    spool: Spool,
    run: RunInfo,
    objects: Mapping[str, SourceObject],
) -> str:
    """Create (or grow) the cube's arrays and record this run's quarantined files; returns the snapshot."""
    assert plan.schema is not None
    session = repo.writable_session(spec.repo.staging)
    shared = None
    if plan.fresh and plan.shared_source:
        entry = plan.entries[plan.shared_source]
        fragment = next(p.fragment(p.urls.index(entry.url)) for p in spool.slices(entry.spool) if entry.url in p.urls)
        shared = BatchItem(plan.placements[entry.url], fragment, entry.checksum)
    if plan.moves and not plan.fresh:  # logged first: every row written from now on has the moved positions
        append_moves(session.store, [dataclasses.asdict(m) for m in plan.moves])
    if plan.grows:
        prepare_arrays(session, plan.schema, plan.axes, fresh=plan.fresh, shared=shared, moves=plan.moves)
        checkpoint("moving")
    if plan.replaced and not plan.fresh:
        _clear_replaced(session.store, plan, state)
    write_schema(session.store, plan.schema, extra={"spec": state.spec_digest})
    append_rows(session.store, refusal_rows(plan, objects, run, now()))
    moved = f", room opened {len(plan.moves)} time(s)" if plan.moves else ""
    return commit_session(
        session,
        f"{run.operation}: prepare {plan.accepted} object(s), {len(plan.quarantined)} quarantined, "
        f"{len(plan.waiting)} deferred{moved}",
        commit_metadata(
            state,
            run,
            "prepare",
            planned=plan.accepted,
            quarantined=len(plan.quarantined),
            deferred=len(plan.waiting),
            moves=len(plan.moves),
            batches=len(plan.batches),
        ),
    )


def _clear_replaced(store: IcechunkStore, plan: Plan, state: CubeState) -> None:
    """Objects being re-ingested leave their old place first (they may land elsewhere, or nowhere)."""
    assert plan.schema is not None
    rows = [state.ledger[url] for url in plan.replaced]
    old = [placement_of(row, plan.axes, plan.moves) for row in rows]
    emptied = _emptied(state.ledger, rows, plan.replaced, plan.axes)
    clear_blocks(store, plan.schema, plan.axes, old, cells_emptied=emptied)


def _emptied(ledger: LedgerIndex, rows: Iterable[LedgerRow], leaving: Set[str], axes: Axes) -> set[tuple[int, ...]]:
    """The cells of ``rows`` that no object is left in once the ``leaving`` objects are gone."""
    cells = {cell_key(r.fields): r.fields for r in rows}
    return {axes.cell_of(fields.items()) for fields in cells.values() if not set(ledger.cell(fields).rows) - leaving}


def placement_of(row: LedgerRow, axes: Axes, moves: Sequence[Move] = ()) -> Placement:
    """Where a ledger row's object sits, after ``moves`` (the row's positions are as of its reading)."""
    ranges = []
    for d, (a, b) in row.ranges.items():
        start = a
        for move in moves:
            if move.dim == d:
                start = move.shift(start)
        ranges.append((d, start, start + (b - a)))
    chunking = tuple((str(d), str(v), int(c)) for d, v, c in row.chunking)
    return Placement(row.url, axes.cell_of(row.fields.items()), tuple(ranges), chunking)


@dataclass
class BatchWork:
    """What one batch's commit writes, made before its session opens: its placed files a spooled
    slice at a time, and their ledger rows' texts (stamped with the moves ``epoch``).

    A build makes the next batch's work in a thread while the batch before it commits: Icechunk's
    commit lets go of the GIL, and reading the spool and making the rows is most of what a batch
    costs besides its Icechunk calls (``benchmarks/RESULTS.md``, P4).
    """

    batch: int
    epoch: int
    parts: list[SlicePart]
    texts: list[str]

    @property
    def objects(self) -> int:
        return len(self.texts)


def batch_work(plan: Plan, spool: Spool, batch: int, run: RunInfo, epoch: int) -> BatchWork:
    """Read one batch back from the spool and make its ledger rows (touches no repository)."""
    at = now()
    planned: dict[str, tuple[Placement, Any]] = {}
    texts: dict[str, str] = {}
    with gc_paused():  # objects per file, none in a cycle
        for files in plan.planned_files(spool, batch):
            planned.update(zip(files.urls, zip(files.placements(), files.checksums, strict=True), strict=True))
            texts.update(zip(files.urls, files.texts(run.run_id, at, epoch), strict=True))
        parts = [SlicePart.placed(part, planned) for part in spool.slices(batch)] if planned else []
    return BatchWork(batch, epoch, parts, [texts[url] for part in parts for url in part.urls()])


class WorkAhead:
    """Makes a batch's work (:func:`batch_work`) in a thread while the batch before it commits."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._next: Future[BatchWork] | None = None

    def start(self, plan: Plan, spool: Spool, batch: int, run: RunInfo, epoch: int) -> None:
        if batch >= len(plan.batches):
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="icefloe-next-batch")
        self._next = self._pool.submit(batch_work, plan, spool, batch, run, epoch)

    def take(self, batch: int) -> BatchWork | None:
        """``batch``'s work if it was made ahead; None to make it in place (where an error it meets
        is raised in the batch's own task)."""
        future, self._next = self._next, None
        if future is None:
            return None
        try:
            work = future.result()
        except Exception:
            return None
        return work if work.batch == batch else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool, self._next = None, None


def stage_batch(
    repo: icechunk.Repository,
    spec: Spec,
    state: CubeState,
    plan: Plan,
    spool: Spool,
    batch: int,
    run: RunInfo,
    before_commit: Callable[[], None] | None = None,
    work: BatchWork | None = None,
    while_committing: Callable[[int], None] | None = None,
) -> tuple[str | None, int]:
    """Place one batch's references and ledger rows in one staging commit; returns (snapshot, refs).

    ``work`` is the batch's work made ahead (:func:`batch_work`), used if its moves epoch is still
    the branch's; ``while_committing(epoch)`` is called just before the commit, to start making the
    next batch's.
    """
    assert plan.schema is not None
    session = repo.writable_session(spec.repo.staging)
    epoch = moves_epoch(session.store)
    if work is None or work.batch != batch or work.epoch != epoch:
        work = batch_work(plan, spool, batch, run, epoch)
    if not work.objects:
        return None, 0
    refs, placed = place_batch(session, plan.schema, plan.axes, work.parts)
    append_texts(session.store, work.texts)
    if before_commit is not None:
        before_commit()  # a crash here loses this batch's uncommitted refs, never a committed one
    if while_committing is not None:
        while_committing(epoch)
    snapshot = commit_session(
        session,
        f"{run.operation}: batch {batch + 1}/{len(plan.batches)}, {len(placed)} object(s), {refs} refs",
        commit_metadata(
            state, run, "batch", batch=batch + 1, batches=len(plan.batches), ingested=len(placed), refs=refs
        ),
    )
    return snapshot, refs


def staged_since_start(repo: icechunk.Repository, spec: Spec, state: CubeState) -> Iterator[LedgerRow]:
    """The current rows of the objects this update recorded on staging (resumed batches included)."""
    return iter_current(repo.readonly_session(branch=spec.repo.staging).store, state.ledger_base)


def run_checks(
    repo: icechunk.Repository, spec: Spec, state: CubeState, registry: ObjectStoreRegistry, seed: int | None = None
) -> tuple[str, list[Finding]]:
    """Run the structural checks and the spot check on staging's tip; returns (snapshot, findings)."""

    snapshot = repo.lookup_branch(spec.repo.staging)
    store = repo.readonly_session(snapshot_id=snapshot).store
    schema = read_schema(store)
    if schema is None:
        return snapshot, []
    axes = read_axes(store, schema)
    findings = structural_findings(store, schema, axes, spec.checks.monotonic, spec.checks.regular)

    def added() -> Iterator[LedgerRow]:  # a row at a time: a build adds a whole archive's rows
        return (r for r in iter_current(store, state.ledger_base) if r.status == INGESTED)

    candidates = (SpotSample(placement_of(r, axes), r.format, r.layout) for r in added())
    samples = choose_samples(candidates, spec.checks.spot_check.files, seed=seed)
    findings += spot_check(
        store, schema, samples, registry, chunks_per_variable=spec.checks.spot_check.chunks_per_variable, seed=seed
    )
    if spec.checks.expectations:  # Great Expectations, on the decoded coordinates and the sampled files' values
        cube = xr.open_zarr(store, consolidated=False, chunks=None, decode_times=decode_times(schema))
        owners = new_value_owners(
            schema, None if state.fresh else state.axes, axes, (placement_of(r, axes) for r in added())
        )
        names = coordinate_names(schema)
        values = {str(name): np.asarray(cube[name].values) for name in cube.variables if name in names}
        findings += coordinate_findings(values, schema, spec.checks.expectations, owners)
        bad = {u for f in findings for u in f.urls}
        findings += file_findings(
            cube, schema, [s.placement for s in samples if s.placement.url not in bad], spec.checks.expectations
        )
    return snapshot, findings


def decode_times(schema: CubeSchema) -> dict[str, bool]:
    """How ``xr.open_zarr`` decodes the cube's times: not for variables whose times cannot be decoded."""
    return {path: False for path in schema.undecodable if "/" not in path}


def stage_quarantine(
    repo: icechunk.Repository,
    spec: Spec,
    state: CubeState,
    run: RunInfo,
    reasons: dict[str, str],
    status: str = QUARANTINED,
) -> str:
    """Take files back out of the staged cube (refs and native values reset) and record why."""

    session = repo.writable_session(spec.repo.staging)
    store = session.store
    schema = read_schema(store)
    assert schema is not None
    axes = read_axes(store, schema)
    ledger = LedgerIndex(store)
    placements, rows, leaving = [], [], []
    at = now()
    for url, reason in reasons.items():
        row = ledger.get(url)
        if row is None or row.status != INGESTED:
            continue
        placements.append(placement_of(row, axes))
        leaving.append(row)
        rows.append(
            LedgerRow(
                url=url,
                etag=row.etag,
                status=status,
                size=row.size,
                reason=reason,
                run=run.run_id,
                at=at,
                fields=row.fields,
            )
        )
    emptied = _emptied(ledger, leaving, {p.url for p in placements}, axes)
    clear_blocks(store, schema, axes, placements, cells_emptied=emptied)
    append_rows(store, rows)
    verb = "quarantine" if status == QUARANTINED else "remove"
    return commit_session(
        session,
        f"{run.operation}: {verb} {len(rows)} object(s)",
        commit_metadata(state, run, verb, quarantined=len(rows)),
    )


def stage_run_record(
    repo: icechunk.Repository, spec: Spec, state: CubeState, run: RunInfo, started: str, seconds: float
) -> str:
    """Record the run in the cube's log of runs, in one last staging commit before it publishes.

    The counts are the ledger's: the rows the run (and an interrupted run it resumed) added since it
    started. The log lives in the cube, so ``icefloe log`` tells every run even after ``maintain``
    has expired the snapshots they made.
    """
    session = repo.writable_session(spec.repo.staging)
    counts: dict[str, int] = {}
    refs = 0
    for row in iter_current(session.store, state.ledger_base):
        counts[row.status] = counts.get(row.status, 0) + 1
        refs += row.refs if row.status == INGESTED else 0
    record = {
        "run": run.run_id,
        "flow_run": run.flow_run,
        "operation": run.operation,
        "started_at": started,
        "finished_at": now(),
        "seconds": round(seconds, 3),
        "ingested": counts.get(INGESTED, 0),
        "quarantined": counts.get(QUARANTINED, 0),
        "deferred": counts.get(DEFERRED, 0),
        "refs": refs,
        "main_before": state.main,
    }
    append_run(session.store, record)
    fold_index(session.store)  # main's index matches its log: the run's rows are folded in as it publishes
    return commit_session(session, f"{run.operation}: record the run", commit_metadata(state, run, "record"))


def stage_nativized(
    repo: icechunk.Repository, spec: Spec, state: CubeState, run: RunInfo, wanted: list[str] | None = None
) -> tuple[list[str], str | None]:
    """Rewrite the staged cube's small referenced coordinates natively, in one commit."""
    from lib.nativize import coordinate_candidates, nativize_arrays

    session = repo.writable_session(spec.repo.staging)
    schema = read_schema(session.store)
    if schema is None:
        return [], None
    paths = coordinate_candidates(session.store, schema, wanted)
    if not paths:
        return [], None
    done = nativize_arrays(session, paths)
    snapshot = commit_session(
        session,
        f"{run.operation}: store {len(done)} coordinate(s) natively: {', '.join(done)}",
        commit_metadata(state, run, "nativize", nativized=done),
    )
    return done, snapshot
