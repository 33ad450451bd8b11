"""Tiny real files made on the fly, spec writers, and ways to run and open a cube in tests."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from lib.pipeline import Step, run_steps
from lib.report import RunSummary
from lib.runs import CubeRun
from lib.spec import Spec, load_spec

DAY = np.timedelta64(1, "D")
EPOCH = np.datetime64("2000-01-01", "ns")


def dataset(
    times: list[int] | int,
    *,
    seed: int = 0,
    shape: tuple[int, int] = (4, 6),
    dtype: str = "f4",
    scalar: float | None = None,
    attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """A small (time, lat, lon) dataset with the given day offsets from 2000-01-01."""
    steps = [times] if isinstance(times, int) else list(times)
    rng = np.random.default_rng(abs(seed + 1000 * (steps[0] if steps else 0)))
    data = {
        "tas": (
            ("time", "lat", "lon"),
            rng.standard_normal((len(steps), *shape)).astype(dtype),
            {"units": "K", "long_name": "air temperature"},
        )
    }
    if scalar is not None:
        data["height"] = ((), np.float32(scalar), {"units": "m"})
    return xr.Dataset(
        data,
        coords={
            "time": ("time", EPOCH + np.array(steps) * DAY),
            "lat": ("lat", np.linspace(-1, 1, shape[0]).astype("f4"), {"units": "degrees_north"}),
            "lon": ("lon", np.linspace(0, 5, shape[1]).astype("f4"), {"units": "degrees_east"}),
        },
        attrs=attrs or {"title": "test"},
    )


def write_nc4(
    path: Path,
    ds: xr.Dataset,
    *,
    chunks: tuple[int, ...] | None = (1, 2, 3),
    complevel: int = 4,
    shuffle: bool = True,
    time_units: str | None = None,
    engine: str = "h5netcdf",
    encoding: dict[str, Any] | None = None,
) -> Path:
    """netCDF-4 with chunked, compressed data variables (or contiguous with ``chunks=None``)."""
    enc: dict[str, Any] = {}
    for name, var in ds.data_vars.items():
        if var.ndim == 0:
            continue
        if chunks is None:
            enc[name] = {"contiguous": True} if engine == "netcdf4" else {"chunksizes": None}
        else:
            enc[name] = {"chunksizes": chunks, "zlib": complevel > 0, "complevel": complevel, "shuffle": shuffle}
    if time_units:
        enc["time"] = {"units": time_units, "dtype": "int64"}
    for name, extra in (encoding or {}).items():
        enc.setdefault(name, {}).update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path, engine=engine, encoding=enc)
    return path


def write_nc3(path: Path, ds: xr.Dataset, fmt: str = "NETCDF3_CLASSIC") -> Path:
    """netCDF3 (classic or 64-bit offset) with time as the record (unlimited) dimension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(
        path,
        format=fmt,
        engine="netcdf4",
        unlimited_dims=["time"],
        encoding={"time": {"units": "days since 2000-01-01", "dtype": "int32"}},
    )
    return path


def spec_text(
    source: Path, repo: Path, pattern: str, *, concat: str = "[time]", extra: str = "", name: str = "test"
) -> str:
    return (
        f'name: {name}\nsource:\n  url: file://{source.resolve()}/\n  pattern: "{pattern}"\n'
        f"concat: {concat}\nrepo:\n  url: file://{repo.resolve()}\n"
        f"execution:\n  executor: threads\n  workers: 2\n  batch_size: 4\n{extra}"
    )


def make_spec(tmp: Path, pattern: str, **kw: Any) -> Spec:
    return load_spec(spec_text(tmp / "archive", tmp / "cube", pattern, **kw))


def run_cube(
    spec: Spec,
    operation: str = "build",
    urls: list[str] | None = None,
    keep: bool = False,
) -> RunSummary:
    """One update through every step, without Prefect (the flows call these same steps as tasks)."""
    from lib.errors import PublishBlocked

    run = CubeRun(spec, operation, str(uuid.uuid4()), urls=urls, keep=keep)
    try:
        try:
            run_steps(run)
        except PublishBlocked as e:
            return run.finish(error=str(e))
        return run.finish()
    finally:
        run.close()


def run_until(spec: Spec, step: Step, operation: str = "build") -> CubeRun:
    """A run taken through its steps up to and including ``step`` (the caller closes it)."""
    run = CubeRun(spec, operation, str(uuid.uuid4()))
    run_steps(run, until=step)
    return run


def open_files(paths: list[Path]) -> xr.Dataset:
    """Source files combined by their coordinates, as xarray reads them (the truth a cube is held to)."""
    return xr.open_mfdataset(
        sorted(paths), combine="by_coords", data_vars="minimal", compat="no_conflicts", join="outer"
    ).load()


def open_repo(spec: Spec) -> Any:
    from lib.repository import open_repository

    repo = open_repository(spec)
    assert repo is not None
    return repo


def read_cube(spec: Spec, branch: str = "main", snapshot: str | None = None) -> xr.Dataset:
    """The published cube, opened exactly as a reader would: Icechunk session + xr.open_zarr."""
    repo = open_repo(spec)
    session = repo.readonly_session(snapshot_id=snapshot) if snapshot else repo.readonly_session(branch=branch)
    return xr.open_zarr(session.store, consolidated=False, chunks=None)


def locations(spec: Spec) -> set[str]:
    return set(open_repo(spec).readonly_session(branch="main").all_virtual_chunk_locations())


def file_url(path: Path) -> str:
    return f"file://{os.path.abspath(path)}"


def icefloe_json(*args: str) -> tuple[int, dict[str, Any]]:
    """Run the ``icefloe`` command in this process with ``--json``: (exit code, the JSON object).

    The same entry point as the installed command, without a process start per call; flows run
    against the Prefect API in ``PREFECT_API_URL`` (the test session's server).
    """
    import contextlib
    import io
    import json

    from flows.cli import main

    out = io.StringIO()
    saved = dict(os.environ)
    try:
        with contextlib.redirect_stdout(out):
            main([*args, "--json"])
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    text = out.getvalue()
    assert text.count("\n") <= 1, text  # one JSON object on stdout, whatever happened
    return code, json.loads(text)
