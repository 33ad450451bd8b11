"""Small files of the kinds real archives hold and parsers stumble on, each made by a function.

Each maker writes one case into ``archive`` (a directory) and returns the spec's pattern and concat
dims. They stand for classes of file seen in other projects' test data, never copies of them:
a climatology whose time units no calendar decodes, a header-only netCDF-3 file, a one-byte string
fill value, a FITS ASCII table, multi-band GeoTIFFs, netCDF-4 variables defined but never written,
and a file with nothing that can be referenced.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from tests.helpers import dataset, write_nc4

Maker = Callable[[Path], tuple[str, str]]  # archive → (pattern, concat)


def climatology(archive: Path, files: int = 1) -> None:
    """Monthly climatologies in ``hour since 0000-01-01``: year 0 exists in no default calendar."""
    import netCDF4

    for i in range(files):
        with netCDF4.Dataset(archive / f"clim{i}.nc", "w") as f:
            f.createDimension("time", 3)
            f.createDimension("lat", 4)
            time = f.createVariable("time", "f8", ("time",))
            time.units = "hour since 0000-01-01"
            time[:] = (np.arange(3) + 3 * i) * 730.0
            lat = f.createVariable("lat", "f4", ("lat",))
            lat[:] = np.linspace(-1, 1, 4)
            sst = f.createVariable("sst", "f4", ("time", "lat"), chunksizes=(1, 4))
            sst.units = "degC"
            sst[:] = np.arange(12, dtype="f4").reshape(3, 4) + 100 * i


def climatology_single(archive: Path) -> tuple[str, str]:
    climatology(archive)
    return "clim*.nc", "[]"


def climatology_concat(archive: Path) -> tuple[str, str]:
    climatology(archive, files=2)
    return "clim*.nc", "[time]"


def header_only_netcdf3(archive: Path) -> tuple[str, str]:
    """A netCDF-3 file whose variables were defined and never written: its time holds the netCDF
    default fill (9.97e36), which no time unit can decode."""
    import netCDF4

    with netCDF4.Dataset(archive / "header.nc", "w", format="NETCDF3_CLASSIC") as f:
        f.createDimension("time", 3)
        f.createDimension("lat", 4)
        f.createVariable("time", "f8", ("time",)).units = "days since 2000-01-01"
        f.createVariable("sst", "f4", ("time", "lat"))
    return "header.nc", "[]"


def one_byte_string_fill(archive: Path) -> tuple[str, str]:
    """A char flag whose ``_FillValue`` h5netcdf writes as a one-byte string (``|S1``)."""
    for t in range(2):
        ds = dataset(t)
        ds["flag"] = (("time",), np.array([b"a"], dtype="S1"))
        ds.to_netcdf(
            archive / f"d{t:02d}.nc",
            engine="h5netcdf",
            encoding={"tas": {"chunksizes": (1, 2, 3), "zlib": True}, "flag": {"_FillValue": b"x"}},
        )
    return "d*.nc", "[time]"


def fits_ascii_table(archive: Path) -> tuple[str, str]:
    """A FITS file with an image and an ASCII table extension."""
    from astropy.io import fits

    table = fits.TableHDU.from_columns(
        [
            fits.Column(name="flux", format="E12.4", array=np.arange(5.0)),
            fits.Column(name="count", format="I6", array=np.arange(5)),
        ]
    )
    image = fits.PrimaryHDU(np.arange(12, dtype=">f4").reshape(3, 4))
    fits.HDUList([image, table]).writeto(archive / "obs.fits")
    return "*.fits", "[]"


def geotiff_bands_planar(archive: Path) -> tuple[str, str]:
    """Three bands stored one plane after another, tiled and compressed."""
    import tifffile

    data = np.arange(3 * 16 * 16, dtype="u2").reshape(3, 16, 16)
    tifffile.imwrite(
        archive / "bands.tif",
        data,
        photometric="minisblack",
        planarconfig="separate",
        tile=(16, 16),
        compression="zlib",
    )
    return "*.tif", "[]"


def geotiff_bands_interleaved(archive: Path) -> tuple[str, str]:
    """Three bands interleaved per pixel (RGB-like)."""
    import tifffile

    tifffile.imwrite(archive / "rgb.tif", np.arange(16 * 16 * 3, dtype="u1").reshape(16, 16, 3), photometric="rgb")
    return "*.tif", "[]"


def never_written(archive: Path) -> tuple[str, str]:
    """netCDF-4 files with a coordinate variable, a chunked and a contiguous variable that were defined
    and never written (no storage allocated: they read as their fill value)."""
    import netCDF4

    for t in range(2):
        with netCDF4.Dataset(archive / f"u{t}.nc", "w") as f:
            f.createDimension("time", 1)
            f.createDimension("lat", 4)
            f.createDimension("depth", 3)
            time = f.createVariable("time", "i8", ("time",))
            time.units = "days since 2000-01-01"
            time[:] = [t]
            f.createVariable("lat", "f4", ("lat",))[:] = np.arange(4)
            f.createVariable("depth", "f4", ("depth",))  # a coordinate, never written
            f.createVariable("sst", "f4", ("time", "lat"), chunksizes=(1, 2))[:] = np.arange(4, dtype="f4") + t
            f.createVariable("never", "f4", ("time", "lat"), chunksizes=(1, 2))
            f.createVariable("never_contiguous", "f4", ("time", "depth"), contiguous=True)
    return "u*.nc", "[time]"


def nothing_referenceable(archive: Path) -> tuple[str, str]:
    """Good files, and one whose every data variable is of a type Zarr cannot reference."""
    import h5py

    for t in range(3):
        write_nc4(archive / f"d{t:02d}.nc", dataset(t))
    path = write_nc4(archive / "d09.nc", dataset(9))
    with h5py.File(path, "a") as f:
        del f["tas"]
        f.create_dataset("tas", data=np.zeros(2, "i4,f8"))  # a compound type
        f.create_dataset("ragged", (2,), dtype=h5py.vlen_dtype("i4"))  # variable-length sequences
    return "d*.nc", "[time]"


CASES: dict[str, Maker] = {
    "climatology, one file": climatology_single,
    "climatology along time": climatology_concat,
    "header-only netCDF-3": header_only_netcdf3,
    "one-byte string fill value": one_byte_string_fill,
    "FITS ASCII table": fits_ascii_table,
    "GeoTIFF bands, planar": geotiff_bands_planar,
    "GeoTIFF bands, interleaved": geotiff_bands_interleaved,
    "variables never written": never_written,
    "nothing referenceable": nothing_referenceable,
}


def open_source_dataset(path: Path, **kw: object) -> xr.Dataset:
    return xr.open_dataset(path, **kw).load()  # type: ignore[arg-type]
