"""Validation: does each file fit the cube's schema? Decided before anything is written.

Each parsed file is reduced to a small :class:`FileEntry` (digests and concat-coordinate values);
the full per-variable metadata is kept once per distinct schema. Variables play one of four roles:

``data``
    has a concat dim: gains the pattern dims, each file's refs (or values) placed at its offset.
``concat``
    the native coordinate of a concat dim: decoded per file and re-encoded into the cube's units.
``shared``
    a dimension coordinate without a concat dim (``lat``): equal in every file, stored once.
``cell``
    anything else without a concat dim (a scalar, a static field): equal across the files of one
    pattern cell, gains the pattern dims.

For virtual variables the dtype, chunk shape, codecs (with their levels), fill value and CF encoding
attributes must match the cube exactly; native ones are compared after CF decoding.
"""

from __future__ import annotations

import hashlib
import json
import operator
import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from lib.parsing.fragment import ENCODING_ATTRIBUTES, ArrayFragment, Fragment

if TYPE_CHECKING:
    from lib.discovery import SourceObject

__all__ = ["CubeSchema", "FileEntry", "compare_schemas", "cube_dims", "encode_concat_values", "summarize_fragment"]


class Role(StrEnum):
    """What a variable is to the cube (see the module's docstring)."""

    DATA = "data"
    CONCAT = "concat"
    SHARED = "shared"
    CELL = "cell"


class Kind(StrEnum):
    """How the cube holds a variable: references into the sources, or its values."""

    VIRTUAL = "virtual"
    NATIVE = "native"


DATA, CONCAT, SHARED, CELL = Role.DATA, Role.CONCAT, Role.SHARED, Role.CELL
VIRTUAL, NATIVE = Kind.VIRTUAL, Kind.NATIVE
SCHEMA_VERSION = 1


def _digest(*parts: Any) -> str:
    h = hashlib.sha1()
    for part in parts:
        if isinstance(part, np.ndarray):
            if part.dtype.kind in "iufcb" and part.dtype.byteorder not in ("=", "|"):
                part = part.astype(part.dtype.newbyteorder("="))  # equal values, whatever the byte order
            if part.dtype.kind in "OUT":
                h.update("\x1f".join(map(str, part.ravel().tolist())).encode("utf-8", "surrogatepass"))
            else:
                h.update(np.ascontiguousarray(part).tobytes())
            h.update(f"{part.dtype.kind}{part.dtype.itemsize}{part.shape}".encode())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x1e")
    return h.hexdigest()[:20]


def role_of(item: ArrayFragment, concat: tuple[str, ...]) -> Role:
    dims = item.dims
    if any(d in concat for d in dims):
        return CONCAT if item.native and dims == (item.name,) else DATA
    return SHARED if dims == (item.name,) else CELL


@dataclass
class VariableSchema:
    """What the cube knows about one variable: its role, kind and the file-level zarr.json."""

    path: str
    role: Role
    kind: Kind
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(self.metadata.get("dimension_names") or ())

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.metadata["chunk_grid"]["configuration"]["chunk_shape"])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.metadata["shape"])

    @property
    def attributes(self) -> dict[str, Any]:
        return self.metadata.get("attributes") or {}

    def signature(self, concat: tuple[str, ...], rectilinear: tuple[str, ...] = ()) -> dict[str, Any]:
        """The parts that must be identical for files to share the variable (the length along concat
        dims, and the chunk along rectilinear ones, may differ from file to file)."""
        shape = [None if d in concat else s for d, s in zip(self.dims, self.shape, strict=True)]
        sig: dict[str, Any] = {"role": self.role, "kind": self.kind, "dims": list(self.dims), "shape": shape}
        if self.kind == VIRTUAL:
            chunks = [None if d in rectilinear else c for d, c in zip(self.dims, self.chunks, strict=True)]
            sig.update(
                data_type=self.metadata["data_type"],
                chunks=chunks,
                codecs=self.metadata["codecs"],
                fill_value=self.metadata["fill_value"],
            )
            sig.update({k: self.attributes[k] for k in ENCODING_ATTRIBUTES if k in self.attributes})
        elif self.role != CONCAT:
            sig.update(data_type=self.metadata["data_type"])
            sig.update({k: self.attributes[k] for k in ENCODING_ATTRIBUTES if k in self.attributes})
        return sig


