"""Layout: the cube's axes, and where each file's block goes.

The pattern dims' values are the sorted values the file paths carry; each concat axis is the sorted
union of the files' (re-encoded) coordinate values. A file's position follows from both. A file is
placed only if its block obeys the one-chunk-per-range rule along every concat dim: it starts on a
chunk boundary of the cube, covers whole chunks, and ends in a partial chunk only at the end of the
axis. Its values must be consecutive on the axis and must not overlap another file's in its cell.

An existing cube's axes only grow at their ends: a new value that would land inside an axis (which
would move every reference after it) quarantines its file, with the advice to rebuild.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lib.validation import CubeSchema, FileEntry

__all__ = ["Axes", "Placement", "plan_layout"]


@dataclass
class Axes:
    """Coordinate values of the pattern dims (sorted) and concat dims (sorted, cube encoding)."""

    pattern: dict[str, list[Any]] = field(default_factory=dict)
    concat: dict[str, np.ndarray] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        out = {d: len(v) for d, v in self.pattern.items()}
        out.update({d: int(v.size) for d, v in self.concat.items()})
        return out

    def cell_of(self, fields: Iterable[tuple[str, Any]]) -> tuple[int, ...]:
        values = dict(fields)
        return tuple(self.pattern[d].index(values[d]) for d in self.pattern)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one file's block sits: its cell (index per pattern dim) and its range per concat dim."""

    url: str
    cell: tuple[int, ...]
    ranges: tuple[tuple[str, int, int], ...]

    def range_of(self, dim: str) -> tuple[int, int]:
        for d, start, stop in self.ranges:
            if d == dim:
                return start, stop
        raise KeyError(dim)


@dataclass(frozen=True, slots=True)
class Occupied:
    """A block already in the cube (from the ledger): who holds which ranges of which cell."""

    url: str
    cell_values: tuple[tuple[str, Any], ...]
    ranges: tuple[tuple[str, int, int], ...]


def _fmt(values: np.ndarray, i: int) -> str:
    return str(values[i].item() if hasattr(values[i], "item") else values[i])


def _overlaps(a: tuple[tuple[str, int, int], ...], b: tuple[tuple[str, int, int], ...]) -> bool:
    rb = {d: (s, e) for d, s, e in b}
    return all(s < rb[d][1] and rb[d][0] < e for d, s, e in a if d in rb)


def _grow_pattern(existing: list[Any], new: Iterable[Any]) -> tuple[list[Any], set[Any]]:
    """Existing values plus new ones appended in order; returns also the new values that cannot be."""
    fresh = sorted(set(new) - set(existing))
    if not existing:
        return fresh, set()
    last = existing[-1]
    bad = {v for v in fresh if v < last}
    return existing + [v for v in fresh if v not in bad], bad


def plan_layout(
    entries: list[FileEntry], schema: CubeSchema, existing: Axes | None = None, occupied: Iterable[Occupied] = ()
) -> tuple[Axes, list[Placement], dict[str, str]]:
    """Decide the axes and every file's placement; return files that cannot be placed, with reasons.

    ``entries`` must already fit the schema and carry their concat values in the cube's encoding.
    ``existing`` are the axes of the cube being extended (None for a new cube); ``occupied`` the
    blocks it already holds, which new files must not overlap.
    """
    rejected: dict[str, str] = {}
    dims = list(schema.pattern)
    concat = list(schema.concat)
    held = list(occupied)

    for entry in entries:
        for dim in concat:
            values = entry.encoded[dim]
            if values.size == 0:
                rejected[entry.url] = f"'{entry.url}' has no values along '{dim}'"
            elif values.size > 1 and not np.all(values[1:] > values[:-1]):
                rejected[entry.url] = f"coordinate '{dim}' in '{entry.url}' is not strictly increasing"

    while True:
        alive = [e for e in entries if e.url not in rejected]
        before = len(rejected)
        axes = Axes()
        for d in dims:
            base = list(existing.pattern.get(d, [])) if existing else []
            grown, bad = _grow_pattern(base, (e.field_values[d] for e in alive))
            axes.pattern[d] = grown
            for e in alive:
                if e.field_values[d] in bad:
                    rejected[e.url] = (
                        f"'{e.url}' has {d}={e.field_values[d]!r}, which sorts before the cube's last "
                        f"{d} {base[-1]!r}; an existing cube only grows at the end of its axes "
                        f"(run `icefloe build` to rebuild it in order)"
                    )
        for d in concat:
            axis: np.ndarray = existing.concat[d] if existing and d in existing.concat else np.zeros(0)
            new = np.concatenate([e.encoded[d] for e in alive]) if alive else np.zeros(0)
            fresh = np.setdiff1d(np.unique(new), axis) if axis.size else np.unique(new)
            if axis.size and fresh.size and fresh.min() < axis[-1]:
                inner = fresh[fresh < axis[-1]]
                for e in alive:
                    hit = np.intersect1d(e.encoded[d], inner)
                    if hit.size:
                        rejected[e.url] = (
                            f"'{e.url}' has {d} value {hit[0].item()!r} inside the cube's existing "
                            f"'{d}' axis (which ends at {axis[-1].item()!r}); an existing cube only "
                            f"grows at the end of its axes (run `icefloe build` to rebuild it)"
                        )
                fresh = fresh[fresh > axis[-1]]
            axes.concat[d] = np.concatenate([axis, fresh]) if axis.size else fresh
        if len(rejected) > before:
            continue  # the axes must not hold values of files just refused

        placements, fresh_rejects = _place(alive, schema, axes)
        if not fresh_rejects:
            fresh_rejects = _overlaps_in_cells(placements, held, axes)
        if not fresh_rejects:
            fresh_rejects = _partial_chunks(placements, held, schema, axes, existing)
        if not fresh_rejects:
            return axes, placements, rejected
        rejected.update(fresh_rejects)


