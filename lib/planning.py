"""Planning: from parsed entries to a validated plan of what a run will write.

It fixes the cube's schema (the existing cube's, or for a new cube the one most files share),
quarantines every file that does not fit it -- with a reason naming the file, the variable and both
sides -- re-encodes concat coordinates into the cube's encoding, and lays out the axes and each
file's place. Nothing is written here; ``icefloe plan`` stops after this step.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lib.errors import Failure, IcefloeError, SpecError, StorageError, classify_failure
from lib.layout import Axes, Occupied, Placement, plan_layout
from lib.ledger import INGESTED, LedgerRow
from lib.parsing.fragment import Fragment
from lib.state import CubeState
from lib.validation import CubeSchema, FileEntry, compare_schemas, cube_encoding, encode_concat_values

if TYPE_CHECKING:
    from lib.discovery import SourceObject
    from lib.executors import Executor
    from lib.parsing import ParseFailure, ParseOptions, SourceConfig
    from lib.spool import Spool

__all__ = [
    "ParsedBatch",
    "Plan",
    "SummarizedBatch",
    "cube_sizes",
    "ledger_row",
    "parse_objects",
    "plan_update",
    "summarize_objects",
]


@dataclass
class ParsedBatch:
    """What parsing one batch yields, small enough to keep for the whole run."""

    batch: int
    entries: list[FileEntry] = field(default_factory=list)
    schemas: dict[str, CubeSchema] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    transient: dict[str, str] = field(default_factory=dict)


@dataclass
class Plan:
    """What a run will write: the schema and axes, and each accepted file's place.

    ``batches`` lists the placed URLs per parse batch. A writing run calls :meth:`spill` once the
    plan is made: the per-file entries and placements then wait in the spool and come back a batch at
    a time through :meth:`batch_items`, so a run's memory does not grow with the archive.
    """

    schema: CubeSchema | None
    axes: Axes
    fresh: bool
    placements: dict[str, Placement] = field(default_factory=dict)
    entries: dict[str, FileEntry] = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)
    batches: list[list[str]] = field(default_factory=list)
    grows: bool = False
    shared_source: str | None = None
    replaced: set[str] = field(default_factory=set)
    spilled: bool = False

    @property
    def accepted(self) -> int:
        """How many files the plan places (``batches`` holds each placed URL once)."""
        return sum(map(len, self.batches))

    def placed_urls(self) -> set[str]:
        return {url for batch in self.batches for url in batch}

    def spill(self, spool: Spool) -> None:
        """Move the entries and placements to the spool, a file per batch; only the shared source's stay."""
        if self.spilled:
            return
        for b, urls in enumerate(self.batches):
            spool.write(b, [(self.entries[u], self.placements[u]) for u in urls], kind="plan")
        keep = [self.shared_source] if self.shared_source else []
        self.entries = {u: self.entries[u] for u in keep}
        self.placements = {u: self.placements[u] for u in keep}
        self.spilled = True

    def batch_items(self, spool: Spool, batch: int) -> list[tuple[FileEntry, Placement]]:
        """One batch's placed files, each with its entry and placement."""
        if self.spilled:
            return spool.read(batch, kind="plan")
        return [(self.entries[u], self.placements[u]) for u in self.batches[batch]]


def cube_sizes(schema: CubeSchema | None, axes: Axes) -> dict[str, int]:
    """Every dim of the cube with its length: pattern dims first, then the files' dims in order."""
    if schema is None:
        return {}
    sizes = {d: len(v) for d, v in axes.pattern.items()}
    for var in schema.variables.values():
        for dim, size in zip(var.dims, var.shape, strict=True):
            if dim in schema.concat:
                sizes.setdefault(dim, int(axes.concat[dim].size) if dim in axes.concat else 0)
            else:
                sizes.setdefault(dim, int(size))
    return sizes


def _majority(keys: list[str]) -> str:
    counts = Counter(keys)
    best = max(counts.values())
    return next(k for k in keys if counts[k] == best)  # ties: the first file's


