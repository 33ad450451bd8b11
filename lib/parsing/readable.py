"""What a parser hands over must open through the cube's reader path before it is committed.

A reader opens the cube with Zarr (the array's metadata and codecs) and then xarray (CF decoding of
fill values, scaling and times). A parser can produce things that path cannot open: a codec that only
exists while the parser's own module is loaded (VirtualiZarr's FITS ASCII tables), a fill value
attribute xarray cannot decode (a one-byte string fill written by h5netcdf), time units no calendar
can decode. :func:`refuse_unreadable` tries each variable the way a reader will, per distinct
metadata document (so a run pays once per kind of variable, not once per file), and:

* leaves out a variable the reader path cannot open, listing it under ``skipped`` with the reason;
* quarantines the file (raises :class:`~lib.errors.SourceError`) when a concat coordinate cannot be
  decoded: the file cannot be placed on its axis without its decoded values;
* lets a variable whose time units cannot be decoded land as stored, with a note telling readers to
  open with ``decode_times=False`` (as they must for the source file itself);
* quarantines a file from which every data variable had to be left out, with all the reasons.
"""

from __future__ import annotations

import importlib.metadata
import json
import warnings
from functools import lru_cache
from typing import Any

import numpy as np

from lib.errors import SourceError, first_line
from lib.parsing.fragment import ArrayFragment, Fragment

__all__ = ["reader_codec_problem", "refuse_unreadable"]


@lru_cache(maxsize=1)
def _entry_point_codecs() -> frozenset[str]:
    return frozenset(ep.name for ep in importlib.metadata.entry_points(group="zarr.codecs"))


@lru_cache(maxsize=256)
def reader_codec_problem(name: str) -> str | None:
    """Why a reader of the cube could not decode a codec, or None if it can.

    A reader has Zarr's own codecs and those packages register through the ``zarr.codecs`` entry
    point; a codec a parser registered at run time exists only inside that parser's process.
    """
    from zarr.registry import get_codec_class

    try:
        cls = get_codec_class(name)
    except KeyError:
        return f"its codec {name!r} is not available to Zarr"
    if name in _entry_point_codecs() or cls.__module__.split(".")[0] == "zarr":
        return None
    return (
        f"its codec {name!r} exists only while {cls.__module__} runs (it is not registered with Zarr "
        f"as a package entry point), so a reader of the cube could not decode it"
    )


def _buffer(document: dict[str, Any]) -> Any:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype().buffer.from_bytes(json.dumps(document).encode())


