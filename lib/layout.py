"""Layout: the cube's axes, and where each file's block goes.

The pattern dims' values are the sorted values the file paths carry; each concat axis is the sorted
union of the files' (re-encoded) coordinate values. A file's position follows from both.

Along a concat dim a file's values must be consecutive on the axis and must not overlap another
file's in its cell, and its block must fit the chunk grid:

* on a **regular** grid (the default) it starts on a chunk boundary of the cube and covers whole
  chunks; a partial chunk is allowed only at the end of the axis, and then pins it (nothing may be
  appended after it);
* on a **rectilinear** grid (``rectilinear: [time]``) each file contributes its own chunk edges, so
  files of unequal length land; the chunk boundaries of files of other cells at the same positions
  must agree, and a partial last chunk must be one a reference can still point at (uncompressed,
  along the variable's leading dim), since HDF5 stores it padded to a full chunk.

Files need not arrive in order:

* a value inside an axis (a late file) or before its start (a back-fill) opens room by moving the
  existing references (a :class:`Move`, applied with Icechunk's manifest-only chunk moves), when the
  room is a whole number of chunks of a regular grid; otherwise the file is refused with the reason;
* on an axis the spec calls regular, files beyond a gap wait (*deferred*) until the gap fills, and a
  file absurdly far from the axis is refused ("is its time right?").
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lib.regularity import StepModel, describe_value, infer_step, reachable, stretches
from lib.validation import DATA, VIRTUAL, CubeSchema, FileEntry

__all__ = ["Axes", "Layout", "Move", "Occupied", "Placement", "Rules", "plan_layout"]

MIN_MAX_GAP = 100  # steps: a file further than this (or than the axis is long) from the axis is refused
_RECTILINEAR_HINT = "list the dim under rectilinear to let files of unequal length land"


@dataclass
class Axes:
    """The cube's axes: values of the pattern dims (sorted) and concat dims (sorted, cube encoding),
    and for each rectilinear concat dim the chunk boundaries of each referenced variable along it."""

    pattern: dict[str, list[Any]] = field(default_factory=dict)
    concat: dict[str, np.ndarray] = field(default_factory=dict)
    edges: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        out = {d: len(v) for d, v in self.pattern.items()}
        out.update({d: int(v.size) for d, v in self.concat.items()})
        return out

    def cell_of(self, fields: Iterable[tuple[str, Any]]) -> tuple[int, ...]:
        values = dict(fields)
        return tuple(self.pattern[d].index(values[d]) for d in self.pattern)

    def chunk_index(self, variable: str, dim: str, chunk: int, position: int) -> int:
        """The index, along ``dim``, of the chunk of ``variable`` that starts at ``position``."""
        return self.chunk_indices(variable, dim, chunk, [position])[0]

    def chunk_indices(self, variable: str, dim: str, chunk: int, positions: list[int]) -> list[int]:
        """:meth:`chunk_index` of many positions at once (a slice of files, on a build's hot path)."""
        boundaries = self.edges.get(dim, {}).get(variable)
        if boundaries is None:
            return [position // chunk for position in positions]
        return [bisect.bisect_right(boundaries, position) - 1 for position in positions]


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one file's block sits: its cell (index per pattern dim) and its range per concat dim."""

    url: str
    cell: tuple[int, ...]
    ranges: tuple[tuple[str, int, int], ...]
    chunking: tuple[tuple[str, str, int], ...] = ()  # (dim, variable, chunk) along rectilinear dims

    def __reduce__(self) -> tuple[Any, ...]:  # a spilled plan pickles one per file: positional is twice as quick
        return (Placement, (self.url, self.cell, self.ranges, self.chunking))

    def range_of(self, dim: str) -> tuple[int, int]:
        for d, start, stop in self.ranges:
            if d == dim:
                return start, stop
        raise KeyError(dim)

    def chunk_of(self, variable: str, dim: str, default: int) -> int:
        """This file's chunk of ``variable`` along ``dim`` (its own on a rectilinear dim)."""
        for d, v, chunk in self.chunking:
            if d == dim and v == variable:
                return chunk
        return default


@dataclass(frozen=True, slots=True)
class Occupied:
    """A block already in the cube (from the ledger): who holds which ranges of which cell."""

    url: str
    cell_values: tuple[tuple[str, Any], ...]
    ranges: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class Move:
    """Room opened in an axis: ``by`` positions inserted at position ``at`` of the axis as it was just
    before this move (moves apply in order; later positions shift right by ``by``)."""

    dim: str
    at: int
    by: int

    def shift(self, position: int) -> int:
        return position + self.by if position >= self.at else position


@dataclass(frozen=True)
class Rules:
    """What the spec says about the axes."""

    regular: frozenset[str] = frozenset()
    rectilinear: frozenset[str] = frozenset()
    max_gap: int | None = None  # steps; None: the axis' length, at least MIN_MAX_GAP


@dataclass
class Layout:
    """The outcome: the new axes, each placed file's place, the moves that make room, and the files
    refused (quarantined) or deferred, each with its reason."""

    axes: Axes
    placements: dict[str, Placement] = field(default_factory=dict)
    moves: list[Move] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    deferred: dict[str, str] = field(default_factory=dict)


def _fmt(values: np.ndarray, i: int) -> str:
    return str(values[i].item() if hasattr(values[i], "item") else values[i])


def _overlaps(a: tuple[tuple[str, int, int], ...], b: tuple[tuple[str, int, int], ...]) -> bool:
    rb = {d: (s, e) for d, s, e in b}
    return all(s < rb[d][1] and rb[d][0] < e for d, s, e in a if d in rb)


class _Planner:
    """One layout computation; :func:`plan_layout` is its interface."""

    def __init__(
        self,
        entries: Sequence[FileEntry],
        schema: CubeSchema,
        existing: Axes | None,
        held: Sequence[Occupied],
        rules: Rules,
    ) -> None:
        self.entries = sorted(entries, key=lambda e: (e.fields, e.url))
        self.schema = schema
        self.existing = existing or Axes()
        self.held = list(held)
        self.rules = rules
        self.refused: dict[str, str] = {}
        self.deferred: dict[str, str] = {}
        self.virtual = [v for v in schema.by_role(DATA) if v.kind == VIRTUAL]

    # -- helpers ---------------------------------------------------------------------------------

    def alive(self) -> list[FileEntry]:
        return [e for e in self.entries if e.url not in self.refused and e.url not in self.deferred]

    def chunks_along(self, dim: str) -> list[tuple[str, int]]:
        """(variable, chunk) of the referenced data variables along a concat dim, as the schema has them."""
        return [(v.path, v.chunks[v.dims.index(dim)]) for v in self.virtual if dim in v.dims]

    def file_chunk(self, entry: FileEntry, variable: str, dim: str, default: int) -> int:
        return dict(((d, p), c) for d, p, c in entry.chunking).get((dim, variable), default)

    def encoding(self, dim: str) -> dict[str, Any]:
        return dict(self.schema.concat_encoding.get(dim, {}))

    def show(self, dim: str, value: Any) -> str:
        return describe_value(value, self.encoding(dim))

    def refuse(self, entry: FileEntry, reason: str) -> None:
        self.refused.setdefault(entry.url, reason)

    # -- passes ----------------------------------------------------------------------------------

    def check_files(self) -> None:
        """Each file's own values: present, strictly increasing."""
        for e in self.entries:
            for dim in self.schema.concat:
                values = e.encoded[dim]
                if values.size == 0:
                    self.refuse(e, f"'{e.url}' has no values along '{dim}'")
                elif values.size > 1 and not np.all(values[1:] > values[:-1]):
                    self.refuse(e, f"coordinate '{dim}' in '{e.url}' is not strictly increasing")

    def pattern_axes(self, alive: list[FileEntry]) -> tuple[dict[str, list[Any]], list[Move]]:
        """Pattern values in sorted order; a new value that sorts inside opens room (a move along a
        pattern dim is always whole chunks: the cube chunks pattern dims one value at a time)."""
        axes: dict[str, list[Any]] = {}
        moves: list[Move] = []
        for dim in self.schema.pattern:
            old = list(self.existing.pattern.get(dim, []))
            new = sorted({e.field_values[dim] for e in alive} - set(old))
            merged = sorted([*old, *new])
            if old:
                for value in sorted((v for v in new if v < old[-1]), reverse=True):
                    moves.append(Move(dim, bisect.bisect_left(old, value), 1))
            axes[dim] = merged
        return axes, moves

    def regular_gaps(self, dim: str, alive: list[FileEntry]) -> bool:
        """Files beyond a gap on a regular axis wait; files absurdly far from it are refused.

        Returns whether a file was deferred or refused (the axes must then be worked out again).
        """
        old = self.existing.concat.get(dim, np.zeros(0))
        files = [e.encoded[dim] for e in alive]
        union = np.unique(np.concatenate([old, *files])) if files else old
        model = infer_step(old, files, self.encoding(dim), union)
        if model is None:
            return False
        changed = False
        for e in alive:  # values off the axis' steps, or a file that skips steps itself
            numbers = model.numbers(e.encoded[dim])
            if not model.on_steps(e.encoded[dim]).all():
                bad = int(np.argmin(model.on_steps(e.encoded[dim])))
                self.refuse(
                    e,
                    f"'{dim}' value {self.show(dim, e.encoded[dim][bad])} in '{e.url}' is not on the axis' "
                    f"steps ({model.describe()})",
                )
                changed = True
            elif numbers.size > 1 and np.any(np.diff(np.round(numbers)) > 1):
                i = int(np.argmax(np.diff(np.round(numbers)) > 1))
                missing = round(float(numbers[i + 1] - numbers[i])) - 1
                self.refuse(
                    e,
                    f"'{e.url}' skips {missing} step(s) of '{dim}' itself, between "
                    f"{self.show(dim, e.encoded[dim][i])} and {self.show(dim, e.encoded[dim][i + 1])}: "
                    f"an axis declared regular cannot hold it",
                )
                changed = True
        if changed:
            return True
        return self._defer_beyond_gaps(dim, model, old, self.alive())

    def _defer_beyond_gaps(self, dim: str, model: StepModel, old: np.ndarray, alive: list[FileEntry]) -> bool:
        """Files in stretches of the axis cut off by a gap wait for it to fill; stretches further from
        the main body of the axis than the limit are refused as strays."""
        numbers_of = {e.url: np.round(model.numbers(e.encoded[dim])).astype(np.int64) for e in alive}
        axis_steps = model.steps(old)
        steps = sorted({int(n) for numbers in numbers_of.values() for n in numbers} | set(axis_steps))
        if not steps:
            return False
        runs = stretches(steps)
        if axis_steps:  # the cube's axis, and whatever new values join it without a gap
            low = next(r[0] for r in runs if r[0] <= min(axis_steps) <= r[1])
            high = next(r[1] for r in runs if r[0] <= max(axis_steps) <= r[1])
            anchor = (low, high)
        else:  # a new cube starts from the longest stretch, or the earliest one within reach of it
            anchor = max(runs, key=lambda r: (r[1] - r[0], -r[0]))
        limit = self.rules.max_gap if self.rules.max_gap is not None else max(MIN_MAX_GAP, anchor[1] - anchor[0] + 1)
        body = reachable(runs, anchor, limit)
        if not axis_steps:
            anchor = min((r for r in body), key=lambda r: r[0])
        low, high = anchor
        changed = False
        for e in alive:
            first, last = int(numbers_of[e.url][0]), int(numbers_of[e.url][-1])
            if low <= first and last <= high:
                continue
            later = first > high
            away = first - high if later else low - last
            edge = self.show(dim, model.value_at(high if later else low, old, *(e.encoded[dim] for e in alive)))
            if not any(r[0] <= first <= r[1] for r in body):
                side = "beyond the axis end" if later else "before the axis start"
                self.refuse(
                    e,
                    f"'{e.url}' has {dim} {self.show(dim, e.encoded[dim][0])}, {away} steps {side} ({edge}); "
                    f"is its time right? (a file more than {limit} steps from the axis is refused; checks.max_gap "
                    f"sets how many)",
                )
            else:
                self.deferred[e.url] = (
                    f"'{e.url}' waits for {away - 1} missing step(s) of '{dim}' ({model.describe()} each) "
                    f"{'after' if later else 'before'} {edge}: it is published once they arrive"
                )
            changed = True
        return changed

    def concat_axis(self, dim: str, alive: list[FileEntry]) -> tuple[np.ndarray, list[Move]]:
        """The sorted union of the axis and the files' values, and the moves that open room for values
        inside the axis or before its start. Files whose room cannot be opened are refused."""
        old = self.existing.concat.get(dim)
        if old is None or old.size == 0:  # a new axis: the files' values, in their own dtype
            files = [e.encoded[dim] for e in alive]
            return (np.unique(np.concatenate(files)) if files else np.zeros(0)), []
        values = np.unique(np.concatenate([old, *(e.encoded[dim] for e in alive)])) if alive else old
        new = np.setdiff1d(values, old)
        inside = new[new < old[-1]]
        if inside.size == 0:
            return values, []
        positions = np.searchsorted(values, inside)
        moves: list[Move] = []
        for run in np.split(inside, np.flatnonzero(np.diff(positions) != 1) + 1):
            at = int(np.searchsorted(old, run[0]))
            problem = self._move_problem(dim, at, int(run.size))
            if problem is None:
                moves.append(Move(dim, at, int(run.size)))
                continue
            for e in alive:
                if np.intersect1d(e.encoded[dim], run).size:
                    self.refuse(
                        e,
                        f"'{e.url}' has {dim} {self.show(dim, run[0])}, "
                        + (
                            f"before the cube's '{dim}' axis ({self.show(dim, old[0])} on)"
                            if at == 0
                            else f"inside the cube's '{dim}' axis (between {self.show(dim, old[at - 1])} and "
                            f"{self.show(dim, old[at])})"
                        )
                        + f": {problem}",
                    )
        return values, sorted(moves, key=lambda m: -m.at)

    def _move_problem(self, dim: str, at: int, by: int) -> str | None:
        if dim in self.rules.rectilinear:
            return (
                "room cannot be made on a rectilinear axis (Icechunk moves chunks only on regular grids, "
                "where every chunk has the same size); rebuild the cube to include it"
            )
        for variable, chunk in self.chunks_along(dim):
            if at % chunk or by % chunk:
                return (
                    f"room for {by} value(s) at position {at} is not a whole number of chunks of "
                    f"'{variable}' (it holds {chunk} along '{dim}'); rebuild the cube to include it"
                )
        return None

    def place(self, axes: Axes) -> dict[str, Placement]:
        """Each file's cell and ranges; refuses values that are not consecutive."""
        placements: dict[str, Placement] = {}
        alike: dict[Any, Any] = {}  # cells and ranges repeat from file to file: one tuple each
        for e in self.alive():
            ranges = []
            for dim in self.schema.concat:
                axis = axes.concat[dim]
                pos = np.searchsorted(axis, e.encoded[dim])
                start, stop = int(pos[0]), int(pos[-1]) + 1
                if stop - start != pos.size:
                    self.refuse(
                        e,
                        f"the '{dim}' values of '{e.url}' are not consecutive on the cube's axis: "
                        f"other files add values between {_fmt(axis, start)} and {_fmt(axis, stop - 1)}",
                    )
                    break
                ranges.append((dim, start, stop))
            else:
                cell = alike.get(e.fields)
                if cell is None:
                    cell = alike[e.fields] = axes.cell_of(e.fields)
                shape = tuple(ranges)
                placements[e.url] = Placement(e.url, cell, alike.setdefault(shape, shape), e.chunking)
        return placements

    def chunk_starts(self, placements: dict[str, Placement], axes: Axes, moves: list[Move]) -> None:
        """On regular grids a file starts on a chunk boundary of the cube."""
        for dim in self.schema.concat:
            if dim in self.rules.rectilinear:
                continue
            for variable, chunk in self.chunks_along(dim):
                for url, p in placements.items():
                    a = p.range_of(dim)[0]
                    if url not in self.refused and a % chunk:
                        self.refused[url] = (
                            f"'{url}' would start mid-chunk on '{dim}': at position {a}, the cube's chunks of "
                            f"'{variable}' along '{dim}' hold {chunk} ({_RECTILINEAR_HINT})"
                        )

    def partial_chunks(self, placements: dict[str, Placement], axes: Axes, moves: list[Move]) -> None:
        """On regular grids a partial chunk is allowed only at the end of the axis, and pins it there."""
        held = [_moved(b, moves) for b in self.held]
        for dim in self.schema.concat:
            if dim in self.rules.rectilinear:
                continue
            size = int(axes.concat[dim].size)
            old = _shift(int(self.existing.concat[dim].size) if dim in self.existing.concat else 0, moves, dim)
            for _variable, chunk in self.chunks_along(dim):
                # blocks start on chunk boundaries, so an axis that ends mid-chunk ends with some block's
                # partial chunk, which pins the end there (named when that block is in a cell at hand)
                pinned = bool(old % chunk)
                holder = next((b.url for b in held for d, _, z in b.ranges if d == dim and z == old), None)
                for url, p in placements.items():
                    if url in self.refused:
                        continue
                    a, z = p.range_of(dim)
                    if pinned and z > old and a >= old:
                        self.refused[url] = (
                            f"'{url}' would extend '{dim}' past the partial last chunk of "
                            f"{repr(holder) if holder else 'a file already in the cube'} "
                            f"(chunks of {chunk}); {_RECTILINEAR_HINT}, or rebuild the cube"
                        )
                    elif (z - a) % chunk and z != size:
                        self.refused[url] = (
                            f"'{url}' ends with a partial chunk along '{dim}' ({z - a} values, chunks of "
                            f"{chunk}) that is not at the end of the axis ({_RECTILINEAR_HINT})"
                        )

    def rectilinear_grid(self, placements: dict[str, Placement], axes: Axes) -> None:
        """On rectilinear grids each file brings its own chunks; where files of other cells (or the cube)
        already have chunks at the same positions, they must be the same chunks."""
        by_url = {e.url: e for e in self.entries}
        for dim in self.schema.concat:
            if dim not in self.rules.rectilinear:
                continue
            for variable, default in self.chunks_along(dim):
                var = self.schema.variables[variable]
                old = self.existing.edges.get(dim, {}).get(variable, [0])
                claimed = _Chunks(itertools.pairwise(old))
                for url, p in placements.items():  # in sort order: the first file to claim a chunk keeps it
                    if url in self.refused:
                        continue
                    a, z = p.range_of(dim)
                    chunk = self.file_chunk(by_url[url], variable, dim, default)
                    if (z - a) % chunk and not _trimmable(var, dim):
                        filters = [
                            str(c.get("name", "?")).removeprefix("numcodecs.") for c in var.metadata["codecs"][1:]
                        ]
                        how = (
                            f"filtered ({', '.join(filters)})" if filters else "and the dim does not lead the variable"
                        )
                        self.refused[url] = (
                            f"'{url}' ends with a partial chunk of '{variable}' along '{dim}' ({(z - a) % chunk} of "
                            f"{chunk} values) that HDF5 stores padded to a full chunk, {how}: a reference cannot "
                            f"point at just its values"
                        )
                        continue
                    cuts = [*range(a, z, chunk), z]
                    clash = claimed.clash(cuts)
                    if clash is not None:
                        self.refused[url] = (
                            f"the chunks of '{variable}' in '{url}' along '{dim}' do not line up with those "
                            f"already at positions {clash[0]}:{clash[1]} (its own run {a}:{z} in chunks of {chunk})"
                        )
                        continue
                    claimed.claim(cuts)
                axes.edges.setdefault(dim, {})[variable] = claimed.boundaries()

    def overlaps(self, placements: dict[str, Placement], axes: Axes, moves: list[Move]) -> None:
        """A file must not overlap a block already in its cell (the later file, in sort order, is refused)."""
        by_cell: dict[tuple[int, ...], list[tuple[str, tuple[tuple[str, int, int], ...]]]] = defaultdict(list)
        for block in self.held:
            moved = _moved(block, moves)
            by_cell[axes.cell_of(block.cell_values)].append((block.url, moved.ranges))
        for url, p in placements.items():
            if url in self.refused:
                continue
            clash = next((u for u, ranges in by_cell[p.cell] if _overlaps(p.ranges, ranges)), None)
            if clash is None:
                by_cell[p.cell].append((url, p.ranges))
                continue
            where = ", ".join(f"{d}={v!r}" for d, v in zip(axes.pattern, _cell_values(axes, p.cell), strict=True))
            shared = ", ".join(f"{d} {self.show(d, axes.concat[d][s])}" for d, s, _ in p.ranges)
            self.refused[url] = (
                f"'{url}' overlaps '{clash}'"
                + (f" in the cell {where}" if where else "")
                + (f": they share {shared}" if shared else ": both map to the same place")
            )

    def run(self) -> Layout:
        self.check_files()
        while True:
            count = len(self.refused) + len(self.deferred)
            alive = self.alive()
            for dim in self.schema.concat:
                if dim in self.rules.regular and self.regular_gaps(dim, alive):
                    break
            if len(self.refused) + len(self.deferred) > count:
                continue
            pattern, moves = self.pattern_axes(alive)
            axes = Axes(pattern=pattern)
            for dim in self.schema.concat:
                axes.concat[dim], dim_moves = self.concat_axis(dim, alive)
                moves += dim_moves
            if len(self.refused) > count:
                continue  # the axes must not hold values of files just refused
            refused = len(self.refused)
            placements = self.place(axes)
            for check in (self.overlaps, self.chunk_starts, self.partial_chunks):
                if len(self.refused) == refused:  # one kind of refusal at a time: the axes change after each
                    check(placements, axes, moves)
            if len(self.refused) == refused:
                self.rectilinear_grid(placements, axes)
            if len(self.refused) + len(self.deferred) == count:
                return Layout(axes, placements, moves, self.refused, self.deferred)


class _Chunks:
    """Chunks claimed along one rectilinear dim: start → stop, never overlapping."""

    def __init__(self, chunks: Iterable[tuple[int, int]]) -> None:
        self.stops: dict[int, int] = dict(chunks)
        self.starts = sorted(self.stops)

    def clash(self, cuts: Sequence[int]) -> tuple[int, int] | None:
        """A claimed chunk that one of the new chunks would cut into, or None."""
        for a, z in itertools.pairwise(cuts):
            if self.stops.get(a) == z:
                continue  # the very same chunk
            i = bisect.bisect_left(self.starts, z)  # claimed chunks starting before z
            if i and self.stops[self.starts[i - 1]] > a:
                return self.starts[i - 1], self.stops[self.starts[i - 1]]
        return None

    def claim(self, cuts: Sequence[int]) -> None:
        for a, z in itertools.pairwise(cuts):
            if a not in self.stops:
                bisect.insort(self.starts, a)
            self.stops[a] = z

    def boundaries(self) -> list[int]:
        return sorted({0, *self.stops, *self.stops.values()})


def _shift(position: int, moves: Sequence[Move], dim: str) -> int:
    for m in moves:
        if m.dim == dim:
            position = m.shift(position)
    return position


def _moved(block: Occupied, moves: Sequence[Move]) -> Occupied:
    if not moves:
        return block
    ranges = []
    for dim, a, z in block.ranges:
        start = _shift(a, moves, dim)
        ranges.append((dim, start, start + (z - a)))
    return Occupied(block.url, block.cell_values, tuple(ranges))


def _trimmable(var: Any, dim: str) -> bool:
    """A partial chunk a reference can point at: uncompressed bytes, the dim leading the variable."""
    codecs = [c.get("name") for c in var.metadata.get("codecs", [])]
    return codecs == ["bytes"] and var.dims[:1] == (dim,)


def _cell_values(axes: Axes, cell: tuple[int, ...]) -> list[Any]:
    return [axes.pattern[d][i] for d, i in zip(axes.pattern, cell, strict=True)]


def plan_layout(
    entries: Sequence[FileEntry],
    schema: CubeSchema,
    existing: Axes | None = None,
    occupied: Iterable[Occupied] = (),
    rules: Rules | None = None,
) -> Layout:
    """Decide the axes, every file's placement, and the moves that open room; refuse or defer the rest.

    ``entries`` must already fit the schema and carry their concat values in the cube's encoding.
    ``existing`` are the axes of the cube being extended (None for a new cube); ``occupied`` the
    blocks it already holds, at their current positions, which new files must not overlap.
    """
    return _Planner(entries, schema, existing, list(occupied), rules or Rules()).run()
