"""A small synthetic archive shaped like a real model ensemble, for the demo, tests and benchmarks.

Tiles ``polygon_{p:03d}/month_{m:02d}/step_{t:04d}.nc``: netCDF-4 files, one time step each, with
chunked, compressed variables over (time, depth, lat, lon), 1-D coordinates, CF time whose units
differ from file to file (as in real archives), a scalar variable and attributes. Together they
form one 6-D cube: polygon x month x time x depth x lat x lon.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DemoShape",
    "demo_spec",
    "monthly_spec",
    "write_bad_file",
    "write_demo_archive",
    "write_monthly_archive",
    "write_step",
]

EPOCH = np.datetime64("2000-01-01", "D")


class DemoShape:
    """The size of a demo archive."""

    def __init__(
        self,
        polygons: int = 2,
        months: int = 3,
        steps: int = 4,
        depth: int = 5,
        lat: int = 16,
        lon: int = 16,
        chunk: tuple[int, int, int, int] = (1, 5, 8, 8),
        variables: int = 2,
    ) -> None:
        self.polygons, self.months, self.steps = polygons, months, steps
        self.depth, self.lat, self.lon, self.chunk, self.variables = depth, lat, lon, chunk, variables

    @property
    def files(self) -> int:
        return self.polygons * self.months * self.steps


NAMES = ("DIC", "ALK", "TEMP", "SALT")


def step_path(root: Path, polygon: int, month: int, step: int) -> Path:
    return root / f"polygon_{polygon:03d}" / f"month_{month:02d}" / f"step_{step:04d}.nc"


def write_step(
    path: Path,
    polygon: int,
    month: int,
    step: int,
    shape: DemoShape | None = None,
    chunk: tuple[int, int, int, int] | None = None,
    complevel: int = 4,
) -> Path:
    """Write one tile file: one time step of one ensemble member."""
    import xarray as xr

    shape = shape or DemoShape()
    chunk = chunk or shape.chunk
    rng = np.random.default_rng(polygon * 100_003 + month * 1009 + step)
    dims = ("time", "depth", "lat", "lon")
    size = (1, shape.depth, shape.lat, shape.lon)
    data: dict[str, tuple[tuple[str, ...], Any, dict[str, str]]] = {}
    for i, name in enumerate(NAMES[: shape.variables]):
        values = (2000.0 + 100 * i + rng.standard_normal(size) * 10).astype("f4")
        data[name] = (dims, values, {"units": "mmol/m^3", "long_name": f"{name} concentration"})
    data["injection_rate"] = ((), np.float32(1.0 + polygon + 0.1 * month), {"units": "mol/s"})
    when = EPOCH + np.timedelta64(step, "D")
    ds = xr.Dataset(
        data,
        coords={
            "time": ("time", [when.astype("datetime64[ns]")]),
            "depth": (
                "depth",
                np.linspace(5.0, 5.0 + 10 * (shape.depth - 1), shape.depth),
                {"units": "m", "positive": "down"},
            ),
            "lat": ("lat", np.linspace(-30.0, 30.0, shape.lat), {"units": "degrees_north"}),
            "lon": ("lon", np.linspace(150.0, 210.0, shape.lon), {"units": "degrees_east"}),
        },
        attrs={"title": "icefloe demo ensemble", "polygon": polygon, "injection_month": month},
    )
    encoding: dict[str, dict[str, object]] = {
        name: {"chunksizes": chunk, "zlib": True, "complevel": complevel, "shuffle": True}
        for name in NAMES[: shape.variables]
    }
    # each file's time units start at its own date, as many archives' do
    encoding["time"] = {"units": f"days since {when}", "calendar": "proleptic_gregorian", "dtype": "int64"}
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path, engine="h5netcdf", encoding=encoding)
    return path


def write_demo_archive(
    root: Path,
    shape: DemoShape | None = None,
    polygons: Iterable[int] | None = None,
    months: Iterable[int] | None = None,
    steps: Iterable[int] | None = None,
) -> list[Path]:
    """Write every tile of a demo archive (or the given subset) under ``root``."""
    shape = shape or DemoShape()
    out = []
    for p in polygons if polygons is not None else range(shape.polygons):
        for m in months if months is not None else range(1, shape.months + 1):
            for t in steps if steps is not None else range(shape.steps):
                out.append(write_step(step_path(root, p, m, t), p, m, t, shape))
    return out


def write_bad_file(root: Path, shape: DemoShape | None = None) -> Path:
    """A tile whose DIC is chunked differently from every other file: it cannot join the cube."""
    shape = shape or DemoShape()
    path = step_path(root, 1 % max(shape.polygons, 1), 1, shape.steps)
    return write_step(path, 1, 1, shape.steps, shape, chunk=(1, shape.depth, shape.lat, shape.lon))


def demo_spec(source: Path, repo: Path, name: str = "demo") -> str:
    """The spec of a demo archive, as YAML text."""
    return (
        f"name: {name}\n"
        f"source:\n  url: file://{source.resolve()}/\n"
        f'  pattern: "polygon_{{polygon:d}}/month_{{month:d}}/step_*.nc"\n'
        f"concat: [time]\n"
        f"repo:\n  url: file://{repo.resolve()}\n"
    )


def write_monthly_archive(
    root: Path, polygons: int = 2, months: Iterable[int] = (1, 2, 3), year: int = 2000
) -> list[Path]:
    """Monthly files of daily data, one chunk per file along time: months of 31, 29 (a leap year's
    February), 31... days, so the files differ in length and only a rectilinear time axis holds them.

    Files ``polygon_{p:03d}/{year}-{month:02d}.nc`` with ``DIC`` over (time, lat, lon).
    """
    import xarray as xr

    shape = DemoShape()
    out = []
    for p in range(polygons):
        for m in months:
            first = np.datetime64(f"{year}-{m:02d}-01", "D")
            days = int(
                ((first.astype("datetime64[M]") + np.timedelta64(1, "M")).astype("datetime64[D]") - first)
                / np.timedelta64(1, "D")
            )
            rng = np.random.default_rng(p * 1000 + m)
            values = (2000.0 + rng.standard_normal((days, shape.lat, shape.lon)) * 10).astype("f4")
            ds = xr.Dataset(
                {"DIC": (("time", "lat", "lon"), values, {"units": "mmol/m^3", "long_name": "DIC concentration"})},
                coords={
                    "time": ("time", (first + np.arange(days)).astype("datetime64[ns]")),
                    "lat": ("lat", np.linspace(-30.0, 30.0, shape.lat), {"units": "degrees_north"}),
                    "lon": ("lon", np.linspace(150.0, 210.0, shape.lon), {"units": "degrees_east"}),
                },
                attrs={"title": "icefloe demo: monthly files of daily data", "polygon": p},
            )
            path = root / f"polygon_{p:03d}" / f"{year}-{m:02d}.nc"
            path.parent.mkdir(parents=True, exist_ok=True)
            encoding: dict[str, dict[str, Any]] = {
                "DIC": {"chunksizes": (days, 8, 8), "zlib": True, "complevel": 4, "shuffle": True},
                "time": {"units": f"days since {first}", "dtype": "int64"},
            }
            ds.to_netcdf(path, engine="h5netcdf", encoding=encoding)
            out.append(path)
    return out


def monthly_spec(source: Path, repo: Path, name: str = "demo-months") -> str:
    """The spec of a monthly archive: its time axis is rectilinear, one chunk per file."""
    return (
        f"name: {name}\n"
        f"source:\n  url: file://{source.resolve()}/\n"
        f'  pattern: "polygon_{{polygon:d}}/*.nc"\n'
        f"concat: [time]\n"
        f"rectilinear: [time]\n"
        f"repo:\n  url: file://{repo.resolve()}\n"
    )
