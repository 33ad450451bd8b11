"""Native copies: chosen variables rewritten into native chunks of the user's choosing.

A virtual cube keeps the chunks of its source files: a time series at one point reads one chunk from
every file along time. A native copy (spec ``native_copies``) holds the same values in chunks chosen
for another way of reading (say a year of days at a 16 x 16 tile), as the group ``/{name}`` of the
same repository, beside the virtual arrays: one snapshot always shows both, consistent, and readers
open either with ``xr.open_zarr(store, group=name)``.

The copy is written in *units*: blocks of whole output chunks, widened along a dim to a whole number
of source chunks where that is cheap, so a unit reads each source chunk it needs once. Units are
written in parallel over the run's executor, each call in an Icechunk fork that is merged back; a
worker holds one unit at a time, so its memory is bounded by the unit, not by the variable.

The copy's record (the group's ``icefloe_copy`` attribute) says what the copy is current to: the
ledger's length and the moves log's length when it was last written, and, while it is being built,
which units are still to write. Every later update of the cube rewrites only the units its new
ledger rows and moves touch, in the same staging cycle, so a copy is never published out of step
with its virtual data. This module says what a copy is made of and what is stale; :mod:`lib.rechunk`
writes it.
"""

from __future__ import annotations

import base64
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lib.errors import SpecError
from lib.hierarchy import array_at, open_root
from lib.ledger import META_GROUP, iter_rows, read_moves
from lib.validation import CubeSchema

if TYPE_CHECKING:
    import icechunk
    import zarr
    from zarr.abc.store import Store

    from lib.layout import Axes
    from lib.ledger import LedgerRow
    from lib.ledger_index import LedgerIndex
    from lib.spec import NativeCopy, Spec

__all__ = [
    "COPY_ATTR",
    "CopyArray",
    "CopyRecord",
    "copy_arrays",
    "copy_status",
    "dirty_units",
    "ensure_copy",
    "read_record",
    "size_text",
    "unit_tasks",
]

COPY_ATTR = "icefloe_copy"
UNIT_WIDEN = 4  # a unit is widened to a whole number of source chunks only if that grows it at most this much
TASK_BYTES = 256 * 2**20  # units per executor call: about this many bytes of output
STALE_SHOWN = 20  # regions still to write that status lists


