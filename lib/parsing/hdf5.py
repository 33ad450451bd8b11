"""The fast HDF5 / netCDF-4 parser: h5py's chunk-index API straight into a fragment.

It yields exactly the fragment the reference path (VirtualiZarr's HDFParser) yields; a parity test
holds it to that over a corpus of layouts. The time it saves is VirtualiZarr's object building
(ManifestArray, ChunkManifest, a zarr ``ArrayV3Metadata`` per variable): the metadata document is
built once per distinct (dtype, codecs, fill value) and reused, and the chunk index is read with one
``chunk_iter`` pass per dataset. The per-variable rules (attributes, dimension names, codecs, chunk
shape, fill value) are VirtualiZarr's own functions, so both paths agree by construction.

What it cannot represent it leaves out and lists as skipped, with the reason: variable-length
sequences, object references, compound types, HDF5 virtual/external storage, filters without a
Zarr codec, and variables some of whose chunks HDF5 stored without one of their filters (a non-zero
filter mask). Compact datasets and variable-length strings are read and stored natively. The
Bitshuffle filter, which VirtualiZarr does not map, gets icefloe's codec (:mod:`lib.codecs`).
"""

from __future__ import annotations

import contextlib
import json
import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from lib.codecs import BITSHUFFLE_FILTER_ID, bitshuffle_config, load_filter_plugins
from lib.errors import SourceError
from lib.parsing.fragment import ArrayFragment, Fragment, json_safe_attributes
from lib.parsing.policy import ParseOptions
from lib.parsing.readers import open_source

if TYPE_CHECKING:
    from obspec_utils.registry import ObjectStoreRegistry

__all__ = ["MAX_CHUNKS_PER_ARRAY", "parse_hdf5", "unfiltered_chunks_reason", "unsupported_reason"]

# A file declaring more chunks than this for one variable is refused before anything is allocated.
MAX_CHUNKS_PER_ARRAY = 10_000_000
# ... and a variable that must be loaded (a concat coordinate, a compact dataset) larger than this.
MAX_NATIVE_BYTES = 256 * 1024 * 1024


def unsupported_reason(dataset: Any) -> str | None:
    """Why a dataset cannot be part of a cube, or None if it can. Shared by both HDF5 paths."""
    import h5py

    dtype = dataset.dtype
    if dtype.names is not None:
        return "a compound (struct) type: Zarr cannot reference its packed fields"
    if h5py.check_ref_dtype(dtype) is not None:
        return "HDF5 object or region references: they are addresses inside this file"
    if dtype.kind == "O" and h5py.check_vlen_dtype(dtype) not in (str, bytes):
        return f"variable-length sequences ({h5py.check_vlen_dtype(dtype)}): Zarr has no such type"
    if dtype.kind == "V":
        return f"an opaque type ({dtype}): Zarr cannot interpret its bytes"
    if dtype.subdtype is not None:
        return f"an array type ({dtype}) per element"
    plist = dataset.id.get_create_plist()
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        return "HDF5 virtual storage: its bytes live in other datasets or files"
    if plist.get_external_count():
        return "HDF5 external storage: its bytes live in other files"
    return None


@lru_cache(maxsize=512)
def _array_template(dtype_str: str, codecs: str, fill: str) -> tuple[Any, Any, Any]:
    """The zarr.json pieces (data_type, codecs, fill_value) for a dtype, codec list and fill value."""
    from virtualizarr.manifests.utils import create_v3_array_metadata
    from zarr.core.buffer import default_buffer_prototype

    dtype = np.dtype(dtype_str) if dtype_str != "StringDType" else np.dtypes.StringDType()
    fill_value = json.loads(fill)
    metadata = create_v3_array_metadata(
        shape=(1,),
        data_type=dtype,
        chunk_shape=(1,),
        fill_value=_fill_from_json(fill_value, dtype),
        codecs=json.loads(codecs),
        attributes={},
        dimension_names=("x",),
    )
    document = json.loads(metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes())
    return document["data_type"], document["codecs"], document["fill_value"]