@dataclass
class CubeSchema:
    """The schema every file of the cube shares, persisted in the repository's ``_icefloe`` group."""

    pattern: dict[str, str]
    concat: tuple[str, ...]
    variables: dict[str, VariableSchema]
    attributes: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    concat_encoding: dict[str, dict[str, Any]] = field(default_factory=dict)
    shared: dict[str, str] = field(default_factory=dict)
    nativized: list[str] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)  # variables to open with decode_times=False
    rectilinear: tuple[str, ...] = ()  # concat dims whose chunks may differ from file to file

    @property
    def key(self) -> str:
        return _digest({p: v.signature(self.concat, self.rectilinear) for p, v in sorted(self.variables.items())})

    def by_role(self, *roles: Role) -> list[VariableSchema]:
        return [v for v in self.variables.values() if v.role in roles]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION,
            "pattern": self.pattern,
            "concat": list(self.concat),
            "variables": {
                p: {"role": v.role, "kind": v.kind, "metadata": v.metadata} for p, v in self.variables.items()
            },
            "attributes": self.attributes,
            "groups": self.groups,
            "concat_encoding": self.concat_encoding,
            "shared": self.shared,
            "nativized": self.nativized,
            "undecodable": self.undecodable,
            "rectilinear": list(self.rectilinear),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CubeSchema:
        return cls(
            pattern=dict(data["pattern"]),
            concat=tuple(data["concat"]),
            variables={
                p: VariableSchema(p, Role(v["role"]), Kind(v["kind"]), v["metadata"])
                for p, v in data["variables"].items()
            },
            attributes=data.get("attributes", {}),
            groups=data.get("groups", {}),
            concat_encoding=data.get("concat_encoding", {}),
            shared=data.get("shared", {}),
            nativized=list(data.get("nativized", [])),
            undecodable=list(data.get("undecodable", [])),
            rectilinear=tuple(data.get("rectilinear", ())),
        )


def cube_dims(var: VariableSchema, schema: CubeSchema) -> tuple[str, ...]:
    """A variable's dims in the cube: pattern dims first for data and cell variables."""
    if var.role in (DATA, CELL):
        return (*schema.pattern, *var.dims)
    return var.dims


@dataclass(slots=True)
class ConcatCoordinate:
    """A file's raw values of one concat coordinate, with the attributes that decode them."""

    raw: np.ndarray
    attrs: dict[str, Any]


@dataclass(slots=True)
class FileEntry:
    """All a run keeps in memory about one parsed file; the refs themselves wait in the spool."""

    url: str
    etag: str
    size: int
    checksum: Any
    fields: tuple[tuple[str, int | str], ...]
    format: str
    parser: str
    schema_key: str
    layout_key: str
    concat: dict[str, ConcatCoordinate]
    shared: dict[str, str]
    cell: dict[str, str]
    ref_count: int
    spool: int = 0  # the parse batch whose spool file holds its references
    skipped: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()
    encoded: dict[str, np.ndarray] = field(default_factory=dict)
    chunking: tuple[tuple[str, str, int], ...] = ()  # (dim, variable, chunk) along rectilinear dims

    @property
    def field_values(self) -> dict[str, int | str]:
        return dict(self.fields)

    def __reduce__(self) -> tuple[Any, ...]:  # pickled once per file, twice: positional is twice as quick
        return (FileEntry, _entry_fields(self))


_entry_fields = operator.attrgetter(*FileEntry.__dataclass_fields__)


