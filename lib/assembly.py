"""Assembly: write the cube's arrays and place each file's references at its offset.

Arrays are created (or resized) at their full size first; then each batch's references are written
straight into them, a packed slice of files at a time (:mod:`lib.references`). Nothing is
concatenated in memory: a batch holds its own files' references, packed, and the Icechunk objects of
one slice at a time. Native variables (coordinates, scalars) are written as regular chunks.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lib.hierarchy import array_at, open_root
from lib.layout import Axes, Move, Placement
from lib.references import BatchItem, SlicePart, write_refs
from lib.validation import CELL, CONCAT, DATA, NATIVE, SHARED, VIRTUAL, CubeSchema, VariableSchema, cube_dims

if TYPE_CHECKING:
    import icechunk
    from icechunk import IcechunkStore

__all__ = ["clear_blocks", "place_batch", "prepare_arrays"]

# Native arrays grow along pattern and concat dims; generous chunks keep a growing axis in few chunks.
NATIVE_CHUNK_ELEMENTS = 1 << 22
NATIVE_GROWING_CHUNK = 1 << 16


def cube_shape(var: VariableSchema, schema: CubeSchema, axes: Axes) -> tuple[int, ...]:
    sizes = axes.sizes()
    file_shape = [sizes[d] if d in schema.concat else s for d, s in zip(var.dims, var.shape, strict=True)]
    if var.role in (DATA, CELL):
        return (*(len(axes.pattern[d]) for d in schema.pattern), *file_shape)
    return tuple(file_shape)


def _growing(var: VariableSchema, schema: CubeSchema) -> list[bool]:
    return [d in schema.pattern or d in schema.concat for d in cube_dims(var, schema)]


def _native_chunks(shape: Sequence[int], growing: Sequence[bool]) -> tuple[int, ...]:
    chunks = [max(s, NATIVE_GROWING_CHUNK if g else 1) if g else max(s, 1) for s, g in zip(shape, growing, strict=True)]
    while math.prod(chunks) > NATIVE_CHUNK_ELEMENTS:
        candidates = [i for i, g in enumerate(growing) if g and chunks[i] > 1] or [
            i for i, c in enumerate(chunks) if c > 1
        ]
        if not candidates:
            break
        i = max(candidates, key=lambda k: chunks[k])
        chunks[i] = max(1, chunks[i] // 2)
    return tuple(chunks)


def _zdtype(var: VariableSchema) -> Any:
    from zarr.core.dtype import get_data_type_from_json

    return get_data_type_from_json(var.metadata["data_type"], zarr_format=3)


def chunk_grid(var: VariableSchema, schema: CubeSchema, axes: Axes) -> dict[str, Any]:
    """A referenced variable's chunk grid in the cube: one chunk per pattern value, the files' own
    chunks along their dims, and along rectilinear dims the edges the files brought.

    A rectilinear grid lists every dim's edges, run-length encoded (``[[size, count], ...]``): Icechunk
    reads them in that form, not the bare-integer shorthand.
    """
    shape = cube_shape(var, schema, axes)
    pad = len(cube_dims(var, schema)) - len(var.dims)
    edges = [axes.edges.get(d, {}).get(var.path) if d in schema.rectilinear else None for d in var.dims]
    if not any(e is not None for e in edges):
        return {"name": "regular", "configuration": {"chunk_shape": [1] * pad + list(var.chunks)}}
    shapes: list[Any] = []
    for size, chunk, boundaries in zip(shape, [1] * pad + list(var.chunks), [None] * pad + edges, strict=True):
        if boundaries is None:
            shapes.append([[chunk, max(1, math.ceil(size / chunk))]])
        else:
            shapes.append(_runs([b - a for a, b in itertools.pairwise(boundaries)] or [chunk]))
    return {"name": "rectilinear", "configuration": {"kind": "inline", "chunk_shapes": shapes}}


def _runs(sizes: list[int]) -> list[list[int]]:
    """Run-length encoding of edge lengths: ``[[length, count], ...]``."""
    out: list[list[int]] = []
    for size in sizes:
        if out and out[-1][0] == size:
            out[-1][1] += 1
        else:
            out.append([size, 1])
    return out


def _virtual_document(var: VariableSchema, schema: CubeSchema, axes: Axes) -> bytes:
    """The zarr.json of a referenced variable: the files' own metadata at the cube's size."""
    doc = dict(var.metadata)
    doc["shape"] = list(cube_shape(var, schema, axes))
    doc["chunk_grid"] = chunk_grid(var, schema, axes)
    doc["dimension_names"] = list(cube_dims(var, schema))
    return json.dumps(doc, allow_nan=False).encode()


def _native_attributes(var: VariableSchema, schema: CubeSchema) -> dict[str, Any]:
    attrs = dict(var.attributes)
    if var.role == CONCAT:
        encoding = schema.concat_encoding.get(var.path, {})
        for key in ("units", "calendar", "scale_factor", "add_offset"):
            if key in encoding:
                attrs[key] = encoding[key]
    return attrs


def _create_native(group: Any, var: VariableSchema, schema: CubeSchema, axes: Axes) -> Any:
    zdtype = _zdtype(var)
    dtype = zdtype.to_native_dtype()
    if var.role == CONCAT:
        dtype = np.dtype(schema.concat_encoding[var.path]["dtype"]).newbyteorder("=")
    fill = zdtype.from_json_scalar(var.metadata["fill_value"], zarr_format=3)
    shape = cube_shape(var, schema, axes)
    return group.create_array(
        var.path,
        shape=shape,
        chunks=_native_chunks(shape, _growing(var, schema)),
        dtype=dtype,
        fill_value=fill if var.role != CONCAT else None,
        attributes=_native_attributes(var, schema),
        dimension_names=cube_dims(var, schema),
        overwrite=True,
    )


def _write_pattern_coords(group: Any, axes: Axes, schema: CubeSchema) -> None:
    for dim, values in axes.pattern.items():
        kind = schema.pattern[dim]
        data = np.asarray(values, dtype=np.int64 if kind == "int" else np.dtypes.StringDType())
        if dim in group and tuple(group[dim].shape) != data.shape:
            group[dim].resize(data.shape)
        if dim not in group:
            group.create_array(
                dim,
                shape=data.shape,
                chunks=(max(data.size, NATIVE_GROWING_CHUNK),),
                dtype=data.dtype,
                dimension_names=(dim,),
                fill_value=None,
                attributes={"description": f"the {{{dim}}} field of the source path pattern"},
            )
        group[dim][...] = data


def prepare_arrays(
    session: icechunk.Session,
    schema: CubeSchema,
    axes: Axes,
    *,
    fresh: bool,
    shared: BatchItem | None = None,
    moves: Sequence[Move] = (),
) -> None:
    """Create every array at its full size (``fresh``), or bring the existing ones to ``axes``: grow
    them, and apply ``moves`` to open room inside an axis (references move, no data is copied).

    A fresh cube replaces whatever the store held. Coordinates of the pattern and concat dims are
    (re)written in full; shared variables (values or refs) are written from ``shared``, a file
    that holds them as every file does.
    """
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    store = session.store
    prototype = default_buffer_prototype()
    if fresh:
        root = open_root(store, "w", attributes=schema.attributes)
        for path in sorted(schema.groups):
            root.require_group(path).update_attributes(schema.groups[path])
    root = open_root(store, "r+")
    for var in schema.variables.values():
        shape = cube_shape(var, schema, axes)
        if var.kind == VIRTUAL:  # the metadata is ours to write: shape and chunk grid (rectilinear edges too)
            sync(store.set(f"{var.path}/zarr.json", prototype.buffer.from_bytes(_virtual_document(var, schema, axes))))
        elif fresh:
            _create_native(root, var, schema, axes)
        else:
            array = array_at(root, var.path)
            if tuple(array.shape) != shape:
                array.resize(shape)
    if not fresh:
        for move in moves:
            apply_move(session, root, schema, move)
    _write_pattern_coords(root, axes, schema)
    for dim, values in axes.concat.items():
        coordinate_schema = schema.variables.get(dim)
        if coordinate_schema is not None and coordinate_schema.kind == NATIVE:
            coordinate = array_at(root, dim)
            coordinate[...] = values.astype(coordinate.dtype)
    if shared is None:
        return
    for var in schema.by_role(SHARED):
        if var.kind == NATIVE:
            array = array_at(root, var.path)
            array[...] = np.asarray(shared.fragment.arrays[var.path].values).astype(array.dtype)
    shared_refs = {v.path for v in schema.by_role(SHARED) if v.kind == VIRTUAL}
    write_refs(store, SlicePart.of(shared), schema, axes, shared_refs)


def apply_move(session: icechunk.Session, root: Any, schema: CubeSchema, move: Move) -> None:
    """Open ``move.by`` positions at ``move.at`` along ``move.dim`` in every array that has the dim.

    Referenced arrays move their chunk references with Icechunk's manifest-only moves (a shift when
    the room opens at the start, a reindex otherwise); native arrays (coordinates are rewritten
    whole elsewhere) shift their values. The arrays must already have their new size.
    """
    for var in schema.variables.values():
        dims = cube_dims(var, schema)
        if move.dim not in dims or var.role == CONCAT:
            continue
        axis = dims.index(move.dim)
        if var.kind == VIRTUAL:
            chunks = [1] * (len(dims) - len(var.dims)) + list(var.chunks)
            at, by = move.at // chunks[axis], move.by // chunks[axis]
            if at == 0:
                session.shift_array(f"/{var.path}", [by if i == axis else 0 for i in range(len(dims))])
            else:
                session.reindex_array(f"/{var.path}", *_inserting(axis, at, by))
            continue
        array = array_at(root, var.path)
        values = np.asarray(array[...])
        index: list[Any] = [slice(None)] * values.ndim
        tail, room, head = list(index), list(index), list(index)
        tail[axis] = slice(move.at + move.by, None)
        head[axis] = slice(move.at, values.shape[axis] - move.by)
        room[axis] = slice(move.at, move.at + move.by)
        values[tuple(tail)] = values[tuple(head)].copy()
        values[tuple(room)] = array.fill_value
        array[...] = values


def _inserting(axis: int, at: int, by: int) -> tuple[Any, Any]:
    """Forward and backward chunk-index maps that open ``by`` chunks at ``at`` along ``axis``."""

    def forward(index: Any) -> list[int] | None:
        index = list(index)
        if index[axis] < at:
            return None  # stays where it is
        index[axis] += by
        return index

    def backward(position: Any) -> list[int] | None:
        position = list(position)
        if position[axis] < at:
            return position
        if position[axis] < at + by:
            return None  # the room opened: empty
        position[axis] -= by
        return position

    return forward, backward


def _offset(var: VariableSchema, schema: CubeSchema, axes: Axes, placement: Placement) -> tuple[int, ...]:
    """The chunk index at which a file's block of ``var`` starts in the cube."""
    out = list(placement.cell) if var.role in (DATA, CELL) else []
    for dim, chunk in zip(var.dims, var.chunks, strict=True):
        out.append(axes.chunk_index(var.path, dim, chunk, placement.range_of(dim)[0]) if dim in schema.concat else 0)
    return tuple(out)


