"""Validating parsed objects against the cube and laying out the axes."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from lib.runs import CubeRun
from tasks import ONCE


@task(name="plan-cube", **ONCE)
def plan_cube(run: CubeRun) -> dict[str, Any]:
    """Fix the schema, quarantine what does not fit, place the rest."""
    planned = run.plan()
    logger = get_run_logger()
    logger.info(
        "plan: %d object(s) to place, %d quarantined, dims %s",
        planned["accepted"],
        planned["quarantined"],
        planned["dims"],
    )
    for url, reason in list(run.plan_.quarantined.items())[:50] if run.plan_ else []:
        logger.warning("quarantined %s: %s", url, reason)
    return planned
