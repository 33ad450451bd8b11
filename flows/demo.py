"""``icefloe demo``: a small ensemble archive, its cube, a quarantined file, and how to open it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib.demo import DemoShape, demo_spec, write_bad_file, write_demo_archive
from lib.errors import IcefloeError, PublishBlocked

__all__ = ["open_snippet", "run_demo"]

MARKER = ".icefloe-demo"


def open_snippet(repo: Path, source: Path) -> str:
    """Three lines of Python that open the cube with xarray."""
    return (
        "import icechunk, xarray as xr\n"
        f"repo = icechunk.Repository.open(icechunk.local_filesystem_storage({str(repo)!r}), "
        f"authorize_virtual_chunk_access=icechunk.containers_credentials("
        f"{{{('file://' + str(source) + '/')!r}: icechunk.credentials.LocalFileSystemAccess}}))\n"
        "cube = xr.open_zarr(repo.readonly_session('main').store, consolidated=False)"
    )


def _fresh_directory(directory: Path) -> None:
    if directory.exists() and any(directory.iterdir()) and not (directory / MARKER).exists():
        raise IcefloeError(f"{directory} exists and is not an icefloe demo directory; pass --dir with a new path")
    for sub in ("archive", "cube"):
        shutil.rmtree(directory / sub, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("made by `icefloe demo`; safe to delete\n")


def run_demo(directory: Path, console: Any, run_flow: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Write the archive, build its cube with the ``build_cube`` flow, and report.

    ``console`` (a rich console, or None for ``--json``) receives the human output.
    """
    from flows.build_cube import build_cube

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
    try:
        summary = run_flow(build_cube, console is not None, spec=spec_path.read_text())
    except PublishBlocked as e:
        raise IcefloeError(f"the demo build did not publish: {e}") from e
    if console is not None:
        from flows.cli import _summary_table

        _summary_table(summary, "demo build")
    snippet = open_snippet(repo.resolve(), source.resolve())
    say("[bold]3.[/] open the cube with xarray:\n")
    if console is not None:
        console.print(snippet, soft_wrap=True, markup=False, highlight=False)
    return {"dir": str(directory), "spec": str(spec_path), "build": summary, "open": snippet}
