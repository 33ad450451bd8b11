"""Checking the staging snapshot before it may be published."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from lib.runs import CubeRun
from tasks import RETRYING


@task(name="check-staging", **RETRYING)
def check_staging(run: CubeRun) -> list[dict[str, Any]]:
    """Structural checks and the spot check; files with findings are taken back out of staging."""
    findings = run.check()
    logger = get_run_logger()
    for finding in findings:
        log = logger.error if finding["scope"] == "cube" else logger.warning
        log("%s check: %s", finding["check"], finding["message"])
    if not findings:
        logger.info("checks passed")
    return findings