def _place(alive: list[FileEntry], schema: CubeSchema, axes: Axes) -> tuple[list[Placement], dict[str, str]]:
    """Each file's cell and ranges; rejects values that are not consecutive or start mid-chunk."""
    placements: list[Placement] = []
    rejects: dict[str, str] = {}
    for e in alive:
        ranges = []
        for d in schema.concat:
            axis = axes.concat[d]
            pos = np.searchsorted(axis, e.encoded[d])
            start, stop = int(pos[0]), int(pos[-1]) + 1
            if stop - start != pos.size:
                rejects[e.url] = (
                    f"the '{d}' values of '{e.url}' are not consecutive on the cube's axis: "
                    f"other files add values between {_fmt(axis, start)} and {_fmt(axis, stop - 1)}"
                )
                break
            bad = next((c for c in sorted(schema.concat_chunks(d)) if start % c), None)
            if bad is not None:
                rejects[e.url] = (
                    f"'{e.url}' would start mid-chunk on '{d}': at position {start}, "
                    f"the cube's chunks along '{d}' hold {bad}"
                )
                break
            ranges.append((d, start, stop))
        if e.url not in rejects:
            placements.append(Placement(e.url, axes.cell_of(e.fields), tuple(ranges)))
    return placements, rejects


def _overlaps_in_cells(placements: list[Placement], held: list[Occupied], axes: Axes) -> dict[str, str]:
    """Rejects a file whose block overlaps one already in its cell (the later file, in sort order)."""
    rejects: dict[str, str] = {}
    by_cell: dict[tuple[int, ...], list[tuple[str, tuple[tuple[str, int, int], ...]]]] = defaultdict(list)
    for block in held:
        by_cell[axes.cell_of(block.cell_values)].append((block.url, block.ranges))
    for p in placements:
        clash = next((url for url, ranges in by_cell[p.cell] if _overlaps(p.ranges, ranges)), None)
        if clash is None:
            by_cell[p.cell].append((p.url, p.ranges))
            continue
        where = ", ".join(f"{d}={v!r}" for d, v in zip(axes.pattern, _cell_values(axes, p.cell), strict=True))
        shared = ", ".join(f"{d} {_fmt(axes.concat[d], s)}" for d, s, _ in p.ranges)
        rejects[p.url] = (
            f"'{p.url}' overlaps '{clash}'"
            + (f" in the cell {where}" if where else "")
            + (f": they share {shared}" if shared else ": both map to the same place")
        )
    return rejects


def _partial_chunks(
    placements: list[Placement], held: list[Occupied], schema: CubeSchema, axes: Axes, existing: Axes | None
) -> dict[str, str]:
    """A partial chunk is allowed only at the end of its axis.

    A new file whose last chunk is partial must end the axis. An existing one that does pins the
    axis: new files may not extend it, or readers would see the stale tail of that chunk.
    """
    rejects: dict[str, str] = {}
    for d in schema.concat:
        size = int(axes.concat[d].size)
        old = int(existing.concat[d].size) if existing and d in existing.concat else 0
        for c in sorted(schema.concat_chunks(d)):
            pinned = next(
                (b.url for b in held for dim, a, z in b.ranges if dim == d and z == old and (z - a) % c), None
            )
            for p in placements:
                a, z = p.range_of(d)
                if pinned is not None and z > old:
                    rejects[p.url] = (
                        f"'{p.url}' would extend '{d}' past the partial last chunk of '{pinned}' "
                        f"(chunks of {c}); run `icefloe build` to rebuild the cube"
                    )
                elif (z - a) % c and z != size:
                    rejects[p.url] = (
                        f"'{p.url}' ends with a partial chunk along '{d}' ({z - a} values, "
                        f"chunks of {c}) that is not at the end of the axis"
                    )
    return rejects


def _cell_values(axes: Axes, cell: tuple[int, ...]) -> list[Any]:
    return [axes.pattern[d][i] for d, i in zip(axes.pattern, cell, strict=True)]
