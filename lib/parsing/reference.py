"""The reference parsers: VirtualiZarr's HDF5, netCDF3 and FITS parsers, turned into fragments.

VirtualiZarr gives a ManifestStore per file. This module walks it into a :class:`Fragment`, loading
native variables through the same store, and guards against the layouts where VirtualiZarr 2.8 is
known to return silently wrong values: HDF5 compact datasets (read natively with h5py instead),
coordinate variables without storage (read natively, they hold fill values) and FITS tile-compressed
images (left out and listed as skipped).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from lib.codecs import load_filter_plugins
from lib.errors import SourceError
from lib.hierarchy import array_at, open_root
from lib.parsing.fragment import ArrayFragment, Fragment, json_safe_attributes
from lib.parsing.hdf5 import NETCDF_DIMENSION_MARKER
from lib.parsing.policy import ParseOptions
from lib.parsing.readers import open_source

if TYPE_CHECKING:
    from obspec_utils.registry import ObjectStoreRegistry

__all__ = ["parse_with_virtualizarr"]

INLINED = "__inlined__"


def _metadata_json(metadata: Any, owner: str, notes: list[str]) -> dict[str, Any]:
    """A ManifestArray's metadata as the JSON document its zarr.json would hold."""
    import dataclasses

    from zarr.core.buffer import default_buffer_prototype

    attributes = json_safe_attributes(dict(metadata.attributes), owner, notes)
    clean = dataclasses.replace(metadata, attributes=attributes)
    document = clean.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()
    return json.loads(document)


def _walk(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every (path, ManifestArray) below a ManifestGroup, depth first."""
    out = [(f"{prefix}{name}", array) for name, array in group.arrays.items()]
    for name, child in group.groups.items():
        out.extend(_walk(child, f"{prefix}{name}/"))
    return out


def _groups(group: Any, notes: list[str], prefix: str = "") -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, child in group.groups.items():
        path = f"{prefix}{name}"
        out[path] = json_safe_attributes(dict(child.metadata.attributes), path, notes)
        out.update(_groups(child, notes, f"{path}/"))
    return out


def _hdf5_layouts(url: str, registry: ObjectStoreRegistry) -> tuple[dict[str, tuple[str, str | None]], dict[str, str]]:
    """Each HDF5 dataset's layout ("compact", "contiguous", "chunked", "virtual", "external",
    "unallocated") and, for netCDF dimension placeholders, the marker text; and why the datasets
    some of whose chunks HDF5 stored without one of their filters cannot be referenced."""
    import h5py

    from lib.parsing.hdf5 import unfiltered_chunks_reason

    layouts: dict[str, tuple[str, str | None]] = {}
    unfiltered: dict[str, str] = {}
    names = {
        h5py.h5d.COMPACT: "compact",
        h5py.h5d.CONTIGUOUS: "contiguous",
        h5py.h5d.CHUNKED: "chunked",
        h5py.h5d.VIRTUAL: "virtual",
    }
    with open_source(url, registry) as handle, h5py.File(handle, "r") as f:

        def visit(name: str, obj: Any) -> None:
            if not isinstance(obj, h5py.Dataset):
                return
            plist = obj.id.get_create_plist()
            layout = names.get(plist.get_layout(), "unknown")
            if plist.get_external_count():
                layout = "external"
            elif layout == "contiguous" and obj.id.get_offset() is None:
                layout = "unallocated"
            marker = obj.attrs.get("NAME")
            marker = marker.decode(errors="replace") if isinstance(marker, bytes) else marker
            layouts[name] = (layout, marker if isinstance(marker, str) else None)
            if layout == "chunked" and (reason := unfiltered_chunks_reason(url, obj)):
                unfiltered[name] = reason

        f.visititems(visit)
    return layouts, unfiltered


def _read_hdf5_values(url: str, registry: ObjectStoreRegistry, paths: list[str]) -> dict[str, np.ndarray]:
    import h5py

    out = {}
    with open_source(url, registry) as handle, h5py.File(handle, "r") as f:
        for path in paths:
            ds = f[path]
            out[path] = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) and ds.dtype.kind == "O" else ds[()]
    return out


def _fits_unsupported(url: str, registry: ObjectStoreRegistry) -> dict[str, str]:
    """FITS HDUs VirtualiZarr would misread or refuse, by the name its parser gives them."""
    from astropy.io import fits

    out: dict[str, str] = {}
    with open_source(url, registry) as handle, fits.open(handle, memmap=False, lazy_load_hdus=False) as hdus:
        names: list[str] = []
        for index, hdu in enumerate(hdus):
            name = hdu.name or str(index)
            if name in names:
                name = f"{name}_{index}"
            names.append(name)
            if isinstance(hdu, fits.CompImageHDU) or hdu.header.get("ZIMAGE") is True:
                out[name] = "a tile-compressed FITS image: its bytes cannot be referenced as chunks"
            elif isinstance(hdu, fits.BinTableHDU):
                out[name] = "a FITS binary table: Zarr cannot record its big-endian struct layout"
    return out


def _plugin(fmt: str, module: str, name: str) -> Any:
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise SourceError(f"{fmt.upper()} files need the parser plugin {module} ({e})") from e


def _parser_for(fmt: str, skip: list[str]) -> Any:
    """VirtualiZarr's parser for a format, or the plugin parser that speaks its protocol."""
    from virtualizarr.parsers import FITSParser, HDFParser, NetCDF3Parser

    if fmt == "hdf5":
        return HDFParser(drop_variables=skip)
    if fmt == "netcdf3":
        return NetCDF3Parser(skip_variables=skip)
    if fmt == "fits":
        return FITSParser(skip_variables=skip)
    if fmt == "tiff":
        return _plugin(fmt, "virtual_tiff", "VirtualTIFF")(ifd_layout="flat")
    if fmt == "grib":
        return _plugin(fmt, "gribberish.virtualizarr", "GribberishParser")(
            drop_variables=skip or None, collapse_groups=True
        )
    raise SourceError(f"no parser for format {fmt!r}")


