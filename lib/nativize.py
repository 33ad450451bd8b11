"""Nativize coordinates: rewrite small referenced coordinate variables as native Icechunk chunks.

A cube whose coordinates are references (``variables.native: none``, or auxiliary coordinates such
as 2-D ``lat(y, x)``) must read the source files just to open. Rewriting those variables as native
chunks makes opening need no request to the sources at all. The values are read through the cube,
written back natively, and the schema records the variables, so later ingests load them natively
from each new file too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lib.assembly import _growing, _native_chunks
from lib.errors import SpecError
from lib.hierarchy import array_at, open_root
from lib.ledger import read_schema, write_schema
from lib.parsing.policy import NATIVE_LIMIT_BYTES
from lib.validation import NATIVE, SHARED, VIRTUAL, CubeSchema, cube_dims, native_digest

if TYPE_CHECKING:
    import icechunk
    from zarr.abc.store import Store

__all__ = ["coordinate_candidates", "nativize_arrays"]


def _coordinate_names(schema: CubeSchema) -> set[str]:
    names: set[str] = set()
    for var in schema.variables.values():
        names.update(str(var.attributes.get("coordinates", "")).split())
    return names


def coordinate_candidates(store: Store, schema: CubeSchema, wanted: list[str] | None = None) -> list[str]:
    """Referenced variables worth storing natively: dimension coordinates and the variables other
    variables name in their ``coordinates`` attribute, up to a size limit (or exactly ``wanted``).

    Raises
    ------
    SpecError
        ``wanted`` names a variable the cube does not have.
    """

    unknown = sorted(set(wanted or ()) - set(schema.variables))
    if unknown:
        raise SpecError(
            f"variable {unknown[0]!r} is not in the cube; its variables are: {', '.join(sorted(schema.variables))}",
            key="variable",
        )
    root = open_root(store)
    aux = _coordinate_names(schema)
    out = []
    for path, var in schema.variables.items():
        if var.kind != VIRTUAL:
            continue
        if wanted is not None:
            if path in wanted:
                out.append(path)
            continue
        array = array_at(root, path)
        nbytes = math.prod(array.shape) * array.dtype.itemsize
        if (var.role == SHARED or var.name in aux or path in aux) and nbytes <= NATIVE_LIMIT_BYTES:
            out.append(path)
    return sorted(out)


def nativize_arrays(session: icechunk.Session, paths: list[str]) -> list[str]:
    """Rewrite each referenced array at ``paths`` as native chunks in ``session``; returns the paths done.

    The array keeps its shape, dtype, fill value, attributes and dims; only where its chunks live
    changes. The cube's schema is updated in the same session.
    """

    store = session.store
    schema = read_schema(store)
    assert schema is not None
    root = open_root(store, "r+")
    done = []
    for path in paths:
        var = schema.variables[path]
        old = array_at(root, path)
        values = np.asarray(old[...])
        shape, fill, attrs = tuple(old.shape), old.fill_value, dict(old.attrs)
        dims = cube_dims(var, schema)
        del root[path]
        new = root.create_array(
            path,
            shape=shape,
            dtype=values.dtype.newbyteorder("="),
            fill_value=fill,
            chunks=_native_chunks(shape, _growing(var, schema)),
            attributes=attrs,
            dimension_names=dims,
        )
        new[...] = values
        var.kind = NATIVE
        if path in schema.shared:  # later files are compared by their values now, not their refs
            schema.shared[path] = native_digest(values, var.attributes)
        schema.nativized = sorted({*schema.nativized, path})
        done.append(path)
    write_schema(store, schema)
    return done
