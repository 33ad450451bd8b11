"""Storing small referenced coordinates natively."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.runtime import flow_run

from lib.runs import CubeRun, nativize_cube
from lib.spec import Spec
from tasks import RETRYING


@task(name="nativize-staging", **RETRYING)
def nativize_staging(run: CubeRun) -> list[str]:
    """With ``variables.nativize``: rewrite the staged cube's small referenced coordinates natively."""
    done = run.nativize()
    if done:
        get_run_logger().info("stored natively: %s", ", ".join(done))
    return done


@task(name="nativize-cube", **RETRYING)
def nativize_published(spec: Spec, variables: list[str] | None) -> dict[str, Any]:
    """Rewrite an existing cube's small referenced coordinates natively and publish it."""
    run_id = str(flow_run.get_id() or "nativize")
    done = nativize_cube(spec, run_id, flow_run=flow_run.get_id(), variables=variables)
    get_run_logger().info("stored natively: %s", ", ".join(done["nativized"]) or "nothing to do")
    return done
