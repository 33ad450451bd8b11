"""Planning: from parsed entries to a validated plan of what a run will write.

It fixes the cube's schema (the existing cube's, or for a new cube the one most files share),
quarantines every file that does not fit it -- with a reason naming the file, the variable and both
sides -- re-encodes concat coordinates into the cube's encoding, and lays out the axes and each
file's place. Nothing is written here; ``icefloe plan`` stops after this step.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from lib.errors import SpecError
from lib.layout import Axes, Move, Occupied, Placement, Rules, plan_layout
from lib.ledger import DEFERRED, INGESTED
from lib.state import CubeState
from lib.validation import CubeSchema, FileEntry, compare_schemas, cube_encoding, encode_concat_values

if TYPE_CHECKING:
    from lib.parsing.fanout import ParsedBatch
    from lib.spool import Spool

__all__ = ["Plan", "PlannedFiles", "cube_sizes", "plan_update", "planned_coordinates"]

Cell = tuple[tuple[str, Any], ...]  # a pattern cell: its fields and values, in pattern order


@dataclass
class Plan:
    """What a run will write: the schema and axes, and each accepted file's place.

    ``batches`` lists the placed URLs per parse batch. A writing run calls :meth:`spill` once the
    plan is made: the per-file entries, placements and URLs then wait in the spool and come back a
    batch at a time (:meth:`batch_items`, :meth:`iter_placed`), so a run's memory does not grow with
    the archive.
    """

    schema: CubeSchema | None
    axes: Axes
    fresh: bool
    placements: dict[str, Placement] = field(default_factory=dict)
    entries: dict[str, FileEntry] = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)
    deferred: dict[str, str] = field(default_factory=dict)
    batches: list[list[str] | SpilledURLs] = field(default_factory=list)
    grows: bool = False
    shared_source: str | None = None
    replaced: set[str] = field(default_factory=set)
    spilled: bool = False
    moves: list[Move] = field(default_factory=list)
    values: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # of refused and deferred files
    waiting: dict[str, str] = field(default_factory=dict)  # deferred files not yet recorded as such: since
    _spool: Spool | None = field(default=None, repr=False)  # where a spilled plan's batches wait

    @property
    def accepted(self) -> int:
        """How many files the plan places (``batches`` holds each placed URL once)."""
        return sum(map(len, self.batches))

    def iter_placed(self) -> Iterator[str]:
        """Each placed URL once, batch by batch (a set of them all would cost ~60 bytes per object);
        read back from the spool once the plan is spilled."""
        for b, batch in enumerate(self.batches):
            if isinstance(batch, SpilledURLs):
                if self._spool is None or not self._spool.path.exists():
                    raise RuntimeError("the plan's URLs were spilled to a spool that is closed")
                for part in self._spool.slices(b, kind="urls"):
                    yield from part
            else:
                yield from batch

    def placed_urls(self) -> set[str]:
        return set(self.iter_placed())

    def spill(self, spool: Spool) -> None:
        """Move the entries (what the commits need of them), placements and placed URLs to the spool,
        a file per batch; only the shared source's entry and placement, and each batch's count, stay
        in memory."""
        if self.spilled:
            return
        for b, urls in enumerate(self.batches):
            assert not isinstance(urls, SpilledURLs)
            spool.write(b, [(self.entries[u], self.placements[u]) for u in urls], kind="plan", pack=PlannedFiles.pack)
            spool.write(b, list(urls), kind="urls")
        keep = [self.shared_source] if self.shared_source else []
        self.entries = {u: self.entries[u] for u in keep}
        self.placements = {u: self.placements[u] for u in keep}
        # the URL strings came back from the spool with the entries, spread over the memory the
        # entries held: kept, they would hold a URL per file for the rest of the run
        self.batches = [SpilledURLs(len(urls)) for urls in self.batches]
        self._spool = spool
        self.spilled = True

    def planned_files(self, spool: Spool, batch: int) -> Iterator[PlannedFiles]:
        """One batch's placed files, a spooled slice at a time."""
        if self.spilled:
            yield from spool.slices(batch, kind="plan")
            return
        urls = self.batches[batch]
        assert not isinstance(urls, SpilledURLs)
        if urls:
            yield PlannedFiles.pack([(self.entries[u], self.placements[u]) for u in urls])