def _write_natives(store: IcechunkStore, schema: CubeSchema, parts: list[SlicePart]) -> None:
    """Native data and cell variables: read each array once, set every file's block, write it once."""

    root = open_root(store, "r+")
    for var in schema.variables.values():
        if var.kind != NATIVE or var.role not in (DATA, CELL):
            continue
        array = array_at(root, var.path)
        whole = np.array(array[...])
        for part in parts:
            for i, placement in zip(part.index, part.placements, strict=True):
                region: list[slice | int] = list(placement.cell)
                for dim in var.dims:
                    if dim in schema.concat:
                        start, stop = placement.range_of(dim)
                        region.append(slice(start, stop))
                    else:
                        region.append(slice(None))
                whole[tuple(region)] = part.fragments.array(var.path, i, "values")
        array[...] = whole


def place_batch(
    session: icechunk.Session, schema: CubeSchema, axes: Axes, parts: Iterable[SlicePart]
) -> tuple[int, list[str]]:
    """Write one batch's references and native values into a session, its files a slice (``parts``)
    at a time; returns the refs written and the URLs placed, in order.

    The Icechunk objects for no more than a slice of the batch are made at once. The references go in
    from this process, in one session: Icechunk's calls hold the GIL, so forks written from threads
    were slower (~20 %), and forks written from worker processes were barely faster and doubled the
    memory (``benchmarks/RESULTS.md``, P4).
    """
    refs_for = {v.path for v in schema.by_role(DATA, CELL) if v.kind == VIRTUAL}
    natives = {v.path for v in schema.variables.values() if v.kind == NATIVE and v.role in (DATA, CELL)}
    kept: list[SlicePart] = []  # only the native variables' values, written once at the end
    placed: list[str] = []
    refs = 0
    for part in parts:
        placed.extend(part.urls())
        if natives:
            kept.append(part.only(natives))
        refs += write_refs(session.store, part, schema, axes, refs_for)
    if natives:
        _write_natives(session.store, schema, kept)
    return refs, placed


