"""Format detection by magic bytes, never by file name."""

from __future__ import annotations

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# HDF5 allows a user block before the superblock: the signature sits at 0, 512, 1024, 2048, ...
HDF5_OFFSETS = (0, 512, 1024, 2048, 4096, 8192)
HEAD_BYTES = 8200

FORMATS = {
    "hdf5": "HDF5 / netCDF-4",
    "netcdf3": "netCDF classic (CDF-1/2/5)",
    "fits": "FITS",
    "tiff": "TIFF",
    "grib": "GRIB",
}


def detect_format(head: bytes) -> str | None:
    """The format of an object from its first bytes, or None if no known format matches.

    ``head`` should be the first ``HEAD_BYTES`` bytes (or the whole object, if smaller).
    """
    for offset in HDF5_OFFSETS:
        if head[offset : offset + 8] == HDF5_MAGIC:
            return "hdf5"
    if head[:3] == b"CDF" and head[3:4] in (b"\x01", b"\x02", b"\x05"):
        return "netcdf3"
    if head[:9] == b"SIMPLE  =":
        return "fits"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:4] == b"GRIB":
        return "grib"
    return None


def describe_head(head: bytes) -> str:
    """A short human description of unrecognised leading bytes, for quarantine reasons."""
    if not head:
        return "the object is empty (0 bytes)"
    shown = head[:8]
    return f"its first bytes {shown!r} are not the signature of a supported format ({', '.join(FORMATS.values())})"
