"""A cube's Prefect deployments, built in code (``icefloe serve``) and kept in step with
``deployments/prefect.yaml`` (a test compares them).

For a cube named ``N``:

* ``N-build`` -- ``build_cube``, run by hand;
* ``N-ingest`` -- ``ingest_objects``, triggered by ``icefloe.object.created`` events whose resource id
  is under the source prefix; it passes no URLs: each run drains everything pending;
* ``N-sweep`` -- the same flow on a schedule, the reconciler for lost events; it also draws the
  coverage map (event-triggered runs of a few objects leave it to the sweep);
* ``N-maintain`` -- ``maintain_repository`` on a schedule.

Writers run one at a time: a concurrency limit of 1 per deployment with the ENQUEUE strategy (and,
between deployments served on one machine, the cube's writer lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from lib.events import CREATED_EVENT
from lib.spec import Spec

__all__ = ["DeploymentPlan", "cube_deployments", "deployment_plans", "serve_deployments"]


@dataclass(frozen=True)
class DeploymentPlan:
    """What one deployment is: plain values shared by the code path and the YAML test."""

    name: str
    entrypoint: str
    parameters: dict[str, Any]
    cron: str | None = None
    trigger: dict[str, Any] | None = None
    concurrency: int | None = None
    description: str = ""


def deployment_plans(
    spec: Spec,
    spec_path: Path | str,
    *,
    sweep_cron: str = "*/15 * * * *",
    maintain_cron: str = "0 3 * * 0",
    older_than_days: float = 30.0,
    threshold: int = 1,
    within: int = 0,
) -> list[DeploymentPlan]:
    """The four deployments of a cube."""
    params = {"spec": str(spec_path)}
    trigger = {
        "expect": [CREATED_EVENT],
        "match": {"prefect.resource.id": f"{spec.source.url}*"},
        "threshold": threshold,
        "within": within,
    }
    return [
        DeploymentPlan(
            f"{spec.name}-build",
            "flows/build_cube.py:build_cube",
            params,
            concurrency=1,
            description=f"Rebuild {spec.name} from every object of {spec.source.url}",
        ),
        DeploymentPlan(
            f"{spec.name}-ingest",
            "flows/ingest_objects.py:ingest_objects",
            params,
            trigger=trigger,
            concurrency=1,
            description=f"Ingest new objects of {spec.source.url} as events announce them",
        ),
        DeploymentPlan(
            f"{spec.name}-sweep",
            "flows/ingest_objects.py:ingest_objects",
            {**params, "coverage": True},
            cron=sweep_cron,
            concurrency=1,
            description="Ingest whatever is pending, whether or not an event said so",
        ),
        DeploymentPlan(
            f"{spec.name}-maintain",
            "flows/maintain_repository.py:maintain_repository",
            {**params, "older_than_days": older_than_days},
            cron=maintain_cron,
            concurrency=1,
            description="Expire old snapshots and collect garbage",
        ),
    ]


def _deployment_arguments(plans: list[DeploymentPlan]) -> list[tuple[Any, dict[str, Any]]]:
    """For each plan: its flow, and the keyword arguments that make the flow a deployment."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.events import DeploymentEventTrigger
    from prefect.types.entrypoint import EntrypointType

    from flows.build_cube import build_cube
    from flows.ingest_objects import ingest_objects
    from flows.maintain_repository import maintain_repository

    flows: dict[str, Any] = {
        "build_cube": build_cube,
        "ingest_objects": ingest_objects,
        "maintain_repository": maintain_repository,
    }
    out = []
    for plan in plans:
        triggers = None
        if plan.trigger is not None:
            triggers = [
                DeploymentEventTrigger(
                    name=f"{plan.name} on new objects",
                    expect=set(plan.trigger["expect"]),
                    match=plan.trigger["match"],
                    threshold=plan.trigger["threshold"],
                    within=plan.trigger["within"],
                )
            ]
        concurrency = None
        if plan.concurrency is not None:
            concurrency = ConcurrencyLimitConfig(
                limit=plan.concurrency, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
            )
        arguments = {
            "name": plan.name,
            "parameters": plan.parameters,
            "cron": plan.cron,
            "triggers": triggers,
            "concurrency_limit": concurrency,
            "description": plan.description,
            "tags": ["icefloe"],
            "entrypoint_type": EntrypointType.MODULE_PATH,  # runs from any directory: the flows are installed
        }
        out.append((flows[plan.entrypoint.rsplit(":", 1)[1]], arguments))
    return out


def cube_deployments(plans: list[DeploymentPlan]) -> list[Any]:
    """Prefect runner deployments for the plans (what ``prefect deploy`` would register)."""
    return [flow.to_deployment(**arguments) for flow, arguments in _deployment_arguments(plans)]


def serve_deployments(plans: list[DeploymentPlan], poll: float = 10.0, wake: bool = True) -> None:
    """Register the plans' deployments and run their flow runs in this process's runner until stopped.

    The runner is given the flows themselves (not just the deployments), so it starts each run from
    the flow in memory -- through :mod:`flows.services.warm`'s fork server when that is in use --
    instead of a ``python -m prefect.engine`` that imports everything again. With ``wake``, a run
    starts as soon as its creation's event arrives (:mod:`flows.services.wake`); the runner's own
    polls, ``poll`` seconds apart, catch the rest.
    """
    import asyncio

    from prefect.runner import Runner

    runner = Runner(name="icefloe", pause_on_shutdown=True, query_seconds=poll)
    deployment_ids = [
        cast(UUID, runner.add_flow(flow, **arguments))  # called outside an event loop: the id itself
        for flow, arguments in _deployment_arguments(plans)
    ]

    async def serve() -> None:
        waker = None
        if wake:
            from flows.services.wake import wake_on_flow_runs

            waker = asyncio.create_task(wake_on_flow_runs(runner, deployment_ids))
        try:
            await runner.start()
        finally:
            if waker is not None:
                waker.cancel()

    asyncio.run(serve())
