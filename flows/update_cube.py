"""The body shared by ``build_cube`` and ``ingest_objects``: one update of a cube, each step a task.

The steps and their order are :mod:`lib.pipeline`'s; this module maps each step to its Prefect task and
reports progress (the command's bars, a progress artifact in the UI). A run that loses a race to
another writer (a compare-and-swap failed) re-plans from the new tip.
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
from lib.pipeline import Step, run_steps
from lib.report import Operation
from lib.runs import CubeRun
from lib.spec import load_spec
from tasks.check import check_staging
from tasks.commit import commit_batch, prepare_staging
from tasks.cube import discover_objects, open_cube
from tasks.nativize import nativize_staging
from tasks.parse import parse_batch
from tasks.plan import plan_cube
from tasks.publish import publish_cube
from tasks.rechunk import rechunk_staging
from tasks.report import report_coverage, report_run

__all__ = ["update_cube"]

ATTEMPTS = 3
COVERAGE_MIN = 100  # runs that place fewer objects leave the coverage map to the sweep, unless asked

TASKS: dict[Step, Any] = {
    Step.OPEN: open_cube,
    Step.DISCOVER: discover_objects,
    Step.PARSE: parse_batch,
    Step.PLAN: plan_cube,
    Step.PREPARE: prepare_staging,
    Step.COMMIT: commit_batch,
    Step.NATIVIZE: nativize_staging,
    Step.CHECK: check_staging,
    Step.RECHUNK: rechunk_staging,
    Step.PUBLISH: publish_cube,
}


class TaskSteps:
    """Performs each step as its task, and tells the watchers how far the run is."""

    def __init__(self, run: CubeRun) -> None:
        self.run = run
        self.artifact: Any = None

    def _share(self, done: int) -> float:
        total = max(len(self.run.batches) + (len(self.run.plan_.batches) if self.run.plan_ else 0), 1)
        return 100.0 * done / total

    def __call__(self, step: Step, *args: Any) -> Any:
        run = self.run
        if step == Step.PARSE and args[0] == 0:
            self.artifact = create_progress_artifact(
                0.0, description=f"icefloe {run.operation}: parsing and committing"
            )
            progress.start("parse", sum(map(len, run.batches)))
        if step == Step.COMMIT and args[0] == 0:
            progress.start("commit", run.plan_.accepted if run.plan_ else 0)
        size = len(run.batches[args[0]]) if step == Step.PARSE else 0
        result = TASKS[step](run, *args)
        if step == Step.PARSE:
            progress.advance("parse", size)
            self._update(args[0] + 1)
        elif step == Step.COMMIT and run.plan_ is not None:
            progress.advance("commit", len(run.plan_.batches[args[0]]))
            self._update(len(run.batches) + args[0] + 1)
        elif step == Step.PUBLISH and self.artifact is not None:
            update_progress_artifact(self.artifact, 100.0)
        return result

    def _update(self, done: int) -> None:
        if self.artifact is not None:
            update_progress_artifact(self.artifact, self._share(done))


def update_cube(
    spec_source: str,
    operation: Operation,
    urls: list[str] | None = None,
    keep: bool = False,
    coverage: bool | None = None,
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
            run = CubeRun(spec, operation, run_id, flow_run=flow_run.get_id(), urls=urls, keep=keep)
            try:
                run_steps(run, TaskSteps(run))
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
    if coverage is None:  # a run that moved nothing leaves the last map standing
        coverage = summary.published and (operation == "build" or summary.ingested >= COVERAGE_MIN)
    if coverage:
        report_coverage(spec)
    if summary.error:
        raise PublishBlocked(summary.error, summary.to_json())
    return summary.to_json()
