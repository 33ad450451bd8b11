"""Reports in the Prefect UI: a Markdown summary and a table of quarantined objects."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from lib.report import RunSummary
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