def _occupied(state: CubeState, replacing: set[str]) -> list[Occupied]:
    out = []
    for row in state.ledger.values():
        if row.status != INGESTED or row.url in replacing:
            continue
        out.append(
            Occupied(row.url, tuple(row.fields.items()), tuple((d, int(a), int(b)) for d, (a, b) in row.ranges.items()))
        )
    return out


def _cell_references(state: CubeState) -> dict[tuple[tuple[str, Any], ...], dict[str, str]]:
    out: dict[tuple[tuple[str, Any], ...], dict[str, str]] = {}
    for row in state.ledger.values():
        if row.status == INGESTED and row.digests:
            out.setdefault(tuple(row.fields.items()), row.digests)
    return out


def plan_update(
    state: CubeState,
    pattern: dict[str, str],
    concat: tuple[str, ...],
    parsed: list[ParsedBatch],
    replacing: set[str] | None = None,
) -> Plan:
    """Validate every parsed file against the cube and lay out the accepted ones.

    Raises
    ------
    SpecError
        The spec's pattern fields or concat dims differ from those the cube was built with.
    """
    replacing = replacing or set()
    entries = [e for b in parsed for e in b.entries]
    reps: dict[str, CubeSchema] = {}
    for b in parsed:
        for key, schema in b.schemas.items():
            reps.setdefault(key, schema)
    quarantined: dict[str, str] = {url: reason for b in parsed for url, reason in b.failed.items()}

    schema = state.schema
    if schema is not None and (schema.pattern != pattern or schema.concat != concat):
        raise SpecError(
            f"the cube was built with pattern fields {list(schema.pattern)} and concat "
            f"{list(schema.concat)}; "
            f"the spec now says {list(pattern)} and {list(concat)}: run `icefloe build` to rebuild it",
            key="source.pattern",
        )
    fresh = state.fresh
    if schema is None:
        if not entries:
            return Plan(schema=None, axes=Axes(), fresh=True, quarantined=quarantined)
        schema = reps[_majority([e.schema_key for e in entries])]

    reasons: dict[str, str | None] = {}
    accepted: list[FileEntry] = []
    for e in entries:
        if e.schema_key not in reasons:
            reasons[e.schema_key] = compare_schemas(reps[e.schema_key], schema, "{url}")
        reason = reasons[e.schema_key]
        if reason is not None:
            quarantined[e.url] = reason.replace("{url}", e.url)
        else:
            accepted.append(e)

    if fresh:
        for dim in concat:
            first = next((e for e in accepted if dim in e.concat), None)
            if first is not None:
                schema.concat_encoding[dim] = cube_encoding(first.concat[dim], dim)
        for path in list(schema.shared):
            schema.shared[path] = _majority([e.shared[path] for e in accepted]) if accepted else schema.shared[path]
    for dim in concat:
        if dim not in schema.concat_encoding:
            for e in accepted:
                quarantined[e.url] = f"'{e.url}' has no coordinate variable for the concat dimension '{dim}'"
            accepted = []
            continue
        failures = encode_concat_values(accepted, dim, schema.concat_encoding[dim])
        quarantined.update(failures)
        accepted = [e for e in accepted if e.url not in failures]

    kept = []
    for e in accepted:
        bad = next((p for p, d in e.shared.items() if d != schema.shared.get(p)), None)
        if bad is not None:
            quarantined[e.url] = f"coordinate '{bad}' in '{e.url}' differs from the cube's '{bad}'"
        else:
            kept.append(e)
    accepted = kept

    cell_refs = _cell_references(state)
    by_cell: dict[tuple[tuple[str, Any], ...], list[FileEntry]] = defaultdict(list)
    for e in accepted:
        by_cell[e.fields].append(e)
    kept = []
    for cell, members in by_cell.items():
        reference = cell_refs.get(cell) or members[0].cell
        holder = "the file already in the cube" if cell in cell_refs else f"'{members[0].url}'"
        where = ", ".join(f"{k}={v!r}" for k, v in cell)
        for e in members:
            bad = next((p for p, d in e.cell.items() if reference.get(p, d) != d), None)
            if bad is not None:
                quarantined[e.url] = (
                    f"variable '{bad}' in '{e.url}' differs from {holder} of the same cell "
                    f"({where or 'the whole cube'}); variables without a concat dim must be "
                    f"equal within a cell"
                )
            else:
                kept.append(e)
    accepted = sorted(kept, key=lambda e: (e.fields, e.url))

    existing = None if fresh else state.axes
    axes, placements, rejected = plan_layout(accepted, schema, existing, _occupied(state, replacing))
    quarantined.update(rejected)
    placed = {p.url: p for p in placements}
    batches = [[e.url for e in b.entries if e.url in placed] for b in parsed]
    grows = fresh or existing is None or axes.sizes() != existing.sizes()
    return Plan(
        schema=schema,
        axes=axes,
        fresh=fresh,
        placements=placed,
        entries={e.url: e for e in accepted if e.url in placed},
        quarantined=quarantined,
        batches=batches,
        grows=grows,
        shared_source=next((e.url for e in accepted if e.url in placed), None) if fresh else None,
        replaced={u for u in replacing if u in state.ledger and state.ledger[u].status == INGESTED},
    )


