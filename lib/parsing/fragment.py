"""Fragments: what parsing one object yields, small enough to send between processes.

A fragment holds, for every variable of one file, its Zarr v3 metadata (as the JSON document a
``zarr.json`` would hold) and either its chunk references (byte offsets and lengths in the file, one
per chunk of the file's own chunk grid) or, for native variables, its raw stored values.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ArrayFragment", "Fragment", "PackedSlice", "json_safe_attributes"]

# CF attributes that change how stored values decode: they must agree across files of a variable.
ENCODING_ATTRIBUTES = ("scale_factor", "add_offset", "units", "calendar", "_FillValue", "missing_value")


@dataclass
class ArrayFragment:
    """One variable of one file.

    ``metadata`` is the variable's ``zarr.json`` document for the file alone (shape, data_type,
    chunk_grid, fill_value, codecs, attributes, dimension_names). Virtual variables carry ``offsets``
    and ``lengths`` (uint64, shaped like the chunk grid; a length of 0 is a chunk the file never
    wrote). Native variables carry ``values``: the raw stored values, not CF-decoded.
    """

    path: str
    metadata: dict[str, Any]
    offsets: np.ndarray | None = None
    lengths: np.ndarray | None = None
    values: np.ndarray | None = None
    storage: str = "chunked"

    @property
    def native(self) -> bool:
        return self.values is not None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def group(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(self.metadata.get("dimension_names") or ())

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.metadata["shape"])

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.metadata["chunk_grid"]["configuration"]["chunk_shape"])

    @property
    def attributes(self) -> dict[str, Any]:
        return self.metadata.get("attributes") or {}

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(math.ceil(s / c) if c else 0 for s, c in zip(self.shape, self.chunks, strict=True))


@dataclass
class Fragment:
    """Everything the cube needs from one object."""

    url: str
    format: str
    parser: str
    attributes: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    arrays: dict[str, ArrayFragment] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)  # variables whose times xarray cannot decode

    @property
    def ref_count(self) -> int:
        return sum(int(np.count_nonzero(a.lengths)) for a in self.arrays.values() if a.lengths is not None)

    def references_only(self) -> Fragment:
        """What writing the file into the cube needs once it is validated: refs and native values,
        without the metadata (which the cube's schema holds once for all files)."""
        arrays = {
            path: ArrayFragment(
                path=path,
                metadata={},
                offsets=a.offsets,
                lengths=a.lengths,
                values=a.values,
                storage=a.storage,
            )
            for path, a in self.arrays.items()
        }
        return Fragment(url=self.url, format=self.format, parser=self.parser, arrays=arrays)


@dataclass
class PackedSlice:
    """Several files' write-ready fragments (:meth:`Fragment.references_only`) packed by variable.

    A variable that every file holds alike -- references on the same chunk grid, or values of the
    same shape and dtype -- is one :class:`ArrayFragment` whose arrays have a leading axis of files
    (``stacked``); whatever is not alike stays with its own file (``loose``). A slice of thousands of
    files is then a few arrays rather than thousands of objects, which is what makes reading a
    spooled batch back, and writing its references, cheap per file.
    """

    urls: list[str]
    formats: list[str]
    parsers: list[str]
    stacked: dict[str, ArrayFragment]
    loose: list[dict[str, ArrayFragment]]

    @classmethod
    def pack(cls, fragments: list[Fragment]) -> PackedSlice:
        stacked = {}
        for path, first in (fragments[0].arrays if fragments else {}).items():
            alike = [a for f in fragments if (a := f.arrays.get(path)) is not None and _alike(first, a)]
            if len(alike) == len(fragments):
                stacked[path] = ArrayFragment(
                    path,
                    {},
                    offsets=_stack(alike, "offsets"),
                    lengths=_stack(alike, "lengths"),
                    values=_stack(alike, "values"),
                    storage=first.storage,
                )
        return cls(
            urls=[f.url for f in fragments],
            formats=[f.format for f in fragments],
            parsers=[f.parser for f in fragments],
            stacked=stacked,
            loose=[{p: a for p, a in f.arrays.items() if p not in stacked} for f in fragments],
        )

    def __len__(self) -> int:
        return len(self.urls)

    def __iter__(self) -> Iterator[Fragment]:
        return (self.fragment(i) for i in range(len(self.urls)))

    def fragment(self, i: int) -> Fragment:
        """The ``i``-th file's fragment (its arrays views into the packed ones)."""
        arrays = {
            path: ArrayFragment(
                path,
                {},
                offsets=None if a.offsets is None else a.offsets[i],
                lengths=None if a.lengths is None else a.lengths[i],
                values=None if a.values is None else a.values[i],
                storage=a.storage,
            )
            for path, a in self.stacked.items()
        }
        arrays.update(self.loose[i])
        return Fragment(url=self.urls[i], format=self.formats[i], parser=self.parsers[i], arrays=arrays)

    def only(self, paths: set[str]) -> PackedSlice:
        """The same files with only the arrays of ``paths``."""
        return PackedSlice(
            self.urls,
            self.formats,
            self.parsers,
            {p: a for p, a in self.stacked.items() if p in paths},
            [{p: a for p, a in arrays.items() if p in paths} for arrays in self.loose],
        )

    def array(self, path: str, i: int, what: str) -> np.ndarray | None:
        """One file's ``offsets``, ``lengths`` or ``values`` of a variable, packed or not."""
        packed = self.stacked.get(path)
        if packed is not None:
            whole = getattr(packed, what)
            return None if whole is None else whole[i]
        return getattr(self.loose[i][path], what)


def _alike(a: ArrayFragment, b: ArrayFragment) -> bool:
    if a.storage != b.storage:
        return False
    for what in ("offsets", "lengths", "values"):
        x, y = getattr(a, what), getattr(b, what)
        if x is None or y is None:
            if x is not y:
                return False
        elif np.shape(x) != np.shape(y) or np.asarray(x).dtype != np.asarray(y).dtype:
            return False
    return True


def _stack(arrays: list[ArrayFragment], what: str) -> np.ndarray | None:
    """One of the arrays (``offsets``, ``lengths`` or ``values``) of alike fragments, with a leading axis of files."""
    parts = [getattr(a, what) for a in arrays]
    return None if parts[0] is None else np.stack(parts)


def _safe_value(value: Any, where: str, notes: list[str]) -> Any:
    """A JSON-safe form of one attribute value; values JSON cannot hold get a documented spelling.

    NaN and ±infinity become the strings "NaN", "Infinity" and "-Infinity" (as Zarr v3 spells such
    fill values), complex numbers a [real, imag] pair, bytes that are not UTF-8 a base64 string.
    """
    if isinstance(value, np.ndarray):
        return (
            [_safe_value(v, where, notes) for v in value.tolist()]
            if value.ndim
            else _safe_value(value.item(), where, notes)
        )
    if isinstance(value, np.generic):
        return _safe_value(value.item(), where, notes)
    if isinstance(value, (list, tuple)):
        return [_safe_value(v, where, notes) for v in value]
    if isinstance(value, dict):
        return {str(k): _safe_value(v, where, notes) for k, v in value.items()}
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        spelled = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        notes.append(f'attribute {where} holds {value!r}, which JSON cannot: stored as the string "{spelled}"')
        return spelled
    if isinstance(value, complex):
        notes.append(f"attribute {where} holds the complex number {value!r}: stored as [real, imag]")
        return [_safe_value(value.real, where, notes), _safe_value(value.imag, where, notes)]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            notes.append(f"attribute {where} is not UTF-8: stored as base64")
            return base64.b64encode(value).decode("ascii")
    notes.append(f"attribute {where} of type {type(value).__name__} stored as its text")
    return str(value)


def json_safe_attributes(attributes: dict[str, Any], owner: str, notes: list[str]) -> dict[str, Any]:
    """Attributes Zarr's JSON metadata can hold, with every re-spelled value noted."""
    out = {}
    for key, value in attributes.items():
        name = key if isinstance(key, str) else str(key)
        out[name] = _safe_value(value, f"'{name}' of '{owner}'", notes)
    # round-trip through JSON so the fragment holds exactly what a zarr.json will hold
    return json.loads(json.dumps(out, allow_nan=False))


_PHONY = "phony_dim_"


def name_phony_dims(fragment: Fragment) -> None:
    """Name the dims of HDF5 datasets without dimension scales the way netCDF-C and h5netcdf do.

    Parsers call every unlabeled axis ``phony_dim_{axis}``, which gives one name two lengths as soon
    as two datasets differ in shape. Instead, within each group, each distinct length gets its own
    ``phony_dim_N`` (as many per length as the most any one dataset needs), numbered across the file
    in order of appearance, as ``xr.open_dataset(..., engine="h5netcdf", phony_dims="sort")`` names them.
    """
    from collections import Counter

    groups: dict[str, list[ArrayFragment]] = {}
    for item in fragment.arrays.values():
        if any(d.startswith(_PHONY) for d in item.dims):
            groups.setdefault(item.group, []).append(item)
    counter = 0
    for _group, items in groups.items():
        needed: Counter[int] = Counter()
        for item in items:
            needed |= Counter(s for d, s in zip(item.dims, item.shape, strict=True) if d.startswith(_PHONY))
        names: dict[int, list[str]] = {}
        for size, count in needed.items():
            names[size] = [f"{_PHONY}{counter + i}" for i in range(count)]
            counter += count
        for item in items:
            used: Counter[int] = Counter()
            dims = []
            for d, s in zip(item.dims, item.shape, strict=True):
                if d.startswith(_PHONY):
                    dims.append(names[s][used[s]])
                    used[s] += 1
                else:
                    dims.append(d)
            item.metadata["dimension_names"] = dims
