"""HDF5 files compressed with hdf5plugin's filters (Blosc, LZ4, Zstd, Bitshuffle) land in the cube and read
back bit for bit; chunks HDF5 stored without their filter (a non-zero filter mask) are refused by name;
the codecs decode what hdf5plugin writes and round-trip what they encode; h5py reads every filter in
any process icefloe opens a source in."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.codecs import BytesCodec

from lib.codecs import BitshuffleH5Codec, Lz4H5Codec, bitshuffle_config, load_filter_plugins
from lib.parsing.hdf5 import parse_hdf5
from lib.parsing.policy import ParseOptions
from lib.parsing.reference import parse_with_virtualizarr
from lib.storage import source_registry
from tests.helpers import dataset, file_url, make_spec, read_cube, run_cube

pytestmark = pytest.mark.timeout(300)

# -- the codecs on their own: hdf5plugin's bytes in, h5py's values out, and back ------------------

# name → hdf5plugin filter; each writes chunks of more than one block, and a last block cut to 8 elements
CODEC_FILTERS: dict[str, Callable[[], Any]] = {
    "lz4": lambda: hdf5plugin.LZ4(),
    "lz4-small-blocks": lambda: hdf5plugin.LZ4(nbytes=1000),
    "bitshuffle-lz4": lambda: hdf5plugin.Bitshuffle(),
    "bitshuffle-lz4-64": lambda: hdf5plugin.Bitshuffle(nelems=64),
    "bitshuffle-zstd": lambda: hdf5plugin.Bitshuffle(cname="zstd", clevel=7),
    "bitshuffle-none": lambda: hdf5plugin.Bitshuffle(cname="none"),
    "bitshuffle-none-64": lambda: hdf5plugin.Bitshuffle(nelems=64, cname="none"),
}
SHAPE, CHUNKS = (20, 2100), (9, 1001)  # 9,009 elements per chunk: more than a default block, not a multiple of 8


def _codec_for(dataset: h5py.Dataset) -> Any:
    (filter_id, cd_values), *_ = dataset._filters.items()
    if filter_id == "32004":
        return Lz4H5Codec(blocksize=cd_values[0] or None)
    return BitshuffleH5Codec.from_dict(bitshuffle_config(cd_values))


@pytest.fixture(params=sorted(CODEC_FILTERS))
def hdf5plugin_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """One dataset per dtype, written with h5py and the filter, chunks partly outside the shape."""
    load_filter_plugins()
    rng = np.random.default_rng(11)
    path = tmp_path / f"{request.param}.h5"
    with h5py.File(path, "w") as f:
        for dtype in ("u1", "i2", "f4", "f8"):
            values = (rng.standard_normal(SHAPE) * 50).astype(dtype)
            f.create_dataset(dtype, data=values, chunks=CHUNKS, **CODEC_FILTERS[request.param]())
    return path


def _raw_chunks(dataset: h5py.Dataset) -> dict[str, bytes]:
    """Every chunk's stored bytes, keyed as a Zarr v3 array stores them ("c/i/j")."""
    out = {}
    for index in range(dataset.id.get_num_chunks()):
        info = dataset.id.get_chunk_info(index)
        mask, raw = dataset.id.read_direct_chunk(info.chunk_offset)
        assert mask == 0
        key = "/".join(str(o // c) for o, c in zip(info.chunk_offset, dataset.chunks, strict=True))
        out[f"c/{key}"] = raw
    return out


def _array(store: dict[str, Any], dataset: h5py.Dataset) -> zarr.Array:
    return zarr.create_array(
        zarr.storage.MemoryStore(store_dict=store),
        shape=dataset.shape,
        chunks=dataset.chunks,
        dtype=dataset.dtype,
        serializer=BytesCodec(),
        compressors=[_codec_for(dataset)],
        fill_value=0,
    )


def test_codecs_decode_the_chunks_hdf5plugin_writes(hdf5plugin_file: Path) -> None:
    from zarr.core.buffer import cpu

    with h5py.File(hdf5plugin_file, "r") as f:
        for dtype, dataset in f.items():
            store: dict[str, Any] = {}
            array = _array(store, dataset)
            for key, raw in _raw_chunks(dataset).items():
                store[key] = cpu.Buffer.from_bytes(raw)
            got, want = array[...], dataset[()]
            assert got.dtype == want.dtype, dtype
            np.testing.assert_array_equal(got.view(f"u{want.itemsize}"), want.view(f"u{want.itemsize}"), err_msg=dtype)


def test_codecs_encode_the_bytes_hdf5plugin_writes_and_read_them_back(hdf5plugin_file: Path) -> None:
    with h5py.File(hdf5plugin_file, "r") as f:
        for dtype, dataset in f.items():
            store: dict[str, Any] = {}
            array = _array(store, dataset)
            array[...] = dataset[()]
            written = {key: value.to_bytes() for key, value in store.items() if key.startswith("c/")}
            assert written == _raw_chunks(dataset), dtype
            np.testing.assert_array_equal(array[...], dataset[()], err_msg=dtype)


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        (lambda raw: raw[:-10], r"LZ4_decompress_safe"),  # the last block cut short
        (lambda raw: raw + b"\0" * 8, r"icefloe.bitshuffle_h5: the chunk holds \d+ bytes; its blocks account for"),
        (lambda raw: raw[:8], r"shorter than its header"),
        (lambda raw: raw[:4] + b"\1" + raw[5:], r"the chunk header says \d+ bytes .* the array's chunk holds 16004"),
    ],
)
def test_a_damaged_bitshuffle_chunk_is_an_error_not_wrong_values(
    tmp_path: Path, damage: Callable[[bytes], bytes], error: str
) -> None:
    from zarr.core.buffer import cpu

    load_filter_plugins()
    with h5py.File(tmp_path / "t.h5", "w") as f:
        dataset = f.create_dataset("v", data=np.arange(4001, dtype="f4"), chunks=(4001,), **hdf5plugin.Bitshuffle())
        store: dict[str, Any] = {}
        array = _array(store, dataset)
        (key, raw), *_ = _raw_chunks(dataset).items()
        store[key] = cpu.Buffer.from_bytes(damage(raw))
        with pytest.raises((ValueError, RuntimeError), match=error):
            array[...]