def ledger_row(entry: FileEntry, placement: Placement, run: str, at: str) -> LedgerRow:
    """The ledger row that records a placed file."""
    return LedgerRow(
        url=entry.url,
        etag=entry.etag,
        status=INGESTED,
        size=entry.size,
        fields=dict(entry.fields),
        ranges={d: [a, b] for d, a, b in placement.ranges},
        checksum=str(entry.checksum),
        parser=entry.parser,
        format=entry.format,
        refs=entry.ref_count,
        run=run,
        at=at,
        layout=entry.layout_key,
        digests=dict(entry.cell),
    )


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    size = max(1, -(-len(items) // max(parts, 1)))
    return [items[i : i + size] for i in range(0, len(items), size)]


# A parse call that runs longer than this (seconds) is stopped and its objects tried one by one; an
# object that alone overruns is quarantined, so no input can hang a run.
PARSE_SECONDS_PER_CALL = 60.0
PARSE_SECONDS_PER_OBJECT = 5.0


@dataclass
class SummarizedBatch:
    """What a parse worker sends back: per object an entry and its references (or the failure), and
    the full schema once per distinct schema key -- not a metadata document per file."""

    results: list[tuple[FileEntry, Fragment] | ParseFailure] = field(default_factory=list)
    schemas: dict[str, CubeSchema] = field(default_factory=dict)


def changed_since_listing(obj: SourceObject, source: SourceConfig) -> str | None:
    """Why an object's bytes are not the ones listed (it changed or vanished while being parsed), or None.

    Its refs will carry the listed checksum, so a change would only fail loudly on read; refusing it
    now says why, and the next run takes the new version (its etag differs from the refused one).
    """
    import obstore

    from lib.parsing import _registry, read_failure

    store, path = _registry(source).resolve(obj.url)
    try:
        now = obstore.head(store, path)
    except Exception as e:
        if classify_failure(e) == Failure.MISSING:
            return f"'{obj.url}' disappeared while it was being parsed; the next run will look again"
        raise read_failure(obj.url, e) from e
    if str(now.get("e_tag") or "") != obj.etag:
        return (
            f"'{obj.url}' changed while it was being parsed (etag {obj.etag} became {now.get('e_tag')}); "
            f"the next run takes the new version"
        )
    return None


def summarize_objects(
    objects: list[SourceObject], source: SourceConfig, options: ParseOptions, pattern: dict[str, str]
) -> SummarizedBatch:
    """Parse and summarize objects; runs in the executor's workers (plain, picklable arguments)."""
    from lib.parsing import ParseFailure, parse_urls
    from lib.storage import checksum_for
    from lib.validation import summarize_fragment

    out = SummarizedBatch()
    for obj, result in zip(objects, parse_urls([o.url for o in objects], source, options), strict=True):
        if isinstance(result, ParseFailure):
            out.results.append(result)
            continue
        try:
            changed = changed_since_listing(obj, source)
        except IcefloeError as e:
            out.results.append(ParseFailure(obj.url, str(e), transient=isinstance(e, StorageError)))
            continue
        if changed is not None:
            out.results.append(ParseFailure(obj.url, changed))
            continue
        entry, schema = summarize_fragment(
            result, obj, checksum_for(obj.url, obj.etag, obj.last_modified), pattern, options.concat
        )
        out.schemas.setdefault(entry.schema_key, schema)
        out.results.append((entry, result.references_only()))
    return out


def _compact(entry: FileEntry, shared: dict[Any, Any]) -> None:
    """Share what files have in common (digests, keys, decoding attributes) instead of a copy per file:
    the run keeps an entry per file, so its size is the run's memory per file."""
    entry.schema_key = sys.intern(entry.schema_key)
    entry.layout_key = sys.intern(entry.layout_key)
    entry.format, entry.parser = sys.intern(entry.format), sys.intern(entry.parser)
    # files of one cube mostly carry the same digests: one dict for all of them (never mutated)
    entry.shared = shared.setdefault(("shared", *sorted(entry.shared.items())), entry.shared)
    entry.cell = shared.setdefault(("cell", *sorted(entry.cell.items())), entry.cell)
    for coord in entry.concat.values():
        key = repr(sorted(coord.attrs.items()))
        coord.attrs = shared.setdefault(key, coord.attrs)


def parse_objects(
    objects: list[SourceObject],
    batch: int,
    source: SourceConfig,
    options: ParseOptions,
    executor: Executor,
    spool: Spool,
    pattern: dict[str, str],
) -> ParsedBatch:
    """Parse a batch of objects over the executor, spool their references, keep their entries.

    A call whose worker died is retried one object at a time, so the object that kills a parser is
    quarantined and the others still land.
    """
    from lib.executors import CallFailed
    from lib.parsing import ParseFailure

    chunks = _split(objects, max(1, executor.workers) * 2)
    out = ParsedBatch(batch=batch)
    spooled: list[Fragment] = []
    shared: dict[Any, Any] = {}

    def absorb(summary: SummarizedBatch) -> None:
        for key, schema in summary.schemas.items():
            out.schemas.setdefault(key, schema)
        for result in summary.results:
            if isinstance(result, ParseFailure):
                (out.transient if result.transient else out.failed)[result.url] = result.reason
                continue
            entry, refs = result
            _compact(entry, shared)
            entry.spool = (batch, len(spooled))
            out.entries.append(entry)
            spooled.append(refs)

    crashed: list[tuple[list[SourceObject], CallFailed]] = []
    worked = False  # did any call come back? then the workers are sound and a crash is an object's doing
    calls = [(chunk, source, options, pattern) for chunk in chunks]
    timeout = PARSE_SECONDS_PER_CALL + PARSE_SECONDS_PER_OBJECT * max((len(c) for c in chunks), default=1)
    for chunk, result in zip(chunks, executor.imap(summarize_objects, calls, timeout), strict=True):
        if isinstance(result, CallFailed) and result.crashed:
            crashed.append((chunk, result))
        elif isinstance(result, CallFailed):
            absorb(SummarizedBatch([ParseFailure(o.url, result.error, transient=True) for o in chunk]))
        else:
            worked = True
            absorb(result)
    suspects: list[tuple[SourceObject, CallFailed]] = []
    for chunk, _ in crashed:  # one object at a time, so the one that kills a parser is found
        for obj in chunk:  # one call at a time: a call that must be stopped takes no other object with it
            single = executor.map(
                summarize_objects,
                [([obj], source, options, pattern)],
                PARSE_SECONDS_PER_CALL + PARSE_SECONDS_PER_OBJECT,
            )[0]
            if isinstance(single, CallFailed) and single.crashed:
                suspects.append((obj, single))
            elif isinstance(single, CallFailed):
                absorb(SummarizedBatch([ParseFailure(obj.url, single.error, transient=True)]))
            else:
                worked = True
                absorb(single)
    if suspects and not worked:
        # every call died, alone or not: the workers are broken, not the objects
        raise StorageError(f"parser workers keep dying ({suspects[0][1].error}); no object was quarantined")
    for obj, failure in suspects:
        absorb(SummarizedBatch([ParseFailure(obj.url, f"'{obj.url}' crashed the parser process ({failure.error})")]))
    spool.write(batch, spooled)
    return out
