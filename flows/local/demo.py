"""``icefloe demo``: a small ensemble archive, its cube, a quarantined file, and how to open it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib.errors import IcefloeError, PublishBlocked
from lib.local.archive import (
    DemoShape,
    demo_spec,
    monthly_spec,
    step_path,
    write_bad_file,
    write_demo_archive,
    write_monthly_archive,
    write_step,
)
from lib.spec import Spec, load_spec

__all__ = ["open_snippet", "run_demo", "run_s3_demo"]

MARKER = ".icefloe-demo"


def open_snippet(repo: Path, source: Path, rectilinear: bool = False) -> str:
    """A few lines of Python that open the cube with xarray (a cube with rectilinear axes needs
    Zarr's option for them turned on first)."""
    return (
        "import icechunk, xarray as xr\n"
        + ("import zarr; zarr.config.set({'array.rectilinear_chunks': True})\n" if rectilinear else "")
        + f"repo = icechunk.Repository.open(icechunk.local_filesystem_storage({str(repo)!r}), "
        f"authorize_virtual_chunk_access=icechunk.containers_credentials("
        f"{{{('file://' + str(source) + '/')!r}: icechunk.credentials.LocalFileSystemAccess}}))\n"
        "cube = xr.open_zarr(repo.readonly_session('main').store, consolidated=False)"
    )


def _fresh_directory(directory: Path) -> None:
    if directory.exists() and any(directory.iterdir()) and not (directory / MARKER).exists():
        raise IcefloeError(f"{directory} exists and is not an icefloe demo directory; pass --dir with a new path")
    for sub in ("archive", "cube", "months", "months-cube"):
        shutil.rmtree(directory / sub, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("made by `icefloe demo`; safe to delete\n")


def _cell(path: Path) -> tuple[int, int]:
    """(polygon, month) of a demo tile path."""
    return int(path.parent.parent.name.split("_")[1]), int(path.parent.name.split("_")[1])


def _run(run_flow: Callable[..., dict[str, Any]], flow: Any, console: Any, spec: Path, title: str) -> dict[str, Any]:
    try:
        summary = run_flow(flow, console is not None, spec=spec.read_text())
    except PublishBlocked as e:
        raise IcefloeError(f"the {title} did not publish: {e}") from e
    if console is not None:
        from flows.tables import summary_table

        summary_table(summary, title)
    return summary


def run_demo(directory: Path, console: Any, run_flow: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Write the archive, build its cube (``build_cube``), land new time steps and ingest them
    (``ingest_objects``), and report.

    ``console`` (a rich console, or None for ``--json``) receives the human output.
    """
    from flows.build_cube import build_cube
    from flows.ingest_objects import ingest_objects
    from flows.rechunk_variables import rechunk_variables

    def say(text: str) -> None:
        if console is not None:
            console.print(text)

    _fresh_directory(directory)
    source, repo = directory / "archive", directory / "cube"
    shape = DemoShape()
    say(
        f"[bold]1.[/] writing a {shape.polygons} polygon x {shape.months} month x {shape.steps} step ensemble "
        f"({shape.files} netCDF-4 tiles) to {source}"
    )
    write_demo_archive(source, shape)
    bad = write_bad_file(source, shape)
    say(f"   plus one bad tile, {bad.relative_to(source)}, whose variables are chunked differently")
    spec_path = directory / "demo.yaml"
    spec_path.write_text(demo_spec(source, repo))
    say(f"[bold]2.[/] building the cube described by {spec_path}")
    summary = _run(run_flow, build_cube, console, spec_path, "demo build")
    spec_path.write_text(spec_path.read_text() + COPY)
    say(
        "[bold]3.[/] a native copy of DIC chunked for time series (a point's whole series in one chunk), beside "
        f"the virtual arrays in the same repository: `icefloe rechunk {spec_path}`"
    )
    rechunked = run_flow(rechunk_variables, console is not None, spec=spec_path.read_text())
    for c in rechunked["copies"]:
        say(
            f"   native copy {c['name']}: {c['units']} unit(s) written, {c['bytes'] / 2**10:.0f} KiB, "
            "compared bit for bit with the virtual data"
        )
    # the next time step of every tile; the bad tile's slot gets a corrected file, and since its etag
    # changed, the ingest retries it
    new = [step_path(source, p, m, shape.steps) for p in range(shape.polygons) for m in range(1, shape.months + 1)]
    for path in new:
        write_step(path, *_cell(path), shape.steps, shape)
    say(
        f"[bold]4.[/] {len(new) - 1} new time steps and a corrected {bad.relative_to(source)} land in the archive; "
        "ingesting them through staging, checks and publish (the native copy comes along)"
    )
    ingest = _run(run_flow, ingest_objects, console, spec_path, "demo ingest")
    months, months_repo = directory / "months", directory / "months-cube"
    write_monthly_archive(months)
    months_spec = directory / "demo-months.yaml"
    months_spec.write_text(monthly_spec(months, months_repo))
    say(
        f"[bold]5.[/] monthly files of daily data (31, 29 and 31 days, one chunk each) in {months}: files of "
        f"unequal length land on a rectilinear time axis ({months_spec} says `rectilinear: \\[time]`)"
    )
    monthly = _run(run_flow, build_cube, console, months_spec, "demo months build")
    snippet = open_snippet(repo.resolve(), source.resolve())
    speed = point_series_speedup(load_spec(spec_path), "dic_ts", "DIC")
    say(
        f"[bold]6.[/] one point's time series of DIC ({speed['values']} values): {speed['virtual_chunks']} chunk reads "
        f"in {speed['virtual_ms']:.1f} ms through the virtual cube, {speed['native_chunks']} in "
        f"{speed['native_ms']:.1f} ms through the native copy: {speed['speedup']:.0f}x faster"
    )
    say("[bold]7.[/] open the cube with xarray (and its native copy with group='dic_ts'):\n")
    if console is not None:
        console.print(snippet, soft_wrap=True, markup=False, highlight=False)
    months_snippet = open_snippet(months_repo.resolve(), months.resolve(), rectilinear=True)
    say("\n   and the monthly cube (its rectilinear time axis needs Zarr's option for it):\n")
    if console is not None:
        console.print(months_snippet, soft_wrap=True, markup=False, highlight=False)
    return {
        "dir": str(directory),
        "spec": str(spec_path),
        "build": summary,
        "ingest": ingest,
        "open": snippet,
        "months": {"spec": str(months_spec), "build": monthly, "open": months_snippet},
        "copy": {"rechunk": rechunked, "point_series": speed},
    }


COPY = "native_copies:\n  - {name: dic_ts, variables: [DIC], chunks: {month: 4, time: 8, lat: 2, lon: 2}}\n"


def point_series_speedup(spec: Spec, copy: str, variable: str, repeats: int = 5) -> dict[str, Any]:
    """Read one point's full time series (every polygon's first, every month, every step) through the
    virtual arrays and through the native copy, best of ``repeats``, as a reader would (xarray)."""
    import time

    import numpy as np
    import xarray as xr

    from lib.repository import open_repository

    repo = open_repository(spec)
    assert repo is not None
    store = repo.readonly_session(branch=spec.repo.branch).store

    def best(group: str | None) -> tuple[float, np.ndarray, int]:
        times, values = [], np.zeros(0)
        for _ in range(repeats):
            ds = xr.open_zarr(store, group=group, consolidated=False, chunks=None)
            start = time.perf_counter()
            values = ds[variable].isel(polygon=0, depth=0, lat=8, lon=8).values
            times.append(time.perf_counter() - start)
        chunks = ds[variable].encoding["chunks"]
        shape = ds[variable].shape
        reads = int(np.prod([-(-s // c) for s, c in zip(shape[1:3], chunks[1:3], strict=True)]))
        return min(times), values, reads

    virtual_s, virtual, virtual_chunks = best(None)
    native_s, native, native_chunks = best(copy)
    assert virtual.tobytes() == native.tobytes(), "the native copy differs from the virtual cube"
    return {
        "values": int(virtual.size),
        "virtual_ms": 1000 * virtual_s,
        "native_ms": 1000 * native_s,
        "virtual_chunks": virtual_chunks,
        "native_chunks": native_chunks,
        "speedup": virtual_s / max(native_s, 1e-9),
    }


def run_s3_demo(directory: Path, console: Any) -> dict[str, Any]:
    """The event path on loopback: SeaweedFS → filer webhook → bridge → Prefect event → served ingest."""
    import json

    from flows.local.stack import LocalStack, wait_for
    from lib.ledger import INGESTED, read_rows
    from lib.repository import open_repository
    from lib.spec import load_spec

    def say(text: str) -> None:
        if console is not None:
            console.print(text)

    _fresh_directory(directory)
    shutil.rmtree(directory / "stack", ignore_errors=True)
    shape = DemoShape()
    with LocalStack(directory / "stack", prefect_api=os.environ.get("PREFECT_API_URL")) as stack:
        if stack.api is None:
            say("[bold]1.[/] starting a Prefect server (UI at the address below)")
            stack.start_prefect()
        say(f"   Prefect API: {stack.api}")
        s3 = stack.start_s3("/buckets/archive/demo/")
        stack.start_bridge()
        say(
            f"[bold]2.[/] SeaweedFS S3 at {s3.endpoint}; its filer webhook feeds `icefloe bridge webhook` "
            f"on port {stack.bridge_port}"
        )
        local = directory / "archive"
        files = write_demo_archive(local, shape)
        client = s3.client()
        for f in files:
            client.upload_file(str(f), "archive", f"demo/{f.relative_to(local)}")  # type: ignore[attr-defined]
        spec_path = directory / "demo-s3.yaml"
        spec_path.write_text(
            f"name: demo-s3\nsource:\n  url: s3://archive/demo/\n"
            f'  pattern: "polygon_{{polygon:d}}/month_{{month:d}}/step_*.nc"\n  storage: {s3.storage_yaml()}\n'
            f"concat: [time]\nrepo:\n  url: s3://cubes/demo-s3\n"
        )
        say(f"[bold]3.[/] uploaded {len(files)} tiles to s3://archive/demo/; building the cube in s3://cubes/demo-s3")
        built = stack.icefloe("build", str(spec_path), "--json")
        if built.returncode not in (0, 3):
            raise IcefloeError(f"the S3 demo build failed: {built.stdout or built.stderr[-2000:]}")
        summary = json.loads(built.stdout)
        say(f"   {summary['ingested']} objects in the cube, dims {summary['dims']}")
        say("[bold]4.[/] serving the cube's deployments (build, event-triggered ingest, sweep, maintain)")
        stack.serve(spec_path)
        wait_for("the ingest deployment's trigger", lambda: stack.trigger_ready("ingest_objects", "demo-s3-ingest"))
        spec = load_spec(spec_path)
        os.environ.update(s3.env())
        new = []
        for p in range(shape.polygons):
            for m in range(1, shape.months + 1):
                path = write_step(
                    local / f"polygon_{p:03d}" / f"month_{m:02d}" / f"step_{shape.steps:04d}.nc",
                    p,
                    m,
                    shape.steps,
                    shape,
                )
                key = f"demo/{path.relative_to(local)}"
                client.upload_file(str(path), "archive", key)  # type: ignore[attr-defined]
                new.append(f"s3://archive/{key}")
        say(f"[bold]5.[/] uploaded {len(new)} new tiles (one more time step each); waiting for them on main")

        def on_main() -> bool:
            repo = open_repository(spec)
            assert repo is not None
            rows = read_rows(repo.readonly_session(branch="main").store)
            return set(new) <= {r.url for r in rows if r.status == INGESTED}

        seconds = wait_for("the new tiles on main", on_main, timeout=300, poll=0.5)
        runs = stack.flow_runs("ingest_objects", "demo-s3-ingest")
        if not runs:
            raise IcefloeError(
                "the new tiles reached main, but no run of the demo-s3-ingest deployment was triggered: the "
                "event path (filer webhook → bridge → Prefect event → trigger) did not fire, and the sweep "
                f"picked them up instead; see the bridge's log in {directory / 'stack'}"
            )
        say(
            f"   on main {seconds:.1f} s after the uploads began (PUT → webhook → bridge → event → "
            f"{len(runs)} triggered flow run(s) → staging → checks → main)"
        )
        snippet = (
            "import icechunk, xarray as xr  # with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY of the demo's S3\n"
            f"repo = icechunk.Repository.open(icechunk.s3_storage(bucket='cubes', prefix='demo-s3', "
            f"endpoint_url={s3.endpoint!r}, allow_http=True, force_path_style=True, from_env=True), "
            f"authorize_virtual_chunk_access=icechunk.containers_credentials("
            f"{{'s3://archive/demo/': icechunk.s3_from_env_credentials()}}))\n"
            "cube = xr.open_zarr(repo.readonly_session('main').store, consolidated=False)"
        )
        say("[bold]6.[/] the cube opens with (while this S3 server runs; it stops with the demo):\n")
        if console is not None:
            console.print(snippet, soft_wrap=True, markup=False, highlight=False)
        return {
            "dir": str(directory),
            "build": summary,
            "new_objects": new,
            "seconds_to_main": seconds,
            "triggered_runs": [str(r.id) for r in runs],
            "open": snippet,
        }