def parse_with_virtualizarr(url: str, fmt: str, registry: ObjectStoreRegistry, options: ParseOptions) -> Fragment:
    """Parse one object with VirtualiZarr into a fragment.

    Raises
    ------
    SourceError
        The object cannot be parsed or cannot be represented as references.
    """

    notes: list[str] = []
    skipped: list[tuple[str, str]] = []
    layouts: dict[str, tuple[str, str | None]] = {}
    unfiltered: dict[str, str] = {}
    skip = [name for name in options.drop if "/" not in name]
    if fmt == "hdf5":
        load_filter_plugins()
        layouts, unfiltered = _hdf5_layouts(url, registry)
        for path, (layout, _) in layouts.items():
            if layout in ("virtual", "external", "unknown"):
                skipped.append((path, f"HDF5 {layout} storage: its bytes live outside this file's chunks"))
                if "/" not in path:
                    skip.append(path)
    elif fmt == "fits":
        for name, reason in _fits_unsupported(url, registry).items():
            skipped.append((name, reason))
            skip.append(name)

    store = _parser_for(fmt, skip)(url, registry)
    root = store._group
    fragment = Fragment(url=url, format=fmt, parser="virtualizarr", skipped=skipped, notes=notes)
    fragment.attributes = json_safe_attributes(dict(root.metadata.attributes), "/", notes)
    fragment.groups = _groups(root, notes)
    zgroup = None
    hdf5_native: list[str] = []
    skipped_paths = {path for path, _ in skipped}

    for path, array in _walk(root):
        if options.dropped(path) or path in skipped_paths:
            continue
        metadata = _metadata_json(array.metadata, path, notes)
        manifest = array.manifest
        paths = np.asarray(manifest._paths)
        is_inlined = bool(manifest._inlined)
        foreign = {p for p in np.unique(paths).tolist() if p not in ("", url, INLINED)}
        if foreign:
            raise SourceError(
                f"variable '{path}' in '{url}' has chunks in other objects: {sorted(foreign)[:3]}",
                url=url,
                variable=path,
            )
        layout = layouts.get(path, ("chunked", None))[0]
        storage = "inlined" if is_inlined else layout
        nbytes = int(np.prod(metadata["shape"])) * 8
        dims = tuple(metadata.get("dimension_names") or ())
        item = ArrayFragment(path=path, metadata=metadata, storage=storage)
        if options.is_native(path, dims, storage, nbytes):
            if fmt == "hdf5":
                hdf5_native.append(path)
            else:
                zgroup = zgroup or open_root(store)
                item.values = np.asarray(array_at(zgroup, path)[...])
        elif path in unfiltered:  # loaded natively the values are right; referenced they cannot be decoded
            skipped.append((path, unfiltered[path]))
            skipped_paths.add(path)
            continue
        else:
            lengths = np.where(paths == url, manifest._lengths, 0).astype(np.uint64)
            offsets = np.where(paths == url, manifest._offsets, 0).astype(np.uint64)
            if lengths.shape != item.grid and not lengths.any():  # an empty manifest is shaped like the array
                lengths = offsets = np.zeros(item.grid, dtype=np.uint64)
            item.offsets, item.lengths = offsets.copy(), lengths.copy()
        fragment.arrays[path] = item

    if fmt == "hdf5":
        # datasets VirtualiZarr dropped although they are real variables (declared, never written)
        for path, (_, marker) in layouts.items():
            if path in fragment.arrays or path in skipped_paths or options.dropped(path):
                continue
            if marker and marker.startswith(NETCDF_DIMENSION_MARKER):
                continue
            skipped.append((path, "no reference parser output for this dataset"))
        values = _read_hdf5_values(url, registry, hdf5_native)
        for path, data in values.items():
            fragment.arrays[path].values = np.asarray(data)
    return fragment