def schema_of(
    fragment: Fragment, pattern: dict[str, str], concat: tuple[str, ...], rectilinear: tuple[str, ...] = ()
) -> CubeSchema:
    """The schema a fragment would give a cube of its own."""
    variables = {
        path: VariableSchema(path, role_of(item, concat), NATIVE if item.native else VIRTUAL, item.metadata)
        for path, item in fragment.arrays.items()
    }
    schema = CubeSchema(
        pattern=dict(pattern),
        concat=concat,
        variables=variables,
        attributes=fragment.attributes,
        groups=fragment.groups,
        undecodable=list(fragment.undecodable),
        rectilinear=tuple(rectilinear),
    )
    for path, v in variables.items():
        if v.role == SHARED:
            schema.shared[path] = _variable_digest(fragment.arrays[path])
        if v.role == CONCAT:
            schema.concat_encoding[path] = {}
    return schema


def decoding_attributes(attributes: dict[str, Any], dtype: np.dtype) -> dict[str, Any]:
    """The CF attributes xarray decodes with, with ``_FillValue`` back from its Zarr v3 spelling."""
    from xarray.backends.zarr import FillValueCoder

    attrs = {k: v for k, v in attributes.items() if k in ENCODING_ATTRIBUTES}
    if "_FillValue" in attrs and dtype.kind in "iufc" and isinstance(attrs["_FillValue"], str):
        attrs["_FillValue"] = FillValueCoder.decode(attrs["_FillValue"], dtype)
    return attrs


def native_digest(values: np.ndarray, attributes: dict[str, Any]) -> str:
    """The digest two native variables share exactly when their values and CF encodings are equal."""
    return _digest(np.asarray(values), {k: attributes.get(k) for k in ENCODING_ATTRIBUTES})


def _variable_digest(item: ArrayFragment) -> str:
    if item.values is not None:
        return native_digest(item.values, item.attributes)
    return _digest(item.lengths if item.lengths is not None else np.zeros(0, np.uint64))


def summarize_fragment(
    fragment: Fragment,
    obj: SourceObject,
    checksum: Any,
    pattern: dict[str, str],
    concat: tuple[str, ...],
    rectilinear: tuple[str, ...] = (),
) -> tuple[FileEntry, CubeSchema]:
    """Reduce a fragment to its entry, plus the schema it would have on its own."""
    schema = schema_of(fragment, pattern, concat, rectilinear)
    coords: dict[str, ConcatCoordinate] = {}
    for dim in concat:
        item = fragment.arrays.get(dim)
        if item is not None and item.values is not None and item.dims == (dim,):
            values = np.asarray(item.values).ravel()
            coords[dim] = ConcatCoordinate(values, decoding_attributes(item.attributes, values.dtype))
    layout = _digest({p: [a.shape, a.storage] for p, a in sorted(fragment.arrays.items())}, schema.key)
    entry = FileEntry(
        url=fragment.url,
        etag=obj.etag,
        size=obj.size,
        checksum=checksum,
        fields=obj.fields,
        format=fragment.format,
        parser=fragment.parser,
        schema_key=schema.key,
        layout_key=layout,
        concat=coords,
        shared={p: d for p, d in schema.shared.items()},
        cell={p: _variable_digest(fragment.arrays[p]) for p, v in schema.variables.items() if v.role == CELL},
        ref_count=fragment.ref_count,
        skipped=tuple(fragment.skipped),
        notes=tuple(fragment.notes),
        chunking=tuple(
            (dim, path, v.chunks[v.dims.index(dim)])
            for path, v in schema.variables.items()
            if v.role == DATA and v.kind == VIRTUAL
            for dim in rectilinear
            if dim in v.dims
        ),
    )
    return entry, schema