@pytest.mark.parametrize(
    ("cd_values", "configuration"),
    [
        ((0, 4, 4, 0, 2), {"elementsize": 4, "blocksize": 0, "compression": "lz4"}),
        ((0, 4, 8, 64, 3, 7), {"elementsize": 8, "blocksize": 64, "compression": "zstd", "level": 7}),
        ((0, 4, 2, 0, 0), {"elementsize": 2, "blocksize": 0, "compression": "none"}),
        ((0, 4, 1, 0), {"elementsize": 1, "blocksize": 0, "compression": "none"}),
    ],
)
def test_bitshuffle_filter_settings_become_the_codec_document(
    cd_values: tuple[int, ...], configuration: dict[str, Any]
) -> None:
    document = bitshuffle_config(cd_values)
    assert document == {"name": "icefloe.bitshuffle_h5", "configuration": configuration}
    assert BitshuffleH5Codec.from_dict(document).to_dict() == document
    assert zarr.registry.get_codec_class("icefloe.bitshuffle_h5") is BitshuffleH5Codec


def test_lz4_codec_document_is_the_one_virtualizarr_writes() -> None:
    from virtualizarr.codecs import zarr_codec_config_to_v3
    from virtualizarr.parsers.hdf.filters import _filter_to_codec

    document = zarr_codec_config_to_v3(_filter_to_codec("32004", (0,)).get_config())
    assert document == {"name": "numcodecs.imagecodecs_lz4h5", "configuration": {"level": None, "blocksize": None}}
    assert Lz4H5Codec.from_dict(document).to_dict() == document
    assert zarr.registry.get_codec_class("numcodecs.imagecodecs_lz4h5") is Lz4H5Codec


