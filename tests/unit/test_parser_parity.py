"""The fast HDF5 parser returns exactly what the reference path (VirtualiZarr's HDFParser) returns:
every array's metadata, every chunk reference, every native value -- over a corpus of layouts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pytest

from lib.parsing import ParseOptions, parse_source
from lib.parsing.fragment import Fragment, name_phony_dims
from lib.parsing.hdf5 import parse_hdf5
from lib.parsing.reference import parse_with_virtualizarr
from lib.storage import source_registry

OPTIONS = ParseOptions(concat=("time",))


def nc(path: Path, build: Callable[[netCDF4.Dataset], None]) -> Path:
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        build(ds)
    return path


def h5(path: Path, build: Callable[[h5py.File], None]) -> Path:
    with h5py.File(path, "w") as f:
        build(f)
    return path


def _time_grid(ds: netCDF4.Dataset, n: int = 4, unlimited: bool = False) -> None:
    ds.createDimension("time", None if unlimited else n)
    ds.createDimension("y", 6)
    ds.createDimension("x", 8)
    t = ds.createVariable("time", "i8", ("time",))
    t.units, t.calendar = "days since 2001-01-01", "standard"
    t[:] = np.arange(n)
    ds.createVariable("y", "f4", ("y",))[:] = np.arange(6)
    ds.createVariable("x", "f4", ("x",))[:] = np.arange(8)


def _data(ds: netCDF4.Dataset, name: str = "v", n: int = 4, **kw: object) -> None:
    v = ds.createVariable(name, kw.pop("dtype", "f4"), ("time", "y", "x"), **kw)  # type: ignore[arg-type]
    v.units = "K"
    v[:] = np.arange(n * 48, dtype="f8").reshape(n, 6, 8)


def zlib_shuffle(ds: netCDF4.Dataset) -> None:
    _time_grid(ds)
    _data(ds, zlib=True, complevel=5, shuffle=True, chunksizes=(1, 3, 4))


def fletcher32(ds: netCDF4.Dataset) -> None:
    _time_grid(ds)
    _data(ds, zlib=True, fletcher32=True, chunksizes=(2, 6, 8))


def big_endian(ds: netCDF4.Dataset) -> None:
    _time_grid(ds)
    _data(ds, dtype=np.dtype(">f4"), endian="big", chunksizes=(1, 6, 8))
    _data(ds, name="w", dtype=np.dtype(">i2"), endian="big", contiguous=True)


def fill_values(ds: netCDF4.Dataset) -> None:
    _time_grid(ds)
    _data(ds, fill_value=-9999.0, chunksizes=(1, 6, 4))
    _data(ds, name="counts", dtype="i4", fill_value=-1, zlib=True)
    m = ds.createVariable("masked", "f8", ("time", "y", "x"), fill_value=np.nan)
    m.missing_value = np.float64(-1.0)
    m[:] = np.ones((4, 6, 8))


def unlimited(ds: netCDF4.Dataset) -> None:
    _time_grid(ds, unlimited=True)
    _data(ds, chunksizes=(1, 6, 8))
    _data(ds, name="default_chunks")


def scalars_and_strings(ds: netCDF4.Dataset) -> None:
    _time_grid(ds)
    ds.createVariable("height", "f8")[...] = 2.0
    names = ds.createVariable("station", str, ("y",))
    names[:] = np.array([f"st{i}" for i in range(6)], dtype=object)
    ds.createDimension("nchar", 5)
    chars = ds.createVariable("code", "S1", ("y", "nchar"))
    chars[:] = netCDF4.stringtochar(np.array([f"c{i:04d}" for i in range(6)], dtype="S5"))
    ds.title = "scalars and strings"
    ds.history = np.array([1.5, 2.5])


def groups(ds: netCDF4.Dataset) -> None:
    _time_grid(ds)
    _data(ds, chunksizes=(1, 6, 8))
    g = ds.createGroup("forecast")
    g.createDimension("lead", 3)
    g.createVariable("lead", "i4", ("lead",))[:] = [0, 6, 12]
    s = g.createVariable("skill", "f4", ("time", "lead"), zlib=True)
    s[:] = np.ones((4, 3))
    g.source = "model"
    g.createGroup("deeper").createVariable("flag", "i1")[...] = 1


def dimension_scales(f: h5py.File) -> None:
    f["t"] = np.arange(5.0)
    f["t"].make_scale("t")
    f.create_dataset("series", data=np.arange(10.0).reshape(5, 2), chunks=(2, 2), compression="gzip")
    f["series"].dims[0].attach_scale(f["t"])
    f.create_dataset("unscaled", data=np.arange(7, dtype="i8"))


def contiguous_and_compact(f: h5py.File) -> None:
    f.create_dataset("contiguous", data=np.arange(100.0).reshape(10, 10))
    f.create_dataset("empty_contiguous", shape=(4,), dtype="f4")
    f.create_dataset("empty_chunked", shape=(8,), dtype="f4", chunks=(4,), fillvalue=7.0)
    space = h5py.h5s.create_simple((5,))
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_layout(h5py.h5d.COMPACT)
    h5py.h5d.create(f.id, b"compact", h5py.h5t.NATIVE_INT32, space, plist).write(
        h5py.h5s.ALL, h5py.h5s.ALL, np.arange(5, dtype=np.int32)
    )


def sparse_chunks(f: h5py.File) -> None:
    d = f.create_dataset("sparse", shape=(6, 6), dtype="f8", chunks=(2, 2), fillvalue=np.nan)
    d[0:2, 0:2] = 1.0
    d[4:6, 2:4] = 2.0


CORPUS: dict[str, tuple[str, Callable[..., None]]] = {
    "zlib_shuffle": ("nc", zlib_shuffle),
    "fletcher32": ("nc", fletcher32),
    "big_endian": ("nc", big_endian),
    "fill_values": ("nc", fill_values),
    "unlimited": ("nc", unlimited),
    "scalars_and_strings": ("nc", scalars_and_strings),
    "groups": ("nc", groups),
    "dimension_scales": ("h5", dimension_scales),
    "contiguous_and_compact": ("h5", contiguous_and_compact),
    "sparse_chunks": ("h5", sparse_chunks),
}


def assert_same_fragments(fast: Fragment, ref: Fragment) -> None:
    assert fast.attributes == ref.attributes
    assert fast.groups == ref.groups
    assert sorted(fast.skipped) == sorted(ref.skipped)
    assert list(fast.arrays) == list(ref.arrays)
    for path, a in fast.arrays.items():
        b = ref.arrays[path]
        assert a.metadata == b.metadata, path
        assert a.storage == b.storage, path
        assert a.native == b.native, path
        if a.native:
            assert a.values is not None and b.values is not None
            assert a.values.shape == b.values.shape and a.values.dtype.kind == b.values.dtype.kind, path
            if a.values.dtype.kind == "f":
                np.testing.assert_array_equal(a.values, b.values)
            else:
                assert a.values.tolist() == b.values.tolist(), path
        else:
            np.testing.assert_array_equal(a.offsets, b.offsets, err_msg=path)
            np.testing.assert_array_equal(a.lengths, b.lengths, err_msg=path)


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_fast_parser_matches_the_reference(tmp_path: Path, case: str) -> None:
    kind, build = CORPUS[case]
    path = (nc if kind == "nc" else h5)(tmp_path / f"{case}.{kind}", build)
    url = f"file://{path}"
    registry = source_registry(f"file://{tmp_path}/")
    fast = parse_hdf5(url, registry, OPTIONS)
    ref = parse_with_virtualizarr(url, "hdf5", registry, OPTIONS)
    for fragment in (fast, ref):
        name_phony_dims(fragment)
    assert fast.parser == "fast" and ref.parser == "virtualizarr"
    assert fast.arrays, "the corpus file must hold arrays"
    assert_same_fragments(fast, ref)
    assert parse_source(url, registry, OPTIONS).parser == "fast"  # the pipeline takes the fast path


def test_corpus_covers_every_layout_the_fast_path_claims(tmp_path: Path) -> None:
    """Each layout of the parity corpus really is in it (so a parity pass means something)."""
    seen: set[str] = set()
    registry = source_registry(f"file://{tmp_path}/")
    for case, (kind, build) in CORPUS.items():
        path = (nc if kind == "nc" else h5)(tmp_path / f"{case}.{kind}", build)
        fragment = parse_hdf5(f"file://{path}", registry, OPTIONS)
        seen |= {a.storage for a in fragment.arrays.values()}
        for a in fragment.arrays.values():
            names = {c["name"] for c in a.metadata["codecs"]}
            seen |= {n.removeprefix("numcodecs.") for n in names}
            if a.metadata["codecs"] and a.metadata["codecs"][0].get("configuration", {}).get("endian") == "big":
                seen.add("big-endian")
            if "/" in a.path:
                seen.add("group")
            if not a.dims:
                seen.add("scalar")
    assert {
        "chunked",
        "contiguous",
        "compact",
        "unallocated",
        "inlined",
        "zlib",
        "shuffle",
        "fletcher32",
        "big-endian",
        "group",
        "scalar",
    } <= seen, seen
