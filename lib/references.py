"""References: a batch's files written into the cube's arrays, each reference at its place and with
its file's checksum.

A batch comes back from the spool a packed slice of files at a time (:class:`SlicePart`). A file's
small block of a variable goes in as one ``VirtualChunkSpec`` per reference (the slice's blocks of a
variable in one ``set_virtual_refs`` call), a larger block in one ``set_virtual_refs_arr(...,
arr_offset=...)`` call. Where each file's block starts is worked out for the whole slice at once, and
only one slice's Icechunk objects exist at a time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from lib.errors import StorageError
from lib.layout import Axes, Placement
from lib.memory import gc_paused
from lib.parsing.fragment import Fragment, PackedSlice
from lib.storage import ref_location
from lib.validation import CELL, DATA, VIRTUAL, CubeSchema, cube_dims

if TYPE_CHECKING:
    from icechunk import IcechunkStore

__all__ = ["SPEC_REFS_MAX", "BatchItem", "SlicePart", "write_refs"]


@dataclass
class BatchItem:
    """One file of a batch: where it goes, its fragment, and the checksum its refs carry."""

    placement: Placement
    fragment: Fragment
    checksum: Any


@dataclass
class SlicePart:
    """The placed files of one spooled slice: which of its files (``index``), where each goes, and
    the checksum its refs carry."""

    fragments: PackedSlice
    index: list[int]
    placements: list[Placement]
    checksums: list[Any]

    @classmethod
    def of(cls, item: BatchItem) -> SlicePart:
        return cls(PackedSlice.pack([item.fragment]), [0], [item.placement], [item.checksum])

    @classmethod
    def placed(cls, fragments: PackedSlice, planned: Mapping[str, tuple[Placement, Any]]) -> SlicePart:
        """The files of a spooled slice that the plan places (``planned``: each one's placement and
        checksum; the others were refused at planning)."""
        index = [i for i, url in enumerate(fragments.urls) if url in planned]
        items = [planned[fragments.urls[i]] for i in index]
        return cls(fragments, index, [p for p, _ in items], [c for _, c in items])

    def urls(self) -> list[str]:
        return [self.fragments.urls[i] for i in self.index]

    def only(self, paths: set[str]) -> SlicePart:
        """The same files with only the arrays of ``paths``."""
        return dataclasses.replace(self, fragments=self.fragments.only(paths))


class RefBlock(NamedTuple):
    """Files of a slice whose refs of one variable share a chunk grid: ``rows`` pick them out of the
    slice's placed files, ``offsets`` and ``lengths`` hold a row of the file's refs each."""

    rows: list[int]
    grid: tuple[int, ...]
    offsets: np.ndarray
    lengths: np.ndarray


def _blocks(part: SlicePart, path: str) -> Iterator[RefBlock]:
    """A variable's refs in a slice: the packed files in one block, each loose file in its own."""
    packed = part.fragments
    stacked = packed.stacked.get(path)
    if stacked is not None:
        assert stacked.lengths is not None and stacked.offsets is not None  # referenced: the parser gave refs
        index = np.asarray(part.index, dtype=np.intp)
        flat = (len(packed), -1)
        offsets = stacked.offsets.reshape(flat)[index].astype(np.uint64, copy=False)
        lengths = stacked.lengths.reshape(flat)[index].astype(np.uint64, copy=False)
        yield RefBlock(list(range(len(part.index))), stacked.lengths.shape[1:], offsets, lengths)
        return
    for k, i in enumerate(part.index):
        frag = packed.loose[i][path]
        assert frag.lengths is not None and frag.offsets is not None
        shape = (1, -1)
        offsets = frag.offsets.reshape(shape).astype(np.uint64, copy=False)
        yield RefBlock([k], frag.lengths.shape, offsets, frag.lengths.reshape(shape).astype(np.uint64, copy=False))


# A file's block of a variable with at most this many refs goes in as one ``VirtualChunkSpec`` per
# ref, the slice's blocks in one ``set_virtual_refs`` call; larger blocks in a ``set_virtual_refs_arr``
# call each. The arr call costs ~10 µs plus ~1.2 µs a ref, a spec ~2-3 µs a ref (benchmarks/RESULTS.md, P4).
SPEC_REFS_MAX = 6


class RefCall(NamedTuple):
    """One ``set_virtual_refs_arr`` call: one file's block of one variable, all its refs carrying the
    file's checksum."""

    array_path: str
    chunk_grid_shape: tuple[int, ...]
    locations: list[str]
    offsets: np.ndarray
    lengths: np.ndarray
    arr_offset: tuple[int, ...]
    checksum: Any


@dataclass
class RefWrites:
    """A slice's references: small blocks as specs per variable, large ones as a call per file."""

    specs: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    calls: list[RefCall] = dataclasses.field(default_factory=list)

    @property
    def refs(self) -> int:
        return sum(map(len, self.specs.values())) + sum(len(c.locations) - c.locations.count("") for c in self.calls)


