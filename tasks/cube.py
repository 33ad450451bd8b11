"""Opening the cube and discovering what the source holds."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from lib.runs import CubeRun
from tasks import RETRYING


@task(name="open-cube", **RETRYING)
def open_cube(run: CubeRun) -> dict[str, Any]:
    """Open the repository; resume unfinished staging work or reset staging to main."""
    opened = run.open()
    how = (
        "resuming unfinished work on staging"
        if opened["resumed"]
        else ("building a new cube" if opened["fresh"] else "starting from main")
    )
    get_run_logger().info("repository %s: main at %s, %s", run.spec.repo.url, opened["main"] or "-", how)
    return opened


@task(name="discover-objects", **RETRYING)
def discover_objects(run: CubeRun) -> dict[str, int]:
    """List the source, match the pattern and sort objects against the ledger."""
    found = run.discover()
    s = run.summary
    get_run_logger().info(
        "discovered %d object(s): %d pending, %d unchanged, %d changed",
        found["discovered"],
        found["pending"],
        s.unchanged,
        len(s.changed),
    )
    return found
