"""File-like access to source objects for the native libraries (h5py, scipy, astropy)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

from lib.storage import parse_location

if TYPE_CHECKING:
    from collections.abc import Iterator

    from obspec_utils.registry import ObjectStoreRegistry

__all__ = ["open_source", "read_head"]

# Small netCDF-4 files keep all their metadata within the first block: one request reads it all.
BLOCK_SIZE = 1024 * 1024


@contextmanager
def open_source(url: str, registry: ObjectStoreRegistry, block_size: int = BLOCK_SIZE) -> Iterator[IO[bytes] | Any]:
    """Open an object for random-access reads.

    Local files are opened directly; objects in S3 through obstore with a block cache, so a
    library's many tiny metadata reads coalesce into a few range requests.
    """
    loc = parse_location(url)
    if loc.scheme == "file":
        with open(loc.key, "rb") as f:
            yield f
        return
    from obspec_utils.readers import BlockStoreReader

    store, path = registry.resolve(url)
    reader = BlockStoreReader(store, path, block_size=block_size, max_cached_blocks=64)
    try:
        yield reader
    finally:
        reader.close()


def read_head(url: str, registry: ObjectStoreRegistry, size: int) -> tuple[bytes, int]:
    """The first ``size`` bytes of an object (fewer if it is smaller), and the object's size."""
    import obstore

    loc = parse_location(url)
    if loc.scheme == "file":
        with open(loc.key, "rb") as f:
            return f.read(size), os.fstat(f.fileno()).st_size
    store, path = registry.resolve(url)
    total = obstore.head(store, path)["size"]
    if total == 0:
        return b"", 0
    return bytes(obstore.get_range(store, path, start=0, length=min(size, total))), total