def _show(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return (
            "["
            + ", ".join(
                c.get("name", "?") + (f"({c['configuration']})" if c.get("configuration") else "") for c in value
            )
            + "]"
        )
    return json.dumps(value) if not isinstance(value, str) else repr(str(value))


def compare_schemas(file_schema: CubeSchema, cube: CubeSchema, url: str) -> str | None:
    """The first way a file's schema differs from the cube's, as a sentence, or None if it fits.

    The sentence names the file, the variable and both sides of the mismatch.
    """
    missing = sorted(set(cube.variables) - set(file_schema.variables))
    if missing:
        return f"'{url}' lacks variable '{missing[0]}' that the cube has"
    extra = sorted(set(file_schema.variables) - set(cube.variables))
    if extra:
        return (
            f"'{url}' has variable '{extra[0]}' that the cube does not have "
            f"(list it under variables.drop to leave it out)"
        )
    for path in sorted(cube.variables):
        mine, theirs = file_schema.variables[path], cube.variables[path]
        a, b = mine.signature(cube.concat, cube.rectilinear), theirs.signature(cube.concat, cube.rectilinear)
        if a == b:
            continue
        for key in (
            "role",
            "kind",
            "dims",
            "shape",
            "data_type",
            "chunks",
            "codecs",
            "fill_value",
            *ENCODING_ATTRIBUTES,
        ):
            if a.get(key) != b.get(key):
                what = {"kind": "storage", "data_type": "dtype", "role": "role"}.get(key, key)
                if key in ENCODING_ATTRIBUTES:
                    what = f"attribute {key}"
                if key == "kind":
                    mine_kind = "referenced" if a[key] == "virtual" else "stored natively"
                    theirs_kind = "referenced" if b[key] == "virtual" else "native"
                    return f"variable '{path}' in '{url}' is {mine_kind}; the cube has it {theirs_kind}"
                mine_v = _show(a[key]) if key in a else "none"
                theirs_v = _show(b[key]) if key in b else "none"
                return f"variable '{path}' in '{url}' has {what} {mine_v}; the cube has {theirs_v}"
    return None


def _decode(raw: np.ndarray, attrs: dict[str, Any], dim: str) -> Any:
    import xarray as xr
    from xarray import conventions

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return conventions.decode_cf_variable(dim, xr.Variable((dim,), raw, dict(attrs)))


def decode_axis(values: np.ndarray, encoding: dict[str, Any], dim: str) -> np.ndarray:
    """Encoded axis values as a reader decodes them (times as dates)."""
    attrs = {k: v for k, v in encoding.items() if k in ("units", "calendar", "scale_factor", "add_offset")}
    return np.asarray(_decode(np.asarray(values), attrs, dim).values)


def cube_encoding(coord: ConcatCoordinate, dim: str) -> dict[str, Any]:
    """The encoding the cube adopts for a concat coordinate: the first file's own.

    Times keep their units and calendar in the encoding (files in other units are re-encoded);
    other coordinates keep their units as ``plain_units``, which every file must share (icefloe does
    not convert between units of length, pressure and the like).
    """
    decoded = _decode(coord.raw, coord.attrs, dim)
    enc = {k: v for k, v in decoded.encoding.items() if k in ("units", "calendar", "scale_factor", "add_offset")}
    enc["dtype"] = np.dtype(decoded.encoding.get("dtype", coord.raw.dtype)).str
    if "units" not in enc and "units" in coord.attrs:
        enc["plain_units"] = coord.attrs["units"]
    return json.loads(json.dumps(enc, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def encode_concat_values(entries: list[FileEntry], dim: str, encoding: dict[str, Any]) -> dict[str, str]:
    """Re-encode every file's concat coordinate into the cube's encoding, in place (``entry.encoded``).

    Files whose values cannot be represented exactly in the cube's encoding are returned with a
    reason. Files sharing the same attributes are decoded together, so this costs one xarray call per
    distinct encoding, not one per file (a group that fails is tried again file by file, so one
    file's inexact value never refuses the others).
    """
    failures: dict[str, str] = {}
    groups: dict[str, list[FileEntry]] = {}
    for entry in entries:
        coord = entry.concat.get(dim)
        if coord is None:
            failures[entry.url] = f"'{entry.url}' has no coordinate variable for the concat dimension '{dim}'"
            continue
        key = json.dumps([coord.attrs, coord.raw.dtype.str], sort_keys=True, default=str)
        groups.setdefault(key, []).append(entry)
    for members in groups.values():
        failures.update(_encode_group(members, dim, encoding))
    return failures


def _encode_group(members: list[FileEntry], dim: str, encoding: dict[str, Any]) -> dict[str, str]:
    """Encode the files of one group (same attributes) together; their failures, with reasons."""
    import xarray as xr
    from xarray import conventions

    failures: dict[str, str] = {}
    coord0 = members[0].concat[dim]
    enc = {k: v for k, v in encoding.items() if k != "plain_units"}
    enc["dtype"] = np.dtype(enc["dtype"])
    plain = " since " not in str(encoding.get("units") or "") and "plain_units" in encoding
    if plain and coord0.attrs.get("units") != encoding["plain_units"]:
        for member in members:
            failures[member.url] = (
                f"coordinate '{dim}' in '{member.url}' has units {coord0.attrs.get('units')!r}; the cube's "
                f"'{dim}' is in {encoding.get('plain_units')!r} (icefloe does not convert units)"
            )
        return failures
    raw = np.concatenate([m.concat[dim].raw for m in members])
    sizes = [m.concat[dim].raw.size for m in members]
    decoded = _decode(raw, coord0.attrs, dim)
    missing = _missing(np.asarray(decoded.values))
    if missing.any():
        start = 0
        for member, n in zip(members, sizes, strict=True):
            if missing[start : start + n].any():
                failures[member.url] = (
                    f"coordinate '{dim}' in '{member.url}' has missing values (NaN/NaT, or "
                    f"its fill value): a file cannot be placed without its coordinates"
                )
            start += n
        rest = [m for m in members if m.url not in failures]
        return {**failures, **(_encode_group(rest, dim, encoding) if rest else {})}
    problem = None
    values: np.ndarray | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            encoded = conventions.encode_cf_variable(
                xr.Variable((dim,), decoded.values, {}, encoding=dict(enc)), name=dim
            )
            back = _decode(np.asarray(encoded.values), dict(encoded.attrs), dim)
        values = np.asarray(encoded.values)
        # xarray may respell the units ("... 00:00:00" dropped): the round trip decides exactness
        if values.dtype != enc["dtype"] or not _same(np.asarray(back.values), np.asarray(decoded.values)):
            problem = "cannot be represented exactly"
    except Exception as e:
        problem = f"cannot be represented exactly ({str(e).splitlines()[0][:160]})"
    if problem is not None and len(members) > 1:  # find the files at fault, one by one
        for member in members:
            failures.update(_encode_group([member], dim, encoding))
        return failures
    start = 0
    alike: dict[Any, dict[str, np.ndarray]] = {}  # files with the same values share one dict of them
    for member, n in zip(members, sizes, strict=True):
        if problem is not None or values is None:
            shown = ", ".join(f"{k} {coord0.attrs[k]!r}" for k in ("units", "calendar") if k in coord0.attrs)
            failures[member.url] = (
                f"coordinate '{dim}' in '{member.url}' ({shown or 'its encoding'}) {problem} in the cube's "
                f"encoding {_describe_encoding(encoding)}"
            )
        else:
            member.encoded = _with_encoded(member.encoded, dim, values[start : start + n], alike)
        start += n
    return failures


def _with_encoded(
    encoded: dict[str, np.ndarray], dim: str, values: np.ndarray, alike: dict[Any, dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """``encoded`` with ``values`` along ``dim``: a new dict, shared by every file whose encoded values
    are the same (an archive repeats its time steps across cells), so a run's memory per file stays
    small. The dicts are never changed in place."""
    key = (*((d, id(v)) for d, v in encoded.items() if d != dim), dim, values.dtype.str, values.tobytes())
    found = alike.get(key)
    if found is None:
        found = alike[key] = {**encoded, dim: values}
    return found


def _missing(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "fc":
        return np.isnan(values)
    if values.dtype.kind in "mM":
        return np.isnat(values)
    if values.dtype.kind == "O":
        return np.array([v is None for v in values.ravel()], dtype=bool)
    return np.zeros(values.shape, dtype=bool)


def _describe_encoding(encoding: dict[str, Any]) -> str:
    parts = [f"{k.removeprefix('plain_')} {v!r}" for k, v in encoding.items() if k != "dtype"]
    return f"({', '.join([*parts, f'dtype {np.dtype(encoding["dtype"]).name}'])})"


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.all(a == b))
