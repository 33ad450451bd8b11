"""The ``build_cube`` flow: parse every object of the source into a new snapshot of the cube."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.update_cube import update_cube


@flow(name="build_cube", log_prints=True)
def build_cube(spec: str) -> dict[str, Any]:
    """Build the cube from scratch: every object is parsed, validated and placed anew.

    The new cube lands as a new snapshot on main's history; earlier snapshots stay readable.

    Parameters
    ----------
    spec
        Path of the cube's spec file, or the spec's YAML text.
    """
    return update_cube(spec, "build")