@dataclass
class PlannedFiles:
    """Placed files as columns, which is how a spilled plan keeps them: what the commits need of
    each file (its placement, the checksum its refs carry, its ledger row's values) and nothing else.

    A build reads a batch of them back for each commit. Columns load without an object per file:
    ~2 µs a file, against ~10 µs for the files' entries and placements (``benchmarks/RESULTS.md``, P4).
    """

    urls: list[str]
    etags: list[str]
    sizes: list[int]
    checksums: list[Any]
    fields: list[tuple[tuple[str, int | str], ...]]
    formats: list[str]
    parsers: list[str]
    refs: list[int]
    layouts: list[str]
    digests: list[dict[str, str]]
    chunking: list[tuple[tuple[str, str, int], ...]]
    cells: list[tuple[int, ...]]
    ranges: list[tuple[tuple[str, int, int], ...]]

    @classmethod
    def pack(cls, items: list[tuple[FileEntry, Placement]]) -> PlannedFiles:
        entries = [e for e, _ in items]
        return cls(
            [e.url for e in entries], [e.etag for e in entries], [e.size for e in entries],
            [e.checksum for e in entries], [e.fields for e in entries], [e.format for e in entries],
            [e.parser for e in entries], [e.ref_count for e in entries], [e.layout_key for e in entries],
            [e.cell for e in entries], [e.chunking for e in entries], [p.cell for _, p in items],
            [p.ranges for _, p in items],
        )  # fmt: skip

    def placements(self) -> list[Placement]:
        return list(map(Placement, self.urls, self.cells, self.ranges, self.chunking))

    def texts(self, run: str, at: str, epoch: int) -> list[str]:
        """Each file's ledger row, stored as :meth:`LedgerRow.to_json` writes it, stamped with the
        run, its time and the moves ``epoch``.

        Made from the columns straight to the text: through a ``LedgerRow`` and its copies a row
        took ~5x as long, and a build makes one per object.
        """
        stamp = {k: v for k, v in (("run", run), ("at", at)) if v}
        texts = []
        columns = (self.urls, self.etags, self.sizes, self.fields, self.ranges, self.checksums, self.parsers,
                   self.formats, self.refs, self.layouts, self.digests, self.chunking)  # fmt: skip
        for url, etag, size, fields, ranges, checksum, parser, format, refs, layout, digests, chunking in zip(
            *columns, strict=True
        ):
            row: dict[str, Any] = {"url": url}
            if etag:
                row["etag"] = etag
            row["status"] = _INGESTED
            if size:
                row["size"] = size
            if fields:
                row["fields"] = dict(fields)
            if ranges:
                row["ranges"] = {d: [a, b] for d, a, b in ranges}
            row["checksum"] = str(checksum)
            if parser:
                row["parser"] = parser
            if format:
                row["format"] = format
            if refs:
                row["refs"] = refs
            if layout:
                row["layout"] = layout
            if digests:
                row["digests"] = digests
            row.update(stamp)
            if chunking:
                row["chunking"] = [list(c) for c in chunking]
            if epoch:
                row["moves"] = epoch
            texts.append(orjson.dumps(row, default=str).decode())
        return texts


_INGESTED = INGESTED.value


class SpilledURLs:
    """A spilled plan's batch of placed URLs: they wait in the spool (``kind="urls"``), only their
    number stays in memory."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


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


def planned_coordinates(schema: CubeSchema, axes: Axes) -> dict[str, np.ndarray]:
    """The planned axes as a reader will see them: concat coordinates decoded, pattern values as they are."""
    from lib.validation import decode_axis

    out: dict[str, np.ndarray] = {d: np.asarray(v) for d, v in axes.pattern.items()}
    for dim, values in axes.concat.items():
        out[dim] = decode_axis(values, schema.concat_encoding.get(dim, {}), dim)
    return out


def _majority(keys: list[str]) -> str:
    counts = Counter(keys)
    best = max(counts.values())
    return next(k for k in keys if counts[k] == best)  # ties: the first file's


def _occupied(state: CubeState, replacing: set[str], cells: Iterable[Cell]) -> list[Occupied]:
    """The blocks the cube holds in the cells files of this run go to (the objects being replaced aside)."""
    out = []
    for cell in cells:
        for row in state.ledger.cell(cell).rows.values():
            if row.url in replacing:
                continue
            ranges = tuple((d, int(a), int(b)) for d, (a, b) in row.ranges.items())
            out.append(Occupied(row.url, tuple(row.fields.items()), ranges))
    return out


def _cell_references(state: CubeState, cells: Iterable[Cell]) -> dict[Cell, dict[str, str]]:
    """The digests of the variables without a concat dim that the cube holds for each of ``cells``."""
    out: dict[Cell, dict[str, str]] = {}
    for cell in cells:
        digests = state.ledger.cell(cell).digests
        if digests:
            out[cell] = digests
    return out


def check_spec_matches(
    schema: CubeSchema | None, pattern: dict[str, str], concat: tuple[str, ...], rules: Rules
) -> None:
    """An existing cube's pattern fields, concat dims and rectilinear dims must be the spec's.

    Raises
    ------
    SpecError
        They differ: the cube must be rebuilt.
    """
    if schema is None:
        return
    if schema.pattern != pattern or schema.concat != concat:
        raise SpecError(
            f"the cube was built with pattern fields {list(schema.pattern)} and concat "
            f"{list(schema.concat)}; "
            f"the spec now says {list(pattern)} and {list(concat)}: run `icefloe build` to rebuild it",
            key="source.pattern",
        )
    if set(schema.rectilinear) != set(rules.rectilinear):
        raise SpecError(
            f"the cube was built with rectilinear {list(schema.rectilinear)}; the spec now says "
            f"{sorted(rules.rectilinear)}: run `icefloe build` to rebuild it with the new chunk grids",
            key="rectilinear",
        )


def choose_schema(state: CubeState, entries: list[FileEntry], kinds: dict[str, CubeSchema]) -> CubeSchema | None:
    """The cube's schema: the existing cube's, or for a new cube the one most files share."""
    if state.schema is not None:
        return state.schema
    if not entries:
        return None
    return kinds[_majority([e.schema_key for e in entries])]


def fit_schema(
    entries: list[FileEntry], kinds: dict[str, CubeSchema], schema: CubeSchema
) -> tuple[list[FileEntry], dict[str, str]]:
    """Files whose schema is the cube's, and the others with the first difference (compared once per kind)."""
    reasons: dict[str, str | None] = {}
    accepted: list[FileEntry] = []
    refused: dict[str, str] = {}
    for e in entries:
        if e.schema_key not in reasons:
            reasons[e.schema_key] = compare_schemas(kinds[e.schema_key], schema, "{url}")
        reason = reasons[e.schema_key]
        if reason is None:
            accepted.append(e)
            continue
        refused[e.url] = reason.replace("{url}", e.url)
        left_out = dict(e.skipped)
        missing = next((path for path in left_out if f"lacks variable '{path}'" in reason), None)
        if missing is not None:  # say why this file has no such variable
            refused[e.url] += f": it was left out of this file ({left_out[missing]})"
    return accepted, refused


