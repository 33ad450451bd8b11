"""The steps shared by ``build_cube`` and ``ingest_objects``: one update of a cube, as tasks.

discover → parse (per batch) → plan → prepare → commit (per batch) → check → publish. A run that
loses a race to another writer (a compare-and-swap failed) re-plans from the new tip.
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run

from flows import progress
from lib.errors import ConflictError, PublishBlocked
from lib.locks import writer_lock
from lib.runs import CubeRun
from lib.spec import load_spec
from tasks.check import check_staging
from tasks.commit import commit_batch, prepare_staging
from tasks.cube import discover_objects, open_cube
from tasks.nativize import nativize_staging
from tasks.parse import parse_batch
from tasks.plan import plan_cube
from tasks.publish import publish_cube
from tasks.report import report_coverage, report_run

__all__ = ["update_cube"]

ATTEMPTS = 3


def _steps(run: CubeRun) -> None:
    open_cube(run)
    found = discover_objects(run)
    batches = found["batches"]
    artifact = create_progress_artifact(0.0, description=f"icefloe {run.operation}: parsing and committing")
    steps = max(2 * batches, 1)
    progress.start("parse", found["pending"])
    for b in range(batches):
        parse_batch(run, b)
        progress.advance("parse", len(run.batches[b]))
        update_progress_artifact(artifact, 100.0 * (b + 1) / steps)
    plan_cube(run)
    prepare_staging(run)
    planned = run.plan_.batches if run.plan_ else []
    progress.start("commit", run.plan_.accepted if run.plan_ else 0)
    for b, urls in enumerate(planned):
        commit_batch(run, b)
        progress.advance("commit", len(urls))
        update_progress_artifact(artifact, 100.0 * (batches + b + 1) / steps)
    nativize_staging(run)
    check_staging(run)
    publish_cube(run)
    update_progress_artifact(artifact, 100.0)


def update_cube(
    spec_source: str, operation: str, urls: list[str] | None = None, replace: bool = False
) -> dict[str, Any]:
    """Run one update of the cube as tasks; returns the run's summary (the ``--json`` object).

    Raises
    ------
    PublishBlocked
        A cube-wide check failed or every object was quarantined; main did not move. The error
        carries the summary.
    """
    spec = load_spec(spec_source)
    logger = get_run_logger()
    run_id = str(flow_run.get_id() or uuid.uuid4())

    def waiting() -> None:
        logger.info("another icefloe writer holds %s; waiting for it to finish", spec.repo.url)

    with writer_lock(spec.repo.url, on_wait=waiting):
        for attempt in range(1, ATTEMPTS + 1):
            run = CubeRun(spec, operation, run_id, flow_run=flow_run.get_id(), urls=urls, replace=replace)
            try:
                _steps(run)
                summary = run.finish()
                break
            except ConflictError as e:
                if attempt == ATTEMPTS:
                    raise
                logger.warning("another writer moved the cube first (%s); re-planning from the new tip", e)
            except PublishBlocked as e:
                summary = run.finish(error=str(e))
                report_run(summary, spec.name)
                raise PublishBlocked(str(e), summary.to_json()) from None
            finally:
                run.close()
    report_run(summary, spec.name)
    if summary.published:  # a run that moved nothing leaves the last map standing
        report_coverage(spec)
    if summary.error:
        raise PublishBlocked(summary.error, summary.to_json())
    return summary.to_json()