@pytest.mark.parametrize(
    ("cd_values", "message"),
    [((0, 4), r"lacks the element size"), ((0, 4, 4, 0, 1), r"names compression 1")],
)
def test_bitshuffle_settings_icefloe_cannot_decode_are_refused(cd_values: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bitshuffle_config(cd_values)


@pytest.mark.parametrize(
    ("configuration", "message"),
    [
        ({"elementsize": 0}, r"elementsize must be positive"),
        ({"elementsize": 4, "blocksize": 12}, r"blocksize must be 0 or a positive multiple of 8"),
        ({"elementsize": 4, "compression": "lzma"}, r"compression must be 'none', 'lz4' or 'zstd'"),
    ],
)
def test_bitshuffle_codec_refuses_a_bad_configuration(configuration: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BitshuffleH5Codec(**configuration)


SPOT_CHECK_ALL = "checks:\n  regular: []\n  spot_check: {files: all, chunks_per_variable: 8}\n"

# name → (the hdf5plugin filter, the codec name the cube's metadata must hold)
FILTERS: dict[str, tuple[Callable[[], Any], str]] = {
    "blosc": (lambda: hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE), "numcodecs.blosc"),
    "lz4": (lambda: hdf5plugin.LZ4(), "numcodecs.imagecodecs_lz4h5"),
    "zstd": (lambda: hdf5plugin.Zstd(clevel=3), "numcodecs.zstd"),
    "bitshuffle-lz4": (lambda: hdf5plugin.Bitshuffle(), "icefloe.bitshuffle_h5"),
    "bitshuffle-none": (lambda: hdf5plugin.Bitshuffle(cname="none"), "icefloe.bitshuffle_h5"),
    "bitshuffle-zstd": (lambda: hdf5plugin.Bitshuffle(cname="zstd", clevel=5), "icefloe.bitshuffle_h5"),
}


def smooth(day: int, shape: tuple[int, int] = (32, 48)) -> xr.Dataset:
    """A day of (time, lat, lon) values smooth enough that every filter shrinks every chunk."""
    ds = dataset(day, shape=shape, scalar=1.0)
    y, x = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    values = (280 + day + np.sin(y / 5.0) * 10 + np.cos(x / 7.0) * 5).astype("f4")
    return ds.assign(tas=(("time", "lat", "lon"), values[None], ds.tas.attrs))


def write_filtered(path: Path, ds: xr.Dataset, compression: Any, chunks: tuple[int, ...]) -> Path:
    """netCDF-4 (via h5netcdf) whose data variable is compressed with an hdf5plugin filter."""
    load_filter_plugins()  # netCDF4's own plugins may already be on HDF5's path in this process
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path, engine="h5netcdf", encoding={"tas": {"chunksizes": chunks, **dict(compression)}})
    return path


def filter_masks(path: Path, variable: str = "tas") -> list[int]:
    masks: list[int] = []
    with h5py.File(path, "r") as f:
        f[variable].id.chunk_iter(lambda info: masks.append(info.filter_mask))
    return masks


# -- the cube: every value through Icechunk equals h5py's read of the file -----------------------


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_plugin_filtered_files_land_and_read_back_bit_identical(workdir: Path, name: str) -> None:
    make, codec_name = FILTERS[name]
    files = [
        write_filtered(workdir / "archive" / f"d{t:02d}.nc", smooth(t), make(), chunks=(1, 16, 24)) for t in range(3)
    ]
    for f in files:
        assert set(filter_masks(f)) == {0}, "the fixture must make the filter apply to every chunk"
    spec = make_spec(workdir, "d*.nc", extra=SPOT_CHECK_ALL)
    summary = run_cube(spec)
    assert summary.exit_code == 0 and summary.ingested == 3, (summary.quarantined, summary.skipped)
    assert not summary.quarantined and not summary.skipped
    cube = read_cube(spec)
    assert codec_name in _codec_names(spec)
    for f in files:
        with h5py.File(f, "r") as h:
            want = h["tas"][()]
            times = xr.open_dataset(f, engine="h5netcdf").time.values
        got = cube.tas.sel(time=times).values
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def _codec_names(spec: Any) -> set[str]:
    from tests.helpers import open_repo

    group = zarr.open_group(open_repo(spec).readonly_session(branch="main").store, mode="r", zarr_format=3)
    return {c["name"] for c in group["tas"].metadata.to_dict()["codecs"]}


# -- chunks HDF5 stored without their filter ------------------------------------------------------


def test_blosc_chunks_stored_unfiltered_get_the_variable_skipped_with_the_reason(workdir: Path) -> None:
    """Blosc cannot shrink 6-value chunks, so HDF5 stores them raw and sets their filter mask."""
    files = [
        write_filtered(workdir / "archive" / f"d{t:02d}.nc", smooth(t, (4, 6)), hdf5plugin.Blosc(), chunks=(1, 2, 3))
        for t in range(3)
    ]
    assert set(filter_masks(files[0])) == {1}
    spec = make_spec(workdir, "d*.nc", extra=SPOT_CHECK_ALL)
    summary = run_cube(spec)
    assert summary.exit_code == 0 and not summary.quarantined, summary.quarantined
    pattern = (
        r"HDF5 stored 4 of 4 chunks of variable 'tas' in '.*/d0[012]\.nc' without the blosc filter \(filter mask\), "
        r"the first at chunk \(0, 0, 0\); their bytes cannot share one codec pipeline"
    )
    assert {(s["url"], s["variable"]) for s in summary.skipped} == {(file_url(f), "tas") for f in files}
    assert all(re.fullmatch(pattern, s["reason"]) for s in summary.skipped), summary.skipped
    assert "tas" not in read_cube(spec)


