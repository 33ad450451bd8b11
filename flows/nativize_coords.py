"""The ``nativize_coords`` flow: store an existing cube's small referenced coordinates natively."""

from __future__ import annotations

from typing import Any

from prefect import flow

from lib.locks import writer_lock
from lib.spec import load_spec
from tasks.nativize import nativize_published


@flow(name="nativize_coords")
def nativize_coords(spec: str, variables: list[str] | None = None) -> dict[str, Any]:
    """Rewrite small referenced coordinate variables as native chunks, in one commit on main.

    Afterwards opening the cube needs no request to the source files; later ingests load these
    variables natively from every new file.

    Parameters
    ----------
    spec
        Path of the cube's spec file, or the spec's YAML text.
    variables
        Exactly these variables (default: dimension coordinates and variables other variables name
        in their ``coordinates`` attribute, up to 16 MiB each).
    """
    loaded = load_spec(spec)
    with writer_lock(loaded.repo.url):
        return nativize_published(loaded, variables)