def adopt_encodings(schema: CubeSchema, accepted: list[FileEntry]) -> None:
    """A new cube takes its concat encodings from the first file that has each coordinate, and its
    shared coordinates from what most files hold."""
    for dim in schema.concat:
        first = next((e for e in accepted if dim in e.concat), None)
        if first is not None:
            schema.concat_encoding[dim] = cube_encoding(first.concat[dim], dim)
    for path in list(schema.shared):
        if accepted:
            schema.shared[path] = _majority([e.shared[path] for e in accepted])


def encode_concat_axes(schema: CubeSchema, accepted: list[FileEntry]) -> tuple[list[FileEntry], dict[str, str]]:
    """Re-encode every file's concat coordinates into the cube's encodings; refuse what cannot be."""
    refused: dict[str, str] = {}
    for dim in schema.concat:
        if dim not in schema.concat_encoding:
            refused.update(
                {e.url: f"'{e.url}' has no coordinate variable for the concat dimension '{dim}'" for e in accepted}
            )
            return [], refused
        refused.update(encode_concat_values(accepted, dim, schema.concat_encoding[dim]))
        accepted = [e for e in accepted if e.url not in refused]
    return accepted, refused


def check_shared_coordinates(schema: CubeSchema, accepted: list[FileEntry]) -> tuple[list[FileEntry], dict[str, str]]:
    """Coordinates without a concat dim (``lat``) must equal the cube's."""
    kept, refused = [], {}
    for e in accepted:
        bad = next((p for p, d in e.shared.items() if d != schema.shared.get(p)), None)
        if bad is not None:
            refused[e.url] = f"coordinate '{bad}' in '{e.url}' differs from the cube's '{bad}'"
        else:
            kept.append(e)
    return kept, refused


def check_cell_variables(state: CubeState, accepted: list[FileEntry]) -> tuple[list[FileEntry], dict[str, str]]:
    """Variables without a concat dim must be equal across the files of one pattern cell (and equal to
    what the cube already holds for that cell)."""
    by_cell: dict[Cell, list[FileEntry]] = defaultdict(list)
    for e in accepted:
        by_cell[e.fields].append(e)
    cell_refs = _cell_references(state, by_cell)
    kept, refused = [], {}
    for cell, members in by_cell.items():
        reference = cell_refs.get(cell) or members[0].cell
        holder = "the file already in the cube" if cell in cell_refs else f"'{members[0].url}'"
        where = ", ".join(f"{k}={v!r}" for k, v in cell)
        for e in members:
            bad = next((p for p, d in e.cell.items() if reference.get(p, d) != d), None)
            if bad is not None:
                refused[e.url] = (
                    f"variable '{bad}' in '{e.url}' differs from {holder} of the same cell "
                    f"({where or 'the whole cube'}); variables without a concat dim must be "
                    f"equal within a cell"
                )
            else:
                kept.append(e)
    return kept, refused


