"""Zarr v3 codecs for the HDF5 filter plugins zarr does not ship, and the plugins h5py needs to read them.

A virtual cube keeps each chunk's bytes exactly as HDF5 wrote them, so every filter a source uses needs a
Zarr codec that decodes HDF5's on-disk format. zarr ships Blosc, Zstd, zlib and shuffle; this module
adds the two hdf5plugin filters it lacks:

* ``numcodecs.imagecodecs_lz4h5`` -- the HDF5 LZ4 filter (32004). The name is the one VirtualiZarr
  gives the filter (it maps it to imagecodecs' numcodecs codec ``imagecodecs_lz4h5``), so both parsers
  write the same metadata; zarr itself registers no implementation for it.
* ``icefloe.bitshuffle_h5`` -- the HDF5 Bitshuffle filter (32008), bit-shuffled blocks, each
  optionally compressed with LZ4 or Zstd. VirtualiZarr has no mapping for it.

Both are registered with zarr through the ``zarr.codecs`` entry points in icefloe's ``pyproject.toml``:
any process that has icefloe installed can open arrays that use them. A reader *without* icefloe
installed cannot: zarr refuses the array ("codec not available") before reading a byte. All the
compression work is done by ``imagecodecs``; this module only lays out HDF5's framing.

:func:`load_filter_plugins` makes h5py able to read every filter icefloe can reference; call it
before opening a source with h5py.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from zarr.abc.codec import BytesBytesCodec
from zarr.core.common import JSON, parse_named_configuration

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer

__all__ = [
    "BITSHUFFLE_FILTER_ID",
    "BitshuffleH5Codec",
    "Lz4H5Codec",
    "bitshuffle_config",
    "load_filter_plugins",
]

BITSHUFFLE_FILTER_ID = 32008
BITSHUFFLE_NAME = "icefloe.bitshuffle_h5"
LZ4H5_NAME = "numcodecs.imagecodecs_lz4h5"

# Bitshuffle's own constants (bitshuffle_core.h / bshuf_h5filter.h); its file format depends on them.
_TARGET_BLOCK_BYTES = 8192
_BLOCKED_MULT = 8
_MIN_BLOCK = 128
_COMPRESSIONS: dict[int, Literal["none", "lz4", "zstd"]] = {0: "none", 2: "lz4", 3: "zstd"}
_HEADER = struct.Struct(">QI")  # uncompressed byte count, block size in bytes
_BLOCK_SIZE = struct.Struct(">I")  # each compressed block's byte count

_plugins_lock = threading.Lock()


@lru_cache(maxsize=1)
def _register_hdf5plugin() -> None:
    import hdf5plugin

    # force: hdf5plugin's import skips filters HDF5 already finds, e.g. through the HDF5_PLUGIN_PATH
    # netCDF4 sets to its own plugins, which are built against netCDF4's copy of libhdf5, not h5py's
    hdf5plugin.register(force=True)


def load_filter_plugins() -> None:
    """Make h5py able to read every HDF5 filter icefloe can reference (Blosc, LZ4, Zstd, Bitshuffle, ...).

    Registers hdf5plugin's filters with h5py's HDF5 library, replacing any copy HDF5 found on its
    plugin path (netCDF4 points ``HDF5_PLUGIN_PATH`` at plugins linked against its own libhdf5). Runs
    once per process; later calls return at once.
    """
    with _plugins_lock:
        _register_hdf5plugin()


def _default_block_size(elementsize: int) -> int:
    """Bitshuffle's ``bshuf_default_block_size``: the block size (in elements) a 0 in the filter means."""
    block = _TARGET_BLOCK_BYTES // elementsize
    return max(block // _BLOCKED_MULT * _BLOCKED_MULT, _MIN_BLOCK)


def bitshuffle_config(cd_values: tuple[int, ...]) -> dict[str, JSON]:
    """The ``icefloe.bitshuffle_h5`` codec document for an HDF5 Bitshuffle filter's client data.

    ``cd_values`` is (major version, minor version, element size, block size in elements (0: the
    default), compression (0 none, 2 LZ4, 3 Zstd), Zstd level); HDF5 fills in the first three.

    Raises
    ------
    ValueError
        The filter's client data is too short or names a compression bitshuffle does not define.
    """
    if len(cd_values) < 3:
        raise ValueError(f"the Bitshuffle filter's client data {cd_values} lacks the element size")
    code = cd_values[4] if len(cd_values) > 4 else 0
    if code not in _COMPRESSIONS:
        raise ValueError(f"the Bitshuffle filter names compression {code}; bitshuffle defines 0, 2 (LZ4), 3 (Zstd)")
    compression = _COMPRESSIONS[code]
    configuration: dict[str, JSON] = {
        "elementsize": int(cd_values[2]),
        "blocksize": int(cd_values[3]) if len(cd_values) > 3 else 0,
        "compression": compression,
    }
    if compression == "zstd" and len(cd_values) > 5:
        configuration["level"] = int(cd_values[5])
    return {"name": BITSHUFFLE_NAME, "configuration": configuration}


class _ThreadedBytesBytesCodec(BytesBytesCodec):
    """A bytes-to-bytes codec whose work runs off the event loop, as zarr's own compressors do."""

    is_fixed_size = False

    def _decode_bytes(self, data: memoryview, nbytes: int) -> bytes:
        raise NotImplementedError

    def _encode_bytes(self, data: memoryview) -> bytes:
        raise NotImplementedError

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        nbytes = chunk_spec.dtype.to_native_dtype().itemsize
        for size in chunk_spec.shape:
            nbytes *= size
        decoded = self._decode_bytes(memoryview(chunk_bytes.as_numpy_array()).cast("B"), nbytes)
        return chunk_spec.prototype.buffer.from_bytes(decoded)

    def _encode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer | None:
        encoded = self._encode_bytes(memoryview(chunk_bytes.as_numpy_array()).cast("B"))
        return chunk_spec.prototype.buffer.from_bytes(encoded)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_bytes, chunk_spec)

    def compute_encoded_size(self, _input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError


@dataclass(frozen=True)
class Lz4H5Codec(_ThreadedBytesBytesCodec):
    """The HDF5 LZ4 filter (hdf5plugin.LZ4, id 32004) as a Zarr v3 bytes-to-bytes codec.

    Each chunk is HDF5's LZ4 framing: a big-endian uint64 byte count and uint32 block size, then
    blocks, each a big-endian uint32 compressed size and an LZ4 block (``imagecodecs.lz4h5_*``).
    Decoding needs no configuration: the block size is in each chunk's header.

    Parameters
    ----------
    level
        The level ``imagecodecs.lz4h5_encode`` encodes with; None for its default.
    blocksize
        Bytes per block for encoding; None for the filter's default (the whole chunk, up to 1 GiB).

    Registered as ``numcodecs.imagecodecs_lz4h5`` through icefloe's entry points: a zarr reader
    without icefloe installed cannot open arrays that use it.
    """

    level: int | None = None
    blocksize: int | None = None

    def __init__(self, *, level: int | None = None, blocksize: int | None = None) -> None:
        object.__setattr__(self, "level", None if level is None else int(level))
        object.__setattr__(self, "blocksize", None if blocksize is None else int(blocksize))

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, configuration = parse_named_configuration(data, LZ4H5_NAME, require_configuration=False)
        return cls(**(configuration or {}))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {"name": LZ4H5_NAME, "configuration": {"level": self.level, "blocksize": self.blocksize}}

    def _decode_bytes(self, data: memoryview, nbytes: int) -> bytes:
        import imagecodecs

        return bytes(imagecodecs.lz4h5_decode(data, out=nbytes))

    def _encode_bytes(self, data: memoryview) -> bytes:
        import imagecodecs

        return bytes(imagecodecs.lz4h5_encode(data, level=self.level, blocksize=self.blocksize))


@dataclass(frozen=True)
class BitshuffleH5Codec(_ThreadedBytesBytesCodec):
    """The HDF5 Bitshuffle filter (hdf5plugin.Bitshuffle, id 32008) as a Zarr v3 bytes-to-bytes codec.

    The on-disk format is bitshuffle's ``bshuf_h5filter.c``. Without compression a chunk is one
    bit-shuffled buffer. With LZ4 or Zstd it is a 12-byte header (big-endian uint64 uncompressed byte
    count, uint32 block size in bytes), then one record per block of ``blocksize`` elements -- a
    big-endian uint32 compressed size and the compressed, bit-shuffled block. The last block is cut
    to a multiple of 8 elements; the remaining (count % 8) elements follow, stored as they are.

    Parameters
    ----------
    elementsize
        Bytes per array element (the filter shuffles bits within elements of this size).
    blocksize
        Elements per block; 0 means bitshuffle's default for the element size.
    compression
        "none", "lz4" or "zstd".
    level
        The Zstd level for encoding; ignored otherwise.

    Registered as ``icefloe.bitshuffle_h5`` through icefloe's entry points: a zarr reader without
    icefloe installed cannot open arrays that use it.
    """

    elementsize: int
    blocksize: int = 0
    compression: Literal["none", "lz4", "zstd"] = "lz4"
    level: int | None = None

    def __init__(
        self, *, elementsize: int, blocksize: int = 0, compression: str = "lz4", level: int | None = None
    ) -> None:
        elementsize, blocksize = int(elementsize), int(blocksize)
        if elementsize < 1:
            raise ValueError(f"{BITSHUFFLE_NAME}: elementsize must be positive, got {elementsize}")
        if blocksize < 0 or blocksize % _BLOCKED_MULT:
            raise ValueError(f"{BITSHUFFLE_NAME}: blocksize must be 0 or a positive multiple of 8, got {blocksize}")
        if compression not in _COMPRESSIONS.values():
            raise ValueError(f"{BITSHUFFLE_NAME}: compression must be 'none', 'lz4' or 'zstd', got {compression!r}")
        object.__setattr__(self, "elementsize", elementsize)
        object.__setattr__(self, "blocksize", blocksize)
        object.__setattr__(self, "compression", compression)
        object.__setattr__(self, "level", None if level is None else int(level))

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, configuration = parse_named_configuration(data, BITSHUFFLE_NAME)
        return cls(**configuration)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        configuration: dict[str, JSON] = {
            "elementsize": self.elementsize,
            "blocksize": self.blocksize,
            "compression": self.compression,
        }
        if self.level is not None:
            configuration["level"] = self.level
        return {"name": BITSHUFFLE_NAME, "configuration": configuration}

    def _decode_bytes(self, data: memoryview, nbytes: int) -> bytes:
        import imagecodecs

        size = self.elementsize
        if self.compression == "none":
            if len(data) != nbytes:
                raise ValueError(f"{BITSHUFFLE_NAME}: a chunk of {len(data)} bytes; the array's chunk holds {nbytes}")
            return bytes(imagecodecs.bitshuffle_decode(data, itemsize=size, blocksize=self.blocksize))
        if len(data) < _HEADER.size:
            raise ValueError(f"{BITSHUFFLE_NAME}: a chunk of {len(data)} bytes is shorter than its header")
        total, block_bytes = _HEADER.unpack_from(data)
        if total != nbytes or block_bytes % size or block_bytes // size % _BLOCKED_MULT or not block_bytes:
            raise ValueError(
                f"{BITSHUFFLE_NAME}: the chunk header says {total} bytes in blocks of {block_bytes} bytes; "
                f"the array's chunk holds {nbytes} bytes of {size}-byte elements"
            )
        block, count = block_bytes // size, total // size
        out = bytearray(total)
        position, done = _HEADER.size, 0
        while count - done >= _BLOCKED_MULT:
            elements = min(block, (count - done) // _BLOCKED_MULT * _BLOCKED_MULT)
            (length,) = _BLOCK_SIZE.unpack_from(data, position)
            position += _BLOCK_SIZE.size
            compressed = data[position : position + length]
            position += length
            if self.compression == "lz4":
                shuffled = imagecodecs.lz4_decode(compressed, header=False, out=elements * size)
            else:
                shuffled = imagecodecs.zstd_decode(compressed)
            if len(shuffled) != elements * size:
                raise ValueError(
                    f"{BITSHUFFLE_NAME}: a block decompressed to {len(shuffled)} bytes; expected {elements * size}"
                )
            start = done * size
            out[start : start + elements * size] = imagecodecs.bitshuffle_decode(
                shuffled, itemsize=size, blocksize=elements
            )
            done += elements
        rest = (count - done) * size
        if position + rest != len(data):
            raise ValueError(
                f"{BITSHUFFLE_NAME}: the chunk holds {len(data)} bytes; its blocks account for {position + rest}"
            )
        out[done * size :] = data[position:]
        return bytes(out)

    def _encode_bytes(self, data: memoryview) -> bytes:
        import imagecodecs

        size = self.elementsize
        if len(data) % size:
            raise ValueError(f"{BITSHUFFLE_NAME}: {len(data)} bytes are not a whole number of {size}-byte elements")
        if self.compression == "none":
            return bytes(imagecodecs.bitshuffle_encode(data, itemsize=size, blocksize=self.blocksize))
        block = self.blocksize or _default_block_size(size)
        count = len(data) // size
        parts: list[bytes] = [_HEADER.pack(len(data), block * size)]
        done = 0
        while count - done >= _BLOCKED_MULT:
            elements = min(block, (count - done) // _BLOCKED_MULT * _BLOCKED_MULT)
            shuffled = imagecodecs.bitshuffle_encode(
                data[done * size : (done + elements) * size], itemsize=size, blocksize=elements
            )
            if self.compression == "lz4":
                compressed = imagecodecs.lz4_encode(shuffled, header=False)
            else:
                compressed = imagecodecs.zstd_encode(shuffled, level=self.level)
            parts += [_BLOCK_SIZE.pack(len(compressed)), bytes(compressed)]
            done += elements
        parts.append(bytes(data[done * size :]))
        return b"".join(parts)
