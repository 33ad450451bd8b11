"""Reports in the Prefect UI: a Markdown summary and a table of quarantined objects."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from lib.report import RunSummary
from lib.spec import Spec
from tasks import ONCE


def _key(name: str, kind: str) -> str:
    return f"{name}-{kind}".lower().replace("_", "-")[:100]


@task(name="report-run", **ONCE)
def report_run(summary: RunSummary, cube: str) -> None:
    """Publish the run's summary (and its quarantined objects) as artifacts."""
    create_markdown_artifact(
        summary.markdown(), key=_key(cube, "summary"), description=f"icefloe {summary.operation} of {cube}"
    )
    if summary.quarantined:
        create_table_artifact(
            summary.quarantined,
            key=_key(cube, "quarantined"),
            description="objects refused in this run, with the reason",
        )


@task(name="report-coverage", **ONCE)
def report_coverage(spec: Spec) -> dict[str, Any]:
    """Draw the cube's coverage map into the run's artifacts: which cells and steps are in, what is not."""
    from lib.coverage import coverage_markdown, coverage_png, measure_coverage
    from lib.repository import open_repository

    repo = open_repository(spec)
    if repo is None:
        return {}
    cov = measure_coverage(repo, spec)
    image = coverage_png(cov, f"{spec.name}: share of the axis present")
    create_markdown_artifact(
        coverage_markdown(cov, image),
        key=_key(spec.name, "coverage"),
        description=f"coverage of {spec.name} after this run",
    )
    return cov.totals