def test_both_parsers_count_the_unfiltered_chunks_and_name_the_skipped_filter(tmp_path: Path) -> None:
    """Shuffle, then Blosc: the chunk of random bits Blosc cannot shrink is stored shuffled only
    (filter mask 0b10); the variable is left out by both HDF5 parsers, for the same reason; the
    coordinate with the same filters is loaded natively and stays."""
    load_filter_plugins()
    path = tmp_path / "partly.h5"
    rng = np.random.default_rng(5)
    values = np.tile(np.arange(256, dtype="u4"), (4, 1))
    values[2] = rng.integers(0, 2**32, 256, dtype="u4")  # incompressible
    with h5py.File(path, "w") as f:
        time = f.create_dataset("time", data=values[:, 0], chunks=(1,), shuffle=True, **hdf5plugin.Blosc())
        time.make_scale("time")
        v = f.create_dataset("v", data=values, chunks=(1, 256), shuffle=True, **hdf5plugin.Blosc())
        v.dims[0].attach_scale(time)
    assert filter_masks(path, "v") == [0, 0, 2, 0] and set(filter_masks(path, "time")) == {2}
    url = file_url(path)
    registry = source_registry(f"file://{tmp_path}/")
    options = ParseOptions(concat=("time",))
    reason = (
        f"HDF5 stored 1 of 4 chunks of variable 'v' in '{url}' without the blosc filter (filter mask), "
        f"the first at chunk (2, 0); their bytes cannot share one codec pipeline"
    )
    fast = parse_hdf5(url, registry, options)
    assert fast.skipped == [("v", reason)] and "v" not in fast.arrays
    np.testing.assert_array_equal(fast.arrays["time"].values, values[:, 0])
    reference = parse_with_virtualizarr(url, "hdf5", registry, options)
    assert reference.skipped == [("v", reason)] and "v" not in reference.arrays
    np.testing.assert_array_equal(reference.arrays["time"].values, values[:, 0])


# -- h5py has every filter, whatever the process imported first -----------------------------------

REPO = Path(__file__).resolve().parents[2]

SPOT_CHECK_READ = """
import sys
import netCDF4  # first, as a flow run that opened netCDF files may have: it puts its own HDF5 plugins on the path
import numpy as np
from lib.quality import _native_reader

assert "hdf5plugin" not in sys.modules
expected = np.load(sys.argv[2])
with open(sys.argv[1], "rb") as handle:
    read, close = _native_reader("hdf5", handle)
    try:
        for name in expected.files:
            np.testing.assert_array_equal(read(name, ()), expected[name], err_msg=name)
    finally:
        close()
"""

BLOSC_AFTER_NETCDF4 = """
import sys
import netCDF4
import h5py
import hdf5plugin
import numpy as np
from lib.codecs import load_filter_plugins

load_filter_plugins()
with h5py.File(sys.argv[1], "w") as f:
    f.create_dataset("v", data=np.arange(4096, dtype="f4"), chunks=(1024,), **hdf5plugin.Blosc())
with h5py.File(sys.argv[1], "r") as f:
    np.testing.assert_array_equal(f["v"][()], np.arange(4096, dtype="f4"))
"""


def _run(script: str, *args: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_spot_checks_h5py_side_reads_every_plugin_filter_in_a_fresh_process(tmp_path: Path) -> None:
    """The spot check may run in a process that never parsed (so never imported hdf5plugin) and
    that imported netCDF4 first; h5py must still read LZ4, Bitshuffle, Blosc and Zstd chunks."""
    load_filter_plugins()
    path, expected = tmp_path / "filters.h5", {}
    with h5py.File(path, "w") as f:
        for name, (make, _) in FILTERS.items():
            values = smooth(0).tas.values
            f.create_dataset(name, data=values, chunks=(1, 16, 24), **make())
            expected[name] = values
    np.savez(tmp_path / "expected.npz", **expected)
    done = _run(SPOT_CHECK_READ, path, tmp_path / "expected.npz")
    assert done.returncode == 0, done.stderr[-3000:]


def test_load_filter_plugins_replaces_the_filters_netcdf4_puts_on_hdf5s_path(tmp_path: Path) -> None:
    """netCDF4 sets HDF5_PLUGIN_PATH to its own plugins, built against its own copy of libhdf5;
    hdf5plugin's import then leaves Blosc to that plugin, with which h5py cannot create datasets
    ("error during user callback"). After load_filter_plugins h5py uses hdf5plugin's Blosc."""
    done = _run(BLOSC_AFTER_NETCDF4, tmp_path / "blosc.h5")
    assert done.returncode == 0, done.stderr[-3000:]