@dataclass(frozen=True)
class CopyArray:
    """One variable of one copy: where it lives, its chunks, and the units it is written in."""

    copy: str
    variable: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    unit: tuple[int, ...]
    itemsize: int

    @property
    def path(self) -> str:
        return f"{self.copy}/{self.variable}"

    @property
    def grid(self) -> tuple[int, ...]:
        """Units per dim."""
        return tuple(math.ceil(s / u) for s, u in zip(self.shape, self.unit, strict=True))

    def region(self, index: Sequence[int]) -> tuple[slice, ...]:
        """The cube region of the unit at ``index`` (clipped to the shape)."""
        return tuple(slice(i * u, min((i + 1) * u, s)) for i, u, s in zip(index, self.unit, self.shape, strict=True))

    def unit_bytes(self) -> int:
        return math.prod(self.unit) * self.itemsize

    def units_in(self, box: Sequence[tuple[int, int]]) -> Iterator[tuple[tuple[int, ...], Box]]:
        """The units that hold any of the half-open index ``box`` (one (start, stop) per dim), each
        with the part of ``box`` inside it."""
        clipped, spans = [], []
        for (a, b), u, s in zip(box, self.unit, self.shape, strict=True):
            a, b = max(0, a), min(b, s)
            if a >= b:
                return
            clipped.append((a, b))
            spans.append(range(a // u, math.ceil(b / u)))
        for index in itertools.product(*spans):
            yield index, self.part(index, clipped)

    def part(self, index: Sequence[int], box: Sequence[tuple[int, int]] | None = None) -> Box:
        """The part of ``box`` (default: everything) inside the unit at ``index``."""
        region = self.region(index)
        if box is None:
            return tuple((r.start, r.stop) for r in region)
        return tuple((max(r.start, a), min(r.stop, b)) for r, (a, b) in zip(region, box, strict=True))


Box = tuple[tuple[int, int], ...]  # a half-open (start, stop) per dim
Parts = dict[str, dict[tuple[int, ...], Box]]  # per variable: the units to write, each with the part that changed


def _merge(a: Box, b: Box) -> Box:
    """The smallest box holding both."""
    return tuple((min(x0, y0), max(x1, y1)) for (x0, x1), (y0, y1) in zip(a, b, strict=True))


def _unit_edge(source: int, target: int) -> int:
    """Along one dim: whole output chunks, widened to whole source chunks when that is cheap."""
    if target % source == 0:
        return target
    wide = math.lcm(source, target)
    return wide if wide <= UNIT_WIDEN * max(source, target) else target


def copy_arrays(copy: NativeCopy, store: Store, schema: CubeSchema) -> list[CopyArray]:
    """What ``copy`` is made of, against the cube behind ``store``.

    Raises
    ------
    SpecError
        The copy names a variable the cube does not have, a chunk dim none of its variables has,
        or takes a name the cube already uses.
    """
    from lib.validation import cube_dims

    root = open_root(store)
    taken = {*schema.variables, *schema.pattern, *schema.groups, META_GROUP}
    if copy.name in taken:
        raise SpecError(
            f"native copy {copy.name!r} has the name of a variable or group of the cube: choose another name",
            key="native_copies",
        )
    out = []
    for name in copy.variables:
        var = schema.variables.get(name)
        if var is None:
            raise SpecError(
                f"native copy {copy.name!r} lists {name!r}, which is not a variable of the cube; "
                f"its variables are: {', '.join(sorted(schema.variables))}",
                key="native_copies",
            )
        source = array_at(root, var.path)
        dims = cube_dims(var, schema)
        source_chunks = _regular_chunks(source)
        chunks = tuple(copy.chunks.get(d, c) for d, c in zip(dims, source_chunks, strict=True))
        unit = tuple(_unit_edge(s, t) for s, t in zip(source_chunks, chunks, strict=True))
        out.append(CopyArray(copy.name, name, dims, tuple(source.shape), chunks, unit, source.dtype.itemsize))
    unknown = sorted(set(copy.chunks) - {d for a in out for d in a.dims})
    if unknown:
        raise SpecError(
            f"native copy {copy.name!r} sets chunks along {unknown}, which none of its variables has",
            key="native_copies",
        )
    return out


def _regular_chunks(array: zarr.Array) -> tuple[int, ...]:
    """The array's chunk shape; along a rectilinear dim, its first chunk's length."""
    grid: dict[str, Any] = dict(array.metadata.to_dict()["chunk_grid"])  # type: ignore[arg-type]
    if grid.get("name") != "rectilinear":
        return tuple(array.chunks)
    out = []
    for spec in grid["configuration"]["chunk_shapes"]:
        first = spec[0] if isinstance(spec, (list, tuple)) else spec
        out.append(int(first[0] if isinstance(first, (list, tuple)) else first))
    return tuple(out)


# -- the record ----------------------------------------------------------------------------------


@dataclass
class CopyRecord:
    """What a copy is current to. ``pending`` (while it is built) holds, per variable, a bitmap of
    the units still to write over the unit grid ``grids`` it was made for; empty once complete."""

    variables: list[str]
    chunks: dict[str, int]
    codecs: str
    ledger_at: int = 0
    moves_at: int = 0
    pending: dict[str, str] = field(default_factory=dict)
    grids: dict[str, list[int]] = field(default_factory=dict)
    snapshot: str = ""  # the virtual snapshot the copy was last brought up to date from

    @property
    def complete(self) -> bool:
        return not self.pending

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CopyRecord:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def pending_units(self, array: CopyArray) -> set[tuple[int, ...]]:
        text = self.pending.get(array.variable)
        if not text:
            return set()
        grid = tuple(self.grids[array.variable])
        bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), count=math.prod(grid))
        return {tuple(int(i) for i in np.unravel_index(k, grid)) for k in np.flatnonzero(bits)}

    def set_pending(self, array: CopyArray, units: Iterable[tuple[int, ...]]) -> None:
        grid = array.grid
        bits = np.zeros(math.prod(grid), dtype=np.uint8)
        for index in units:
            if all(i < g for i, g in zip(index, grid, strict=True)):
                bits[np.ravel_multi_index(index, grid)] = 1
        if bits.any():
            self.pending[array.variable] = base64.b64encode(np.packbits(bits).tobytes()).decode()
            self.grids[array.variable] = list(grid)
        else:
            self.pending.pop(array.variable, None)
            self.grids.pop(array.variable, None)

    def set_all_pending(self, arrays: Sequence[CopyArray]) -> None:
        for array in arrays:
            self.set_pending(array, itertools.product(*(range(g) for g in array.grid)))

    def coverage(self, arrays: Sequence[CopyArray]) -> float:
        """The share of the copy's units that are current."""
        total = sum(math.prod(a.grid) for a in arrays)
        return 1.0 - sum(len(self.pending_units(a)) for a in arrays) / max(total, 1)


