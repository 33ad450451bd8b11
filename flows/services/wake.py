"""Start served flow runs when they are created, not at the runner's next poll.

A served runner finds its flow runs by polling the Prefect API (``--poll`` seconds apart), and every
poll is a write on the server (it marks the runner's deployments ready). Both cost an event-fed cube:
a run waits up to a poll before it starts, and on a server keeping its database in SQLite a poll
that commits while an automation is creating a flow run makes that creation fail with "database is
locked" and wait out the client's 2 s back-off (``benchmarks/RESULTS.md``, P6).

So ``icefloe serve`` also subscribes to the Prefect events of its deployments' flow runs and polls
once as soon as one is scheduled. The regular poll stays, rarer, as the safety net: for scheduled
runs whose start time comes later, runs waiting for a concurrency slot (Prefect retries them 30 s
later: a poll when the run before ends would not find them due), and whatever the event stream misses
while it reconnects. No other state wakes it: each poll is a write, and a write that lands while an
automation creates the next run is what costs the 2 s back-off above.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any
from uuid import UUID

__all__ = ["WAKE_STATES", "wake_filter", "wake_on_flow_runs"]

WAKE_STATES = ("Scheduled",)  # flow-run states after which the runner has a run to start
RECONNECT_SECONDS, RECONNECT_MAX_SECONDS = 5.0, 300.0  # between attempts to subscribe again

logger = logging.getLogger("icefloe.serve")


def wake_filter(deployment_ids: Iterable[UUID]) -> Any:
    """The events that wake the runner: its deployments' flow runs entering :data:`WAKE_STATES`.
    (Prefect's subscriber replays the last minute's first, on connecting: a few polls more.)"""
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    return EventFilter(
        event=EventNameFilter(name=[f"prefect.flow-run.{state}" for state in WAKE_STATES]),
        related=EventRelatedFilter(id=[f"prefect.deployment.{d}" for d in deployment_ids]),
    )


async def wake_on_flow_runs(runner: Any, deployment_ids: list[UUID]) -> None:
    """Poll ``runner`` once for each burst of wake events (until cancelled); while the event stream
    is down, the runner's own polls carry on alone."""
    from prefect.events.clients import get_events_subscriber

    wake = asyncio.Event()

    async def poll_when_woken() -> None:
        while True:
            await wake.wait()
            wake.clear()  # events that arrive during this poll are served by the next one
            if not runner.started:
                continue  # the runner's first poll, when it starts, finds the run
            try:
                await runner._get_and_submit_flow_runs()  # the runner's own poll, as its loop calls it
            except Exception as e:  # a failed poll is retried by the runner's loop
                logger.warning("polling for flow runs on an event failed: %s", e)

    poller = asyncio.create_task(poll_when_woken())
    delay = RECONNECT_SECONDS
    try:
        while True:
            try:
                async with get_events_subscriber(filter=wake_filter(deployment_ids)) as subscriber:
                    delay = RECONNECT_SECONDS
                    async for _ in subscriber:
                        wake.set()
            except Exception as e:
                logger.warning(
                    "the Prefect event stream is unavailable (%s); flow runs start at the runner's polls "
                    "until it is back (retrying in %.0f s)",
                    e,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)
    finally:
        poller.cancel()
