"""One build or ingest, step by step: open → discover → parse (per batch) → plan → prepare →
commit (per batch) → check → quarantine → publish.

:class:`CubeRun` holds a run's working state (the repository handle, the spool of parsed
fragments, the plan) so that each step is one method taking and returning small values. The Prefect
flows call the steps as tasks; ``icefloe plan`` calls the first four directly and writes nothing.
It is deliberately a plain class, so orchestrators pass it around as one opaque value instead of
walking its contents.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import TYPE_CHECKING, Any

from lib.discovery import (
    HEAD_LIMIT,
    PENDING,
    Discovery,
    SourceObject,
    check_named_urls,
    classify_objects,
    compile_pattern,
    head_sources,
    list_sources,
)
from lib.errors import PublishBlocked, SpecError, StorageError, storage_step
from lib.executors import Executor, make_executor
from lib.layout import Rules
from lib.ledger import INGESTED, QUARANTINED
from lib.listing import ObjectSpool, SpooledBatch
from lib.local.faults import checkpoint
from lib.memory import release
from lib.parsing import ParseOptions, SourceConfig
from lib.parsing.fanout import ParsedBatch, parse_objects
from lib.planning import Plan, cube_sizes, plan_update, planned_coordinates
from lib.quality import CUBE, FILE, Finding
from lib.report import Operation, RunSummary
from lib.repository import open_repository, publish, reset_branch, set_manifest_splitting
from lib.spool import Spool
from lib.staging import (
    RunInfo,
    WorkAhead,
    manifest_split,
    run_checks,
    stage_batch,
    stage_nativized,
    stage_prepare,
    stage_quarantine,
    stage_run_record,
    staged_since_start,
)
from lib.state import CubeState, read_cube_state, read_main_state
from lib.storage import object_store, source_registry

if TYPE_CHECKING:
    import icechunk

    from lib.spec import Spec

__all__ = ["CubeRun"]


class CubeRun:
    """The working state of one run over one cube."""

    def __init__(
        self,
        spec: Spec,
        operation: Operation,
        run_id: str,
        *,
        flow_run: str | None = None,
        urls: list[str] | None = None,
        keep: bool = False,
        write: bool = True,
    ) -> None:
        self.spec = spec
        self.operation = operation
        self.info = RunInfo(run_id=run_id, operation=operation, flow_run=flow_run)
        self.urls = set(urls) if urls else None
        self.keep = keep  # changed objects are reported and left as they are, not re-ingested
        self.write = write
        self.pattern = compile_pattern(spec.source.pattern)
        self.source = SourceConfig(spec.source.url, spec.source.storage)
        self.options = ParseOptions(
            concat=spec.concat, rectilinear=spec.rectilinear, native=spec.variables.native, drop=spec.variables.drop
        )
        self.rules = Rules(
            regular=frozenset(spec.checks.regular) & frozenset(spec.concat),
            rectilinear=frozenset(spec.rectilinear),
            max_gap=spec.checks.max_gap,
        )
        self.summary = RunSummary(operation=operation, branch=spec.repo.branch)
        self.started = time.monotonic()
        self.started_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.repo: icechunk.Repository | None = None
        self.state: CubeState | None = None
        self.discovery = Discovery.empty()
        self.batches: list[SpooledBatch] = []
        self.parsed: list[ParsedBatch] = []
        self.plan_: Plan | None = None
        self.findings: list[Finding] = []
        self.staged: str | None = None
        self.refused_objects: dict[str, SourceObject] = {}  # refused or deferred: their ledger rows need them
        self._spool: Spool | None = None
        self._executor: Executor | None = None
        self._ahead = WorkAhead()  # makes the next batch's work while one commits

    # -- resources -------------------------------------------------------------------------------

    @property
    def spool(self) -> Spool:
        if self._spool is None:
            self._spool = Spool()
        return self._spool

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = make_executor(self.spec.execution)
        return self._executor

    def close(self) -> None:
        self._ahead.close()
        self.discovery.pending.spool.close()
        if self._executor is not None:
            self._executor.close()
        if self._spool is not None:
            self._spool.close()

    # -- steps ----------------------------------------------------------------------------------

    @storage_step
    def open(self) -> dict[str, Any]:
        """Open (or, when writing, create) the repository and decide between resuming and starting clean."""
        self.repo = open_repository(self.spec)
        if self.repo is None:  # no cube yet: the repository is created by the first write (prepare)
            self.state = CubeState(self.operation, "", "", resumed=False, fresh=True, schema=None, axes=None)
        elif self.write:
            self.state = read_cube_state(self.repo, self.spec, self.operation)
        else:
            self.state = read_main_state(self.repo, self.spec, self.operation)
        if self.state.schema is not None and self.state.schema.nativized:
            # coordinates nativized earlier are loaded from every new file too
            self.options = dataclasses.replace(self.options, extra_native=tuple(self.state.schema.nativized))
        return {"main": self.state.main, "resumed": self.state.resumed, "fresh": self.state.fresh}

    @storage_step
    def discover(self) -> dict[str, int]:
        """List the source (or look up the named objects) and sort them against the ledger; batch the pending."""
        assert self.state is not None
        store = object_store(self.spec.source.url, self.spec.source.storage)
        missing: list[str] = []
        listed: int | None = None
        objects = ObjectSpool(self.spool.path)  # on disk: a listing of the whole archive is not held in memory
        if self.urls is not None:
            check_named_urls(self.spec.source.url, self.pattern, self.urls)
        if self.urls is not None and len(self.urls) <= HEAD_LIMIT:  # a few named objects: no full listing
            found, unsafe, missing = head_sources(self.spec.source.url, store, self.pattern, self.urls)
            objects.add(found, self.state.ledger.shard)
        else:
            listing = list_sources(self.spec.source.url, store, self.pattern, objects, self.state.ledger.shard)
            unsafe, listed = listing.unsafe, listing.listed
            if self.urls is not None:  # a named run reports (and quarantines) only the unsafe keys it named
                unsafe = [u for u in unsafe if u in self.urls]
                missing = sorted(u for u in self.urls - set(unsafe) if objects.get(u) is None)
        if missing:
            raise SpecError(
                f"{len(missing)} named object(s) are not in the source {self.spec.source.url}: "
                + ", ".join(missing[:3])
                + (" ..." if len(missing) > 3 else "")
            )
        if listed is not None and not len(objects) and not unsafe:
            nothing = (
                f"the pattern {self.pattern.text!r} matches none of the {listed} object(s) listed under "
                f"{self.spec.source.url}"
            )
            if self.operation == "build":
                raise SpecError(nothing + ": check source.url and source.pattern", key="source.pattern")
            self.summary.notes.append(nothing)
        self.discovery = classify_objects(objects, self.state.ledger, replace=not self.keep, only=self.urls)
        self.discovery.unsafe = unsafe
        pending = self.discovery.pending
        sizes = objects.number_batches(PENDING, self.spec.execution.batch_size)
        self.batches = [SpooledBatch(objects, b, n) for b, n in enumerate(sizes)]
        if self.write and pending and self.spec.checks.expectations:
            from lib.expectations import preload

            preload()  # the expectations need Great Expectations (seconds to import): import it while the run parses
        s = self.summary
        s.discovered = self.discovery.discovered
        s.unchanged = len(self.discovery.unchanged) + len(self.discovery.known_bad)
        s.previously_quarantined = len(self.discovery.known_bad)
        s.changed = list(self.discovery.changed.urls())
        return {"discovered": s.discovered, "pending": len(pending), "batches": len(self.batches)}

    @storage_step
    def parse(self, batch: int) -> dict[str, int]:
        """Parse one batch over the executor into the spool.

        Raises
        ------
        StorageError
            Some objects could not be read (after retries); the whole step may be retried.
        """
        result = parse_objects(
            list(self.batches[batch]), batch, self.source, self.options, self.executor, self.spool, self.pattern.fields
        )
        if result.transient:
            reason = next(iter(result.transient.values()))
            raise StorageError(f"the object store failed to serve {len(result.transient)} object(s), e.g. {reason}")
        if self.write:  # the entries wait for planning in the spool: parsing holds nothing per object
            result.spill(self.spool)
        while len(self.parsed) <= batch:
            self.parsed.append(ParsedBatch(batch=len(self.parsed)))
        self.parsed[batch] = result
        return {"parsed": result.parsed, "failed": len(result.failed)}

    @storage_step
    def plan(self) -> dict[str, Any]:
        """Validate every parsed object and lay out the cube; nothing is written."""
        assert self.state is not None
        checkpoint("parsed")
        if self._executor is not None:  # parsing is done: its workers would hold memory planning needs
            self._executor.close()
            self._executor = None
        shared: dict[Any, Any] = {}
        for parsed in self.parsed:
            parsed.load(self.spool, shared)
        replacing = set(self.discovery.pending.urls(replacing=True))

        def make(refused: dict[str, str] | None = None) -> Plan:
            assert self.state is not None
            return plan_update(
                self.state,
                self.pattern.fields,
                self.spec.concat,
                self.parsed,
                replacing,
                self.rules,
                max_wait=self.spec.checks.max_wait,
                refused=refused,
            )

        self.plan_ = make()
        traced = self._coordinate_expectations(self.plan_)
        if traced:  # the files that brought values the expectations refuse: planned again without them
            self.plan_ = make(traced)
        plan = self.plan_
        unsafe = {
            url: f"'{url}' could lead outside the source prefix (a '..' or '.' segment, a NUL, or a symlink "
            f"out of it): it is never read"
            for url in self.discovery.unsafe
        }
        plan.quarantined.update(unsafe)
        s = self.summary
        s.dims = (
            cube_sizes(plan.schema, plan.axes)
            if plan.schema
            else (cube_sizes(self.state.schema, self.state.axes) if self.state.schema and self.state.axes else {})
        )
        s.parsed = sum(len(b.entries) for b in self.parsed)
        s.fast_path = sum(1 for b in self.parsed for e in b.entries if e.parser == "fast")
        for url, entry in plan.entries.items():
            s.skipped += [{"url": url, "variable": v, "reason": r} for v, r in entry.skipped]
            s.notes += [f"{url}: {n}" for n in entry.notes]
        if self.write:
            self._release_listing()
        return {
            "accepted": plan.accepted,
            "quarantined": len(plan.quarantined),
            "deferred": len(plan.deferred),
            "dims": s.dims,
        }

    def _coordinate_expectations(self, plan: Plan) -> dict[str, str]:
        """The spec's expectations on coordinates, run on the planned axes before anything is written.

        A failure on values files of this run bring quarantines those files (returned, with the
        reason); one on values the cube already had blocks the publish (kept in the findings).
        """
        from lib.expectations import coordinate_findings, coordinate_names, new_value_owners

        assert self.state is not None
        schema = plan.schema
        if schema is None or not any(e.variable in coordinate_names(schema) for e in self.spec.checks.expectations):
            return {}
        values = planned_coordinates(schema, plan.axes)
        owners = new_value_owners(schema, None if plan.fresh else self.state.axes, plan.axes, plan.placements.values())
        findings = coordinate_findings(values, schema, self.spec.checks.expectations, owners)
        self.findings += [f for f in findings if f.scope == CUBE]
        return {u: f.message for f in findings if f.scope == FILE for u in f.urls}

    def _release_listing(self) -> None:
        """Once planned, a writing run keeps per object only its URL: entries and placements go to the
        spool, and the listing and the parse results are dropped, so memory stays flat as archives grow."""
        assert self.plan_ is not None
        refused = self.plan_.quarantined.keys() | self.plan_.deferred.keys()
        found = ((url, self.discovery.pending.get(url)) for url in refused)
        self.refused_objects = {url: obj for url, obj in found if obj is not None}
        self.plan_.spill(self.spool)
        self.parsed = []
        release()

    @storage_step
    def prepare(self) -> str | None:
        """Create or grow the arrays (moving references to open room inside an axis) and record this
        run's quarantined and newly deferred objects, in one staging commit."""
        assert self.state is not None and self.plan_ is not None
        plan = self.plan_
        if plan.schema is None or (not plan.accepted and not plan.quarantined and not plan.waiting):
            return None
        if self.repo is None:  # a new cube: its repository is made by its first write, never before
            self.repo = open_repository(self.spec, create=True)
            assert self.repo is not None
            self.state = read_cube_state(self.repo, self.spec, self.operation)
        objects = self.refused_objects if plan.spilled else {o.url: o for o in self.discovery.pending}
        if plan.fresh:  # sessions opened from now on write manifests split to match the batches
            self.repo = set_manifest_splitting(self.repo, manifest_split(plan, self.spec.execution.batch_size))
        self.staged = stage_prepare(self.repo, self.spec, self.state, plan, self.spool, self.info, objects)
        return self.staged

    @storage_step
    def commit(self, batch: int) -> int:
        """Place one batch's references in one staging commit; returns the refs written."""
        assert self.state is not None and self.plan_ is not None
        plan = self.plan_
        if self.repo is None or plan.schema is None:  # nothing was prepared: nothing to place
            return 0
        snapshot, refs = stage_batch(
            self.repo,
            self.spec,
            self.state,
            plan,
            self.spool,
            batch,
            self.info,
            before_commit=(lambda: checkpoint("refs-half-written")) if batch == len(plan.batches) // 2 else None,
            work=self._ahead.take(batch),
            while_committing=lambda epoch: self._ahead.start(plan, self.spool, batch + 1, self.info, epoch),
        )
        self.staged = snapshot or self.staged
        self.summary.refs += refs
        release()  # the batch's fragments and Icechunk's session are gone: give their pages back
        return refs

    @storage_step
    def nativize(self) -> list[str]:
        """With ``variables.nativize``, rewrite small referenced coordinates natively, in one staging commit."""
        assert self.state is not None
        if self.repo is None or not self.spec.variables.nativize:
            return []
        if self.repo.lookup_branch(self.spec.repo.staging) == self.state.main:
            return []
        done, snapshot = stage_nativized(self.repo, self.spec, self.state, self.info)
        self.staged = snapshot or self.staged
        if done:
            self.summary.notes.append(f"stored natively: {', '.join(done)}")
        return done

    @storage_step
    def check(self) -> list[dict[str, Any]]:
        """Run the checks on staging's tip; file findings are taken out, cube findings block."""
        assert self.state is not None
        checkpoint("staging-committed")
        if self.repo is None or self.repo.lookup_branch(self.spec.repo.staging) == self.state.main:
            return []
        snapshot, found = run_checks(
            self.repo, self.spec, self.state, source_registry(self.spec.source.url, self.spec.source.storage)
        )
        known = {f.message for f in self.findings}  # the plan's own findings stand; the checks may repeat them
        self.findings += [f for f in found if f.message not in known]
        per_file = {u: f.message for f in self.findings if f.scope == FILE for u in f.urls}
        if per_file:
            snapshot = stage_quarantine(self.repo, self.spec, self.state, self.info, per_file, status=QUARANTINED)
        self.staged = snapshot
        return [f.to_json() for f in self.findings]

    @storage_step
    def rechunk(self) -> list[dict[str, Any]]:
        """Rewrite the units of the cube's native copies that this run's changes touched, in staging
        commits, and compare sampled units with the virtual data: a mismatch blocks the publish.

        An update brings along the copies the cube has (``icefloe rechunk`` makes them); a full build
        makes anew those main had.
        """
        from lib.copies import read_record, size_text
        from lib.rechunk import stage_copies

        assert self.state is not None
        if self.repo is None or not self.spec.native_copies or any(f.scope == CUBE for f in self.findings):
            return []
        if self.repo.lookup_branch(self.spec.repo.staging) == self.state.main:
            return []
        copies = list(self.spec.native_copies)
        create = self.state.fresh and bool(self.state.main)
        if create:
            main = self.repo.readonly_session(snapshot_id=self.state.main).store
            copies = [c for c in copies if read_record(main, c.name) is not None]
        results = stage_copies(self.repo, self.spec, self.state, self.info, self.executor, copies, create=create)
        for r in results:
            self.summary.notes.append(
                f"native copy {r.name}: {r.units} of {r.total_units} unit(s) written ({size_text(r.bytes)})"
            )
            self.findings += [Finding("native-copy", CUBE, p) for p in r.problems]
        self.staged = self.repo.lookup_branch(self.spec.repo.staging)
        self.summary.copies = [r.to_json() for r in results]
        return self.summary.copies

    @storage_step
    def publish(self) -> str | None:
        """Fast-forward main to the checked snapshot (compare-and-swap); returns main's tip.

        Raises
        ------
        PublishBlocked
            A cube-wide check failed; main did not move.
        ConflictError
            Main moved since this run started.
        """
        assert self.state is not None
        checkpoint("checks-done")
        if self.repo is None:  # nothing was written, not even a repository
            return self.summary.snapshot
        blocking = [f for f in self.findings if f.scope == CUBE]
        if not blocking and self.state.fresh and self.plan_ is not None and self.plan_.accepted:
            taken = {u for f in self.findings if f.scope == FILE for u in f.urls}
            if all(url in taken for url in self.plan_.iter_placed()):
                blocking = [Finding("quarantine", CUBE, "the checks quarantined every object of a new cube")]
        staged = self.repo.lookup_branch(self.spec.repo.staging)
        if blocking:
            # the refused snapshot stays readable by id; staging goes back to main so the next run
            # plans from what is published, not from work that cannot be published
            self.summary.snapshot = self.state.main
            self.summary.notes.append(f"the refused staging snapshot was {staged}")
            reset_branch(self.repo, self.spec.repo.staging, self.state.main, expected=staged)
            raise PublishBlocked("checks failed, main was not moved: " + "; ".join(f.message for f in blocking))
        if staged != self.state.main:
            staged = stage_run_record(
                self.repo, self.spec, self.state, self.info, self.started_at, time.monotonic() - self.started
            )
            checkpoint("publishing")
            publish(self.repo, self.spec, staged, self.state.main)
            self.summary.published = True
        self.summary.snapshot = self.repo.lookup_branch(self.spec.repo.branch)
        return self.summary.snapshot

    def finish(self, error: str | None = None) -> RunSummary:
        """The run's summary, with the counts of what was placed and refused."""
        s = self.summary
        plan = self.plan_
        if plan is not None:
            quarantined = dict(plan.quarantined)
            for f in self.findings:
                if f.scope == FILE:
                    quarantined.update({u: f.message for u in f.urls})
            s.quarantined = [{"url": u, "reason": r} for u, r in quarantined.items()]
            s.deferred = [{"url": u, "reason": r} for u, r in plan.deferred.items()]
            ingested, replaced = 0, []
            for url in plan.iter_placed():  # counted, not collected: a set of every URL would grow with the archive
                if url not in quarantined:
                    ingested += 1
                    if url in plan.replaced:
                        replaced.append(url)
            s.ingested, s.replaced = ingested, sorted(replaced)
        if error is None and self.state is not None and self.state.resumed and self.repo is not None:
            # objects an interrupted run staged and this one published: they reach main now
            placed = plan.placed_urls() if plan is not None else set()
            staged = staged_since_start(self.repo, self.spec, self.state)
            resumed = sum(1 for r in staged if r.status == INGESTED and r.url not in placed)
            s.ingested += resumed
            s.unchanged -= resumed
        s.findings = [f.to_json() for f in self.findings]
        if self.spec.rectilinear and s.published:
            s.notes.append(READ_RECTILINEAR)
        if error is None and plan is not None and plan.schema is None and s.quarantined:
            error = f"every one of the {len(s.quarantined)} pending object(s) was quarantined: nothing was published"
        if error is not None:
            s.error = error
            s.published = False
        elif self.state is not None and s.snapshot is None:
            s.snapshot = self.state.main or None
        s.seconds = time.monotonic() - self.started
        return s