def read_record(store: Store, name: str) -> CopyRecord | None:
    """The record of the copy ``name`` in the cube behind ``store``; None if there is no such copy."""
    from zarr.errors import GroupNotFoundError

    try:
        root = open_root(store)
    except GroupNotFoundError:  # a repository with nothing in it yet
        return None
    if name not in root:
        return None
    data = root[name].attrs.get(COPY_ATTR)
    return CopyRecord.from_json(dict(data)) if isinstance(data, dict) else None  # type: ignore[arg-type]


def _compressors(codecs: str) -> Any:
    from zarr.codecs import GzipCodec, ZstdCodec

    name, _, level = codecs.partition(":")
    if name == "none":
        return None
    if name == "zlib":
        return GzipCodec(level=int(level or 5))
    return ZstdCodec(level=int(level or 3))


def ensure_copy(
    session: icechunk.Session, copy: NativeCopy, schema: CubeSchema
) -> tuple[list[CopyArray], CopyRecord, bool]:
    """Create the copy's group and arrays in ``session`` (every unit pending), or bring an existing
    copy to the cube's current shape; the coordinates of its dims are (re)written in full. Returns
    the arrays, the record and whether the copy was made now.

    A copy whose variables, chunks or codecs differ from the spec's is made anew.
    """
    store = session.store
    arrays = copy_arrays(copy, store, schema)
    root = open_root(store, "r+")
    record = read_record(store, copy.name)
    wanted = CopyRecord(list(copy.variables), dict(copy.chunks), copy.codecs)
    if record is not None and (record.variables, record.chunks, record.codecs) != (
        wanted.variables,
        wanted.chunks,
        wanted.codecs,
    ):
        del root[copy.name]
        record = None
    group = root.require_group(copy.name)
    made = record is None
    if record is None:
        record = wanted
        for array in arrays:
            source = array_at(root, array.variable)
            group.create_array(
                array.variable,
                shape=array.shape,
                chunks=array.chunks,
                dtype=source.dtype,
                fill_value=source.fill_value,
                compressors=_compressors(copy.codecs),
                attributes=dict(source.attrs),
                dimension_names=array.dims,
                overwrite=True,
            )
        record.set_all_pending(arrays)
    else:
        for array in arrays:
            target = array_at(group, array.variable)
            if tuple(target.shape) != array.shape:
                pending = record.pending_units(array)
                target.resize(array.shape)
                record.set_pending(array, pending)
    _write_coordinates(root, group, {d for a in arrays for d in a.dims})
    return arrays, record, made


def _write_coordinates(root: zarr.Group, group: zarr.Group, dims: set[str]) -> None:
    """The copy's dimension coordinates: the cube's, as values, so the group opens on its own."""
    for dim in sorted(dims):
        if dim not in root:
            continue
        source = array_at(root, dim)
        values = np.asarray(source[...])
        if dim in group and tuple(array_at(group, dim).shape) != values.shape:
            del group[dim]
        elif dim in group and np.array_equal(np.asarray(array_at(group, dim)[...]), values):
            continue
        if dim not in group:
            group.create_array(
                dim,
                shape=values.shape,
                chunks=tuple(source.chunks),
                dtype=source.dtype,
                fill_value=source.fill_value,
                attributes=dict(source.attrs),
                dimension_names=(dim,),
            )
        array_at(group, dim)[...] = values


def write_record(session: icechunk.Session, name: str, record: CopyRecord) -> None:
    open_root(session.store, "r+")[name].update_attributes({COPY_ATTR: record.to_json()})  # type: ignore[union-attr]