def plan_update(
    state: CubeState,
    pattern: dict[str, str],
    concat: tuple[str, ...],
    parsed: list[ParsedBatch],
    replacing: set[str] | None = None,
    rules: Rules | None = None,
    max_wait: dt.timedelta | None = None,
    now: dt.datetime | None = None,
    refused: dict[str, str] | None = None,
) -> Plan:
    """Validate every parsed file against the cube and lay out the accepted ones.

    The passes, in order: choose the schema, fit each file to it, re-encode the concat coordinates,
    compare shared coordinates and per-cell variables, lay out the axes. Each pass refuses files with
    a reason; what passes every one is placed, or waits for a gap on a regular axis to fill (a file
    that has waited longer than ``max_wait`` is refused instead). ``refused`` files are left out from
    the start, with their reasons (a later check found them wanting).

    Raises
    ------
    SpecError
        The spec's pattern fields, concat or rectilinear dims differ from those the cube was built with.
    """
    replacing = replacing or set()
    rules = rules or Rules()
    check_spec_matches(state.schema, pattern, concat, rules)
    refused = refused or {}
    entries = [e for b in parsed for e in b.entries if e.url not in refused]
    kinds: dict[str, CubeSchema] = {}
    for b in parsed:
        for key, kind in b.schemas.items():
            kinds.setdefault(key, kind)
    quarantined: dict[str, str] = {url: reason for b in parsed for url, reason in b.failed.items()}
    quarantined.update(refused)
    schema = choose_schema(state, entries, kinds)
    if schema is None:
        return Plan(schema=None, axes=Axes(), fresh=True, quarantined=quarantined)

    accepted, refused = fit_schema(entries, kinds, schema)
    quarantined.update(refused)
    if state.fresh:
        adopt_encodings(schema, accepted)
    for check in (encode_concat_axes, check_shared_coordinates):
        accepted, refused = check(schema, accepted)
        quarantined.update(refused)
    accepted, refused = check_cell_variables(state, accepted)
    quarantined.update(refused)
    accepted.sort(key=lambda e: (e.fields, e.url))

    existing = None if state.fresh else state.axes
    held = [] if state.fresh else _occupied(state, replacing, {e.fields for e in accepted})
    layout = plan_layout(accepted, schema, existing, held, rules)
    quarantined.update(layout.refused)
    deferred, waiting, expired = _waits(state, layout.deferred, max_wait, now or dt.datetime.now(dt.UTC))
    quarantined.update(expired)
    _encode_refused([e for e in entries if e.url in quarantined and not e.encoded], schema)
    placed = layout.placements
    return Plan(
        schema=schema,
        axes=layout.axes,
        fresh=state.fresh,
        placements=placed,
        entries={e.url: e for e in accepted if e.url in placed},
        quarantined=quarantined,
        deferred=deferred,
        batches=[[e.url for e in b.entries if e.url in placed] for b in parsed],
        grows=state.fresh or existing is None or layout.axes.sizes() != existing.sizes() or bool(layout.moves),
        shared_source=next((e.url for e in accepted if e.url in placed), None) if state.fresh else None,
        replaced={u for u in replacing if (row := state.ledger.get(u)) is not None and row.status == INGESTED},
        moves=layout.moves,
        values={e.url: {d: v.tolist() for d, v in e.encoded.items()} for e in entries if e.url not in placed},
        waiting=waiting,
    )


def _encode_refused(entries: list[FileEntry], schema: CubeSchema) -> None:
    """Concat values, in the cube's encoding, of files refused before they were encoded (best effort):
    coverage counts the positions they would have filled as holes."""
    for dim in schema.concat:
        if dim in schema.concat_encoding:
            encode_concat_values([e for e in entries if dim in e.concat], dim, schema.concat_encoding[dim])


def _waits(
    state: CubeState, deferred: dict[str, str], max_wait: dt.timedelta | None, now: dt.datetime
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Which deferred files go on waiting, which start to, and which have waited too long.

    Returns (the files that wait, with their reasons; of those, the ones the ledger does not yet
    record as waiting, with the time they start to; the files that waited longer than ``max_wait``,
    with the reason they are quarantined). A file's wait starts when it is first deferred.
    """
    waits: dict[str, str] = {}
    starting: dict[str, str] = {}
    expired: dict[str, str] = {}
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    for url, reason in deferred.items():
        row = state.ledger.get(url)
        since = row.since if row is not None and row.status == DEFERRED and row.since else None
        if since is None:
            starting[url] = stamp
        elif max_wait is not None and now - dt.datetime.fromisoformat(since.replace("Z", "+00:00")) > max_wait:
            expired[url] = f"{reason}; it has waited since {since}, longer than checks.max_wait ({max_wait})"
            continue
        waits[url] = reason
    return waits, starting, expired