def clear_blocks(
    store: IcechunkStore,
    schema: CubeSchema,
    axes: Axes,
    placements: list[Placement],
    *,
    cells_emptied: set[tuple[int, ...]],
) -> None:
    """Remove the references and native values of files taken out of the cube (reset to fill values).

    Cell variables are cleared only in ``cells_emptied``: the cells no other file holds.
    """
    from zarr.core.sync import sync

    root = open_root(store, "r+")
    keys: list[str] = []
    for p in placements:
        for var in schema.by_role(DATA, CELL):
            if var.role == CELL and p.cell not in cells_emptied:
                continue
            if var.kind == NATIVE:
                region: list[slice | int] = list(p.cell)
                for dim in var.dims:
                    region.append(slice(*p.range_of(dim)) if dim in schema.concat else slice(None))
                array = array_at(root, var.path)
                array[tuple(region)] = array.fill_value
                continue
            start = _offset(var, schema, axes, p)
            grid = []
            for dim, chunk, size in zip(var.dims, var.chunks, var.shape, strict=True):
                if dim in schema.concat:
                    a, b = p.range_of(dim)
                    grid.append(math.ceil((b - a) / p.chunk_of(var.path, dim, chunk)))
                else:
                    grid.append(math.ceil(size / chunk))
            pad = len(start) - len(grid)
            for index in np.ndindex(*grid):
                key = "/".join(str(s + i) for s, i in zip(start, (0,) * pad + index, strict=True))
                keys.append(f"{var.path}/c/{key}" if key else f"{var.path}/c")
    if keys:

        async def delete_all() -> None:
            for key in keys:
                await store.delete(key)

        sync(delete_all())
