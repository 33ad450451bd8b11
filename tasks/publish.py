"""Publishing: fast-forward main to the checked snapshot."""

from __future__ import annotations

from prefect import get_run_logger, task

from lib.runs import CubeRun
from tasks import ONCE


@task(name="publish-cube", **ONCE)
def publish_cube(run: CubeRun) -> str | None:
    """Compare-and-swap main to the checked staging snapshot; returns main's tip."""
    tip = run.publish()
    get_run_logger().info("main is at %s%s", tip, "" if run.summary.published else " (nothing new)")
    return tip