@lru_cache(maxsize=1024)
def _metadata_problem(document: str) -> str | None:
    """Why Zarr and xarray could not open an array with this ``zarr.json``, or None.

    The array is opened from an in-memory store holding nothing but its metadata, exactly as a
    reader's ``xr.open_zarr`` would open it (no chunk is read).
    """
    import xarray as xr
    from zarr.core.metadata.v3 import ArrayV3Metadata
    from zarr.storage import MemoryStore

    doc = json.loads(document)
    for codec in doc.get("codecs") or []:
        problem = reader_codec_problem(str(codec.get("name")))
        if problem:
            return problem
    try:
        ArrayV3Metadata.from_dict(dict(doc))
    except Exception as e:
        return f"its Zarr metadata cannot be read ({type(e).__name__}: {first_line(e)})"
    store = MemoryStore(
        {"zarr.json": _buffer({"zarr_format": 3, "node_type": "group", "attributes": {}}), "v/zarr.json": _buffer(doc)}
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = xr.open_zarr(store, consolidated=False, chunks=None, decode_times=False, decode_timedelta=False)
            dataset.close()
    except Exception as e:
        return f"xarray cannot open it ({type(e).__name__}: {first_line(e)})"
    return None


def _native_dtype(item: ArrayFragment) -> np.dtype:
    from zarr.core.dtype import get_data_type_from_json

    return np.dtype(get_data_type_from_json(item.metadata["data_type"], zarr_format=3).to_native_dtype())


def time_units(attributes: dict[str, Any]) -> str | None:
    """The CF time units of a variable (``days since ...``), or None."""
    units = attributes.get("units")
    return units if isinstance(units, str) and " since " in units else None


def time_problem(name: str, values: np.ndarray, attributes: dict[str, Any]) -> str | None:
    """Why xarray cannot decode these stored time values with their attributes, or None."""
    import xarray as xr
    from xarray import conventions

    from lib.validation import decoding_attributes

    attrs = decoding_attributes(attributes, values.dtype)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            variable = xr.Variable(tuple(f"d{i}" for i in range(values.ndim)), values, attrs)
            np.asarray(conventions.decode_cf_variable(name, variable, decode_times=True).values)
    except Exception as e:
        return f"{type(e).__name__}: {first_line(e)}"
    return None


def _is_concat_coordinate(item: ArrayFragment, concat: tuple[str, ...]) -> bool:
    return item.dims == (item.name,) and item.name in concat


def refuse_unreadable(fragment: Fragment, concat: tuple[str, ...]) -> None:
    """Leave out (or note, or refuse the file for) what the cube's reader path could not open.

    Raises
    ------
    SourceError
        A concat coordinate cannot be decoded, or nothing but coordinates is left of the file.
    """
    url = fragment.url
    for path, item in list(fragment.arrays.items()):
        document = json.dumps(item.metadata, sort_keys=True)
        problem = _metadata_problem(document)
        if problem is not None:
            if _is_concat_coordinate(item, concat):
                raise SourceError(f"coordinate '{path}' in '{url}' cannot be read: {problem}", url=url, variable=path)
            del fragment.arrays[path]
            fragment.skipped.append((path, problem))
            continue
        units = time_units(item.attributes)
        if units is None:
            continue
        sample = item.values if item.values is not None else np.zeros((1,) * len(item.shape), _native_dtype(item))
        trouble = time_problem(item.name, np.asarray(sample), item.attributes)
        if trouble is None:
            continue
        if _is_concat_coordinate(item, concat):
            raise SourceError(
                f"coordinate '{path}' in '{url}' cannot be decoded (units {units!r}): {trouble}; a file "
                f"cannot be placed on the '{item.name}' axis without its decoded values",
                url=url,
                variable=path,
            )
        fragment.undecodable.append(path)
        fragment.notes.append(
            f"variable '{path}' has times xarray cannot decode (units {units!r}: {trouble}); it is stored as "
            f"the file holds it: open the cube with decode_times=False (or {{'{path}': False}}), as the "
            f"source file needs too"
        )
    refuse_empty(fragment)


def refuse_past_the_end(fragment: Fragment, size: int) -> None:
    """References must lie inside the object: a header that declares more data than the object holds
    (a truncated file, a corrupt dimension) is refused before anything points past its end.

    Raises
    ------
    SourceError
        A variable's chunks reach past the object's last byte.
    """
    for path, item in fragment.arrays.items():
        if item.offsets is None or item.lengths is None or not item.lengths.size:
            continue
        ends = item.offsets.astype(np.uint64) + item.lengths.astype(np.uint64)
        last = int(ends.max())
        if last > size:
            raise SourceError(
                f"variable '{path}' in '{fragment.url}' reaches byte {last:,}, past the end of the object "
                f"({size:,} bytes): the file is truncated or its header is corrupt",
                url=fragment.url,
                variable=path,
            )


def refuse_empty(fragment: Fragment) -> None:
    """A file from which every data variable was left out is quarantined with all the reasons.

    Raises
    ------
    SourceError
        Something was skipped, and only dimension coordinates are left.
    """
    if not fragment.skipped or any(item.dims != (item.name,) for item in fragment.arrays.values()):
        return
    reasons = "; ".join(f"'{path}': {reason}" for path, reason in fragment.skipped)
    raise SourceError(f"nothing in '{fragment.url}' can be referenced: {reasons}", url=fragment.url)
