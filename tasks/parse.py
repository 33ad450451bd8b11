"""Parsing a batch of objects over the spec's executor."""

from __future__ import annotations

from prefect import get_run_logger, task

from lib.runs import CubeRun
from tasks import RETRYING


@task(name="parse-batch", task_run_name="parse-batch-{batch}", **RETRYING)
def parse_batch(run: CubeRun, batch: int) -> dict[str, int]:
    """Parse one batch into the run's spool; objects the store failed to serve make the task retry."""
    done = run.parse(batch)
    get_run_logger().info("batch %d: %d parsed, %d refused", batch + 1, done["parsed"], done["failed"])
    return done
