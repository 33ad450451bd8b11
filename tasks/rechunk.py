"""Native copies: chosen variables rewritten into native chunks of the spec's choosing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from lib.copies import size_text
from lib.rechunk import rechunk_cube
from lib.runs import CubeRun
from lib.spec import Spec
from tasks import RETRYING


def _log_copies(copies: list[dict[str, Any]]) -> None:
    logger = get_run_logger()
    for c in copies:
        logger.info(
            "native copy %s: %d of %d unit(s) written, %s, %.0f%% current",
            c["name"],
            c["units"],
            c["total_units"],
            size_text(c["bytes"]),
            100 * c["coverage"],
        )
        for problem in c["problems"]:
            logger.error("native copy check: %s", problem)


@task(name="rechunk-staging", **RETRYING)
def rechunk_staging(run: CubeRun) -> list[dict[str, Any]]:
    """Bring the cube's native copies along with what this run changed, and compare them with it."""
    copies = run.rechunk()
    _log_copies(copies)
    return copies


@task(name="rechunk-cube", **RETRYING)
def rechunk_published(
    spec: Spec, names: list[str] | None, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, Any]:
    """Create or bring up to date the spec's native copies and publish them (resumes after a crash)."""
    run_id = str(flow_run.get_id() or "rechunk")
    done = rechunk_cube(spec, run_id, flow_run=flow_run.get_id(), names=names, progress=progress)
    _log_copies(done["copies"])
    create_table_artifact(
        [
            {
                "copy": c["name"],
                "units written": c["units"],
                "units": c["total_units"],
                "MiB": round(c["bytes"] / 2**20, 1),
                "current": f"{100 * c['coverage']:.0f}%",
            }
            for c in done["copies"]
        ],
        key=f"{spec.name}-rechunk",
        description=f"native copies of {spec.name}",
    )
    return done