# -- what to rewrite -------------------------------------------------------------------------------


def dirty_units(
    store: Store,
    schema: CubeSchema,
    axes: Axes,
    arrays: Sequence[CopyArray],
    record: CopyRecord,
    earlier: LedgerIndex | None = None,
) -> Parts:
    """The units of each array whose values may have changed since the copy was last written, each
    with the part of it that changed: where the ledger rows since then put (or took) an object,
    where ``earlier`` (the ledger as the run found it) had those objects before, everything from
    where a logged move opened room, and the whole of every unit still pending."""
    from lib.staging import placement_of

    moves = [_move(m) for m in read_moves(store)]
    boxes: list[dict[str, tuple[int, int]]] = []

    def add(row: LedgerRow) -> None:
        if not row.ranges or not row.fields:
            return
        try:
            placement = placement_of(row, axes, moves[row.moves :])
        except (KeyError, ValueError):  # a cell no longer in the axes: nothing of it to copy
            return
        box = {d: (i, i + 1) for d, i in zip(schema.pattern, placement.cell, strict=True)}
        box.update({d: (a, b) for d, a, b in placement.ranges})
        boxes.append(box)

    seen: set[str] = set()
    for row in iter_rows(store, record.ledger_at):
        add(row)
        seen.add(row.url)
    if earlier is not None:
        for url in seen:
            old = earlier.get(url)
            if old is not None:
                add(old)
    for move in moves[record.moves_at :]:
        boxes.append({move.dim: (move.at, 2**62)})
    out: Parts = {}
    for array in arrays:
        found = {index: array.part(index) for index in record.pending_units(array)}
        for box in boxes:
            if not set(box) & set(array.dims):
                continue  # a change along dims this variable does not have
            whole = [box.get(d, (0, s)) for d, s in zip(array.dims, array.shape, strict=True)]
            for index, part in array.units_in(whole):
                found[index] = _merge(found[index], part) if index in found else part
        out[array.variable] = found
    return out


def _move(data: dict[str, Any]) -> Any:
    from lib.layout import Move

    return Move(str(data["dim"]), int(data["at"]), int(data["by"]))


Task = list[tuple[str, tuple[int, ...], Box]]  # (variable, unit, part) to write, in one executor call


def unit_tasks(arrays: Sequence[CopyArray], units: Parts, task_bytes: int = TASK_BYTES) -> list[Task]:
    """Units grouped into executor calls of about ``task_bytes`` of output each, in array order."""
    tasks: list[Task] = []
    for array in arrays:
        per_call = max(1, task_bytes // max(array.unit_bytes(), 1))
        parts = units.get(array.variable, {})
        ordered = [(array.variable, index, parts[index]) for index in sorted(parts)]
        tasks += [ordered[i : i + per_call] for i in range(0, len(ordered), per_call)]
    return tasks


def size_text(nbytes: int) -> str:
    """Bytes for people: KiB below a MiB, MiB above."""
    return f"{nbytes / 2**10:.1f} KiB" if nbytes < 2**20 else f"{nbytes / 2**20:.1f} MiB"


def copy_status(store: Store, spec: Spec) -> list[dict[str, Any]]:
    """Each copy the spec lists, as the cube behind ``store`` holds it: whether it is made, the share
    of its units that are current, and the snapshot it was last brought up to date from."""
    from lib.ledger import read_schema

    schema = read_schema(store)
    out = []
    for copy in spec.native_copies:
        record = read_record(store, copy.name) if schema is not None else None
        entry: dict[str, Any] = {"name": copy.name, "variables": list(copy.variables), "made": record is not None}
        if record is not None and schema is not None:
            arrays = copy_arrays(copy, store, schema)
            stale = [(a, index) for a in arrays for index in sorted(record.pending_units(a))]
            entry.update(
                chunks={a.variable: list(a.chunks) for a in arrays},
                codecs=record.codecs,
                coverage=round(record.coverage(arrays), 4),
                current_to=record.snapshot,
                stale_units=len(stale),
                stale=[  # the first regions still to write, for a copy whose making was interrupted
                    {"variable": a.variable, **{d: list(r) for d, r in zip(a.dims, a.part(index), strict=True)}}
                    for a, index in stale[:STALE_SHOWN]
                ],
            )
        out.append(entry)
    return out