def _fill_to_json(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps({"float": repr(value)})
    if isinstance(value, bytes):
        return json.dumps({"bytes": value.hex()})
    if isinstance(value, np.void):
        return json.dumps({"bytes": bytes(value).hex()})
    return json.dumps(value)


def _fill_from_json(value: Any, dtype: Any) -> Any:
    if isinstance(value, dict) and "float" in value:
        return float(value["float"])
    if isinstance(value, dict) and "bytes" in value:
        raw = bytes.fromhex(value["bytes"])
        return np.frombuffer(raw, dtype=dtype)[0] if getattr(dtype, "kind", "") == "V" else raw
    return value


# Attributes netCDF-4 and HDF5 dimension scales use for bookkeeping; VirtualiZarr leaves them out.
HIDDEN_ATTRIBUTES = frozenset(
    {
        "REFERENCE_LIST",
        "CLASS",
        "DIMENSION_LIST",
        "NAME",
        "_Netcdf4Dimid",
        "_Netcdf4Coordinates",
        "_nc3_strict",
        "_NCProperties",
    }
)


def _attributes(obj: Any) -> dict[str, Any]:
    """An object's attributes exactly as VirtualiZarr's ``_extract_attrs`` returns them.

    The bookkeeping attributes are skipped *before* they are read: reading DIMENSION_LIST and
    REFERENCE_LIST (arrays of object references) costs more than all the others together.
    """
    import h5py

    manager = obj.attrs
    out: dict[str, Any] = {}
    for name in manager:
        if name in HIDDEN_ATTRIBUTES:
            continue
        v = manager[name]
        if isinstance(v, bytes):
            with contextlib.suppress(UnicodeDecodeError):  # else kept as bytes: stored as base64, with a note
                v = v.decode("utf-8") or " "
        elif isinstance(v, (np.ndarray, np.number, np.bool_)):
            if v.dtype.kind == "S":
                v = np.strings.decode(np.asarray(v), "utf-8").tolist()
            elif v.size == 1:
                v = v.flatten()[0]
                if isinstance(v, (np.ndarray, np.number, np.bool_)):
                    v = v.tolist()
            else:
                v = v.tolist()
        elif isinstance(v, h5py.Empty):
            v = ""
        if isinstance(v, str) and v == "DIMENSION_SCALE":
            continue
        out[name] = v
    return out


def _dimension_names(dataset: Any, group: str) -> list[str]:
    """Dimension-scale names per axis exactly as VirtualiZarr's ``_dataset_dims`` gives them, read
    with the low-level dimension-scale API instead of opening every scale as a Dataset."""
    import h5py

    dsid = dataset.id
    is_scale = h5py.h5ds.is_scale(dsid)
    dims: list[str] = []
    for axis in range(len(dataset.shape)):
        count = h5py.h5ds.get_num_scales(dsid, axis) if not is_scale else 0
        if count == 1:
            found: list[str] = []

            def visit(scale: Any, found: list[str] = found) -> int:
                found.append(h5py.h5i.get_name(scale).decode())
                return 0

            h5py.h5ds.iterate(dsid, axis, visit)
            dims.append(found[0])
        elif is_scale:
            dims.append(str(dataset.name))
        elif count > 1:
            raise ValueError(f"{dataset.name} has {count} dimension scales attached to dimension #{axis}; require 1")
        else:
            dims.append(f"phony_dim_{axis}")
    return [d.removeprefix(group).removeprefix("/") for d in dims]


NETCDF_DIMENSION_MARKER = "This is a netCDF dimension but not a netCDF variable"


def _placeholders(members: dict[str, Any]) -> set[str]:
    """netCDF dimensions that are not variables: the datasets netCDF-4 writes for a dimension without a
    coordinate variable, which it marks with that sentence in their NAME attribute.

    (VirtualiZarr takes every dimension dataset without storage for one, and so drops coordinate
    variables that were defined but never written; such a variable is real, and reads as its fill value.)
    """
    import h5py

    out = set()
    for name, obj in members.items():
        if type(obj) is h5py.Dataset and "_Netcdf4Dimid" in obj.attrs:
            marker = obj.attrs.get("NAME")
            marker = marker.decode("utf-8", "replace") if isinstance(marker, bytes) else str(marker)
            if marker.startswith(NETCDF_DIMENSION_MARKER):
                out.add(name)
    return out


class UnfilteredChunks(ValueError):
    """Some of a variable's chunks are stored without one of its filters: the variable is left out."""


def _filter_names(dataset: Any, mask: int) -> list[str]:
    """The names of the filters a chunk's filter mask says were skipped (bit i: the i-th filter)."""
    plist = dataset.id.get_create_plist()
    names = []
    for i in range(plist.get_nfilters()):
        if mask >> i & 1:
            code, _, _, name = plist.get_filter(i)
            label = name.decode(errors="replace").split(";")[0].strip() if name else ""
            names.append(label or f"HDF5 filter {code}")
    return names


def _unfiltered(url: str, dataset: Any, masked: int, stored: int, mask: int, first: tuple[int, ...]) -> str:
    names = _filter_names(dataset, mask)
    which = " and ".join(names) + (" filter" if len(names) == 1 else " filters")
    return (
        f"HDF5 stored {masked} of {stored} chunks of variable '{dataset.name.lstrip('/')}' in '{url}' without "
        f"the {which} (filter mask), the first at chunk {first}; their bytes cannot share one codec pipeline"
    )


def unfiltered_chunks_reason(url: str, dataset: Any) -> str | None:
    """Why a chunked dataset cannot be referenced because HDF5 stored some of its chunks without one
    of its filters (a non-zero filter mask), or None. For the reference path; the fast parser finds
    the same while it reads the chunk index."""
    if dataset.chunks is None or not dataset.id.get_create_plist().get_nfilters():
        return None
    chunks = dataset.chunks
    seen = {"stored": 0, "masked": 0, "mask": 0}
    first_masked: list[tuple[int, ...]] = []

    def visit(info: Any) -> None:
        seen["stored"] += 1
        if info.filter_mask:
            seen["masked"] += 1
            seen["mask"] |= info.filter_mask
            if not first_masked:
                first_masked.append(tuple(a // b for a, b in zip(info.chunk_offset, chunks, strict=True)))

    dataset.id.chunk_iter(visit)
    if not seen["masked"]:
        return None
    return _unfiltered(url, dataset, seen["masked"], seen["stored"], seen["mask"], first_masked[0])


def _refs(url: str, dataset: Any, chunks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets and lengths of every stored chunk, shaped like the chunk grid (0 = never written).

    Raises
    ------
    UnfilteredChunks
        HDF5 stored some chunks without one of the dataset's filters (it skips an optional filter,
        such as Blosc, for a chunk the filter cannot shrink, and says so in the chunk's filter mask).
        Those bytes need a different codec pipeline from the other chunks', which Zarr cannot express.
    """
    shape = dataset.shape
    grid = tuple(math.ceil(s / c) for s, c in zip(shape, chunks, strict=True)) if shape else ()
    if math.prod(grid) > MAX_CHUNKS_PER_ARRAY:
        raise SourceError(
            f"variable '{dataset.name.lstrip('/')}' in '{url}' declares {math.prod(grid):,} chunks "
            f"(shape {shape}, chunks {chunks}); icefloe references at most {MAX_CHUNKS_PER_ARRAY:,} "
            f"per variable and file",
            url=url,
            variable=dataset.name.lstrip("/"),
        )
    offsets = np.zeros(grid, dtype=np.uint64)
    lengths = np.zeros(grid, dtype=np.uint64)
    dsid = dataset.id
    if dataset.chunks is None:
        offset = dsid.get_offset()
        if offset is not None:
            index = (0,) * len(grid)
            offsets[index] = offset
            lengths[index] = dsid.get_storage_size()
        return offsets, lengths
    trimmed = chunks != dataset.chunks
    trimmed_length = math.prod(chunks) * dataset.dtype.itemsize
    seen = {"stored": 0, "masked": 0, "mask": 0}
    first_masked: list[tuple[int, ...]] = []

    def visit(info: Any) -> None:
        key = tuple(a // b for a, b in zip(info.chunk_offset, chunks, strict=True))
        offsets[key] = info.byte_offset
        lengths[key] = trimmed_length if trimmed else info.size
        seen["stored"] += 1
        if info.filter_mask:
            seen["masked"] += 1
            seen["mask"] |= info.filter_mask
            if not first_masked:
                first_masked.append(key)

    try:
        dsid.chunk_iter(visit)
    except (RuntimeError, OSError, ValueError, IndexError) as e:
        name = dataset.name.lstrip("/")
        raise SourceError(
            f"the chunk index of variable '{name}' in '{url}' cannot be read ({type(e).__name__}: {e}): "
            f"the file is corrupt",
            url=url,
            variable=name,
        ) from e
    if seen["masked"]:
        raise UnfilteredChunks(_unfiltered(url, dataset, seen["masked"], seen["stored"], seen["mask"], first_masked[0]))
    return offsets, lengths


def _codec_configs(dataset: Any) -> list[dict[str, Any]]:
    """The Zarr v3 codec documents for a dataset's filters, in pipeline order: VirtualiZarr's mapping
    (``codecs_from_dataset``, one filter at a time), except Bitshuffle, which it cannot map."""
    from virtualizarr.codecs import zarr_codec_config_to_v3
    from virtualizarr.parsers.hdf.filters import _filter_to_codec

    configs: list[dict[str, Any]] = []
    for filter_id, properties in dataset._filters.items():
        if filter_id == str(BITSHUFFLE_FILTER_ID):
            configs.append(bitshuffle_config(tuple(properties)))
        else:
            configs.append(zarr_codec_config_to_v3(_filter_to_codec(filter_id, properties).get_config()))
    return configs


def _read_values(dataset: Any) -> np.ndarray:
    import h5py

    if dataset.dtype.kind == "O" and h5py.check_vlen_dtype(dataset.dtype) in (str, bytes):
        return np.asarray(dataset.asstr()[()], dtype=object)
    return np.asarray(dataset[()])


def _layout(dataset: Any) -> str:
    import h5py

    layout = dataset.id.get_create_plist().get_layout()
    if layout == h5py.h5d.COMPACT:
        return "compact"
    if dataset.dtype.kind == "O":
        return "inlined"  # variable-length strings: the chunks hold heap pointers, not the strings
    if layout == h5py.h5d.CONTIGUOUS:
        return "contiguous" if dataset.id.get_offset() is not None else "unallocated"
    return "chunked"


def _array_fragment(
    url: str, dataset: Any, group: str, path: str, options: ParseOptions, notes: list[str]
) -> ArrayFragment:
    import h5py
    from virtualizarr.parsers.hdf.hdf import _chunk_shape, _get_fill_value, _vlen_string_chunk_shape
    from virtualizarr.parsers.utils import encode_cf_fill_value

    storage = _layout(dataset)
    vlen_string = storage == "inlined"
    dtype = np.dtypes.StringDType() if vlen_string else dataset.dtype
    attrs = _attributes(dataset)
    mapping = h5py.check_enum_dtype(dataset.dtype)
    if mapping:  # an enum: its integer codes are the values; the names go where CF puts them
        ordered = sorted(mapping.items(), key=lambda item: item[1])
        attrs.setdefault("flag_values", [int(code) for _, code in ordered])
        attrs.setdefault("flag_meanings", " ".join(name for name, _ in ordered))
    if "_FillValue" in attrs and dtype.kind not in ("S", "U", "O", "T"):
        attrs["_FillValue"] = encode_cf_fill_value(attrs["_FillValue"], dtype)
    if vlen_string:
        chunks, codec_configs = _vlen_string_chunk_shape(dataset), []
    else:
        chunks = _chunk_shape(dataset)
        codec_configs = _codec_configs(dataset)
    fill_value = _get_fill_value(dataset)
    dtype_key = "StringDType" if vlen_string else dtype.str
    data_type, codecs, fill_json = _array_template(dtype_key, json.dumps(codec_configs), _fill_to_json(fill_value))
    metadata = {
        "shape": list(dataset.shape),
        "data_type": data_type,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill_json,
        "codecs": codecs,
        "attributes": json_safe_attributes(attrs, path, notes),
        "dimension_names": _dimension_names(dataset, group),
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }
    item = ArrayFragment(path=path, metadata=metadata, storage=storage)
    nbytes = int(np.prod(dataset.shape, dtype=np.int64)) * max(dataset.dtype.itemsize, 8)
    dims = tuple(metadata["dimension_names"])
    if options.is_native(path, dims, storage, nbytes):
        if nbytes > MAX_NATIVE_BYTES:
            raise SourceError(
                f"variable '{path}' in '{url}' would be loaded natively but holds {nbytes:,} bytes "
                f"(shape {dataset.shape}); icefloe loads at most {MAX_NATIVE_BYTES:,}",
                url=url,
                variable=path,
            )
        item.values = _read_values(dataset)
    elif storage != "unallocated" or dataset.chunks is not None:
        item.offsets, item.lengths = _refs(url, dataset, chunks)
    else:
        grid = tuple(math.ceil(s / c) for s, c in zip(dataset.shape, chunks, strict=True))
        item.offsets, item.lengths = np.zeros(grid, np.uint64), np.zeros(grid, np.uint64)
    return item


def parse_hdf5(url: str, registry: ObjectStoreRegistry, options: ParseOptions) -> Fragment:
    """Parse one HDF5 / netCDF-4 object into a fragment with h5py.

    Raises
    ------
    OSError
        h5py cannot open the object (truncated, corrupt); the caller quarantines it.
    """
    import h5py

    load_filter_plugins()
    fragment = Fragment(url=url, format="hdf5", parser="fast")
    notes = fragment.notes
    with open_source(url, registry) as handle, h5py.File(handle, "r") as f:

        def walk(group: Any, prefix: str) -> None:
            group_name = str(group.name)
            members: dict[str, Any] = {}
            for raw in group.id:  # names as stored: h5py's own iteration stops at one that is not UTF-8
                try:
                    key = raw.decode("utf-8")
                except UnicodeDecodeError:
                    name = f"{prefix}{raw.decode('utf-8', 'backslashreplace')}"
                    fragment.skipped.append((name, "its name is not UTF-8, and Zarr names must be"))
                    continue
                link = group.get(key, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    # its bytes live in another file: refs into this object cannot hold them
                    fragment.skipped.append((f"{prefix}{key}", f"an external link to {link.filename}:{link.path}"))
                    continue
                try:
                    members[key] = group[key]
                except (KeyError, OSError) as e:
                    fragment.skipped.append((f"{prefix}{key}", f"a link that cannot be followed ({e})"))
            placeholders = _placeholders(members)
            for key, item in members.items():
                path = f"{prefix}{key}"
                if key in placeholders or options.dropped(path):
                    continue
                if isinstance(item, h5py.Group):
                    fragment.groups[path] = json_safe_attributes(_attributes(item), path, notes)
                    walk(item, f"{path}/")
                    continue
                if not isinstance(item, h5py.Dataset):
                    fragment.skipped.append((path, f"an HDF5 {type(item).__name__}, not a dataset or group"))
                    continue
                reason = unsupported_reason(item)
                if reason is not None:
                    fragment.skipped.append((path, reason))
                    continue
                try:
                    fragment.arrays[path] = _array_fragment(url, item, group_name, path, options, notes)
                except SourceError:
                    raise
                except UnfilteredChunks as e:
                    fragment.skipped.append((path, str(e)))
                except (ValueError, KeyError, RuntimeError) as e:
                    # a filter with no Zarr codec (szip, scaleoffset, ...) or metadata Zarr cannot hold
                    fragment.skipped.append((path, f"cannot be represented in Zarr: {e}"))

        fragment.attributes = json_safe_attributes(_attributes(f), "/", notes)
        walk(f, "")
    return fragment