READ_RECTILINEAR = (
    "the cube has rectilinear axes: readers enable them before opening it, with "
    "zarr.config.set({'array.rectilinear_chunks': True}) or ZARR_ARRAY__RECTILINEAR_CHUNKS=True in the environment"
)


def nativize_cube(
    spec: Spec, run_id: str, flow_run: str | None = None, variables: list[str] | None = None
) -> dict[str, Any]:
    """Rewrite an existing cube's small referenced coordinates natively and publish that, in one commit.

    Raises
    ------
    IcefloeError
        There is no cube yet.
    ConflictError
        Another writer moved main or staging meanwhile.
    """
    from lib.errors import IcefloeError

    repo = open_repository(spec)
    if repo is None:
        raise IcefloeError(f"no cube at {spec.repo.url} yet: run `icefloe build` first")
    info = RunInfo(run_id=run_id, operation="nativize", flow_run=flow_run)
    state = read_cube_state(repo, spec, "nativize")
    started, clock = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), time.monotonic()
    done, snapshot = stage_nativized(repo, spec, state, info, variables)
    if snapshot is not None:
        snapshot = stage_run_record(repo, spec, state, info, started, time.monotonic() - clock)
        publish(repo, spec, snapshot, state.main)
    return {"nativized": done, "snapshot": repo.lookup_branch(spec.repo.branch), "published": snapshot is not None}