def _ref_writes(part: SlicePart, schema: CubeSchema, axes: Axes, refs_for: set[str]) -> RefWrites:
    """Each file's references of a slice, each with its file's own checksum (the per-file hot path
    of a build).

    Where each file's block starts (its cell, then its first chunk along each concat dim) is worked
    out for the whole slice at once. Chunks a file never wrote stay empty in the cube (they read as
    the fill value). Along a rectilinear dim a file's partial last chunk is referenced with only the
    bytes of its values (the layout admits that only for uncompressed chunks along their leading
    dim, where those bytes come first).
    """
    out = RefWrites()
    if not part.index:
        return out
    packed = part.fragments
    locations = [ref_location(packed.urls[i]) for i in part.index]
    owners: _Owners | None = None  # made for the first block written as specs
    cells = np.array([p.cell for p in part.placements], dtype=np.int64).reshape(len(part.placements), -1)
    firsts: dict[str, list[int]] = {}  # per concat dim, where each file starts along it
    for var in schema.variables.values():
        if var.kind != VIRTUAL or var.path not in refs_for:
            continue
        path = var.path
        leading = (1,) * (len(cube_dims(var, schema)) - len(var.dims))  # the pattern dims
        starts = np.zeros((len(part.index), len(var.dims)), dtype=np.int64)
        rectilinear: list[tuple[int, str, int]] = []
        for axis, (dim, chunk) in enumerate(zip(var.dims, var.chunks, strict=True)):
            if dim not in schema.concat:
                continue
            if dim not in firsts:
                firsts[dim] = [p.range_of(dim)[0] for p in part.placements]
            starts[:, axis] = axes.chunk_indices(path, dim, chunk, firsts[dim])
            if dim in schema.rectilinear:
                rectilinear.append((axis, dim, chunk))
        if var.role in (DATA, CELL):
            starts = np.concatenate([cells, starts], axis=1)
        for block in _blocks(part, path):
            lengths = block.lengths
            if rectilinear:
                lengths = lengths.copy()
                for r, k in enumerate(block.rows):
                    placement = part.placements[k]
                    for axis, dim, chunk in rectilinear:
                        cut = placement.chunk_of(path, dim, chunk)
                        lengths[r] = _trimmed(block.grid, lengths[r], axis, cut, placement.range_of(dim))
            grid = leading + block.grid
            if lengths.shape[1] <= SPEC_REFS_MAX:
                if owners is None:
                    owners = _Owners.of(part, locations)
                _add_specs(out.specs.setdefault(path, []), block, grid, starts, lengths, owners)
                continue
            for r, k in enumerate(block.rows):
                row = lengths[r]
                if not row.any():
                    continue
                where = [locations[k]] * row.size if row.all() else [locations[k] if n else "" for n in row.tolist()]
                arr_offset = tuple(starts[k].tolist())
                out.calls.append(RefCall(path, grid, where, block.offsets[r], row, arr_offset, part.checksums[k]))
    return out


class _Owners(NamedTuple):
    """A slice's placed files as object arrays, to pick out per reference in C: each file's location
    and checksum (an ETag, or a last-modified time; None where it has the other or none)."""

    locations: np.ndarray
    etags: np.ndarray
    times: np.ndarray | None  # None: no file of the slice has one

    @classmethod
    def of(cls, part: SlicePart, locations: list[str]) -> _Owners:
        def column(values: list[Any]) -> np.ndarray:
            out = np.empty(len(values), dtype=object)
            out[:] = values
            return out

        times = [c if isinstance(c, dt.datetime) else None for c in part.checksums]
        return cls(
            column(locations),
            column([c if isinstance(c, str) else None for c in part.checksums]),
            column(times) if any(t is not None for t in times) else None,
        )


def _add_specs(
    specs: list[Any], block: RefBlock, grid: tuple[int, ...], starts: np.ndarray, lengths: np.ndarray, owners: _Owners
) -> None:
    """A block's refs as ``VirtualChunkSpec`` objects, made for all its files at once."""
    from icechunk import VirtualChunkSpec

    within = np.array(list(np.ndindex(*grid)), dtype=np.int64).reshape(math.prod(grid), len(grid))  # in the file grid
    index = starts[block.rows][:, None, :] + within[None, :, :]
    written = lengths != 0
    rows = np.asarray(block.rows, dtype=np.intp)[np.nonzero(written)[0]]  # each ref's file
    specs.extend(
        map(
            VirtualChunkSpec,
            index[written].tolist(),
            owners.locations[rows].tolist(),
            block.offsets[written].tolist(),
            lengths[written].tolist(),
            owners.etags[rows].tolist(),
            itertools.repeat(None) if owners.times is None else owners.times[rows].tolist(),
        )
    )


def _trimmed(grid: tuple[int, ...], flat: np.ndarray, axis: int, chunk: int, span: tuple[int, int]) -> np.ndarray:
    """Lengths with the partial last chunk along ``axis`` cut to its values' bytes."""
    values = (span[1] - span[0]) % chunk
    if not values:
        return flat
    cut = flat.reshape(grid).copy()
    last: list[Any] = [slice(None)] * cut.ndim
    last[axis] = -1
    cut[tuple(last)] = cut[tuple(last)] // chunk * values
    return cut.ravel()


def _set_refs(store: IcechunkStore, writes: RefWrites) -> int:
    """Write a slice's references; returns how many."""
    failed: dict[str, int] = {}
    for path, chunks in writes.specs.items():
        failed[path] = len(store.set_virtual_refs(path, chunks, validate_containers=True) or ())
    for call in writes.calls:
        refused = store.set_virtual_refs_arr(
            *call[:5], validate_containers=True, arr_offset=call.arr_offset, checksum=call.checksum
        )
        failed[call.array_path] = failed.get(call.array_path, 0) + len(refused or ())
    for path, n in failed.items():
        if n:
            raise StorageError(
                f"Icechunk refused {n} references of '{path}' (outside the source's virtual chunk container?)"
            )
    return writes.refs


def write_refs(store: IcechunkStore, part: SlicePart, schema: CubeSchema, axes: Axes, refs_for: set[str]) -> int:
    """Write a slice's references of the variables ``refs_for``; returns how many."""
    with gc_paused():  # an object or more per reference, none of them in a cycle
        writes = _ref_writes(part, schema, axes, refs_for)
    return _set_refs(store, writes)
