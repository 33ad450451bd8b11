"""Writing to the staging branch: the prepare commit and one commit per batch."""

from __future__ import annotations

from prefect import get_run_logger, task

from lib.runs import CubeRun
from tasks import RETRYING


@task(name="prepare-staging", **RETRYING)
def prepare_staging(run: CubeRun) -> str | None:
    """Create or grow the cube's arrays and record quarantines, in one staging commit."""
    snapshot = run.prepare()
    if snapshot:
        get_run_logger().info("staging prepared at %s", snapshot)
    return snapshot


@task(name="commit-batch", task_run_name="commit-batch-{batch}", **RETRYING)
def commit_batch(run: CubeRun, batch: int) -> int:
    """Place one batch's references and ledger rows in one staging commit."""
    refs = run.commit(batch)
    get_run_logger().info("batch %d committed to staging: %d refs", batch + 1, refs)
    return refs
