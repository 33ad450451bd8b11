"""Thin Prefect tasks: each calls one step of :class:`lib.runs.CubeRun` (or another lib function),
adding retries for transient storage errors only, logging and artifacts.

Tasks pass small values (counts, snapshot ids, summaries). A run's working state lives in the
``CubeRun`` object, which Prefect sees as one opaque value; no task hashes or persists it.
"""

from __future__ import annotations

import os
from typing import Any

from prefect.cache_policies import NO_CACHE

from lib.errors import SpecError, StorageError

__all__ = ["ONCE", "RETRYING", "transient_only"]


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed task only if it failed on the store (network, throttling), never on bad input."""
    try:
        state.result()
    except StorageError:
        return True
    except BaseException:
        return False
    return False


def retry_delays() -> list[float]:
    """Seconds between a step's retries: ``ICEFLOE_RETRY_DELAYS`` (comma-separated), default 1,5,20."""
    raw = os.environ.get("ICEFLOE_RETRY_DELAYS", "1,5,20")
    try:
        return [float(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise SpecError(f"ICEFLOE_RETRY_DELAYS must be comma-separated seconds, got {raw!r}") from None


# Steps that only read or that write idempotently to staging may be retried on transient errors.
RETRYING: dict[str, Any] = {
    "retries": len(retry_delays()),
    "retry_delay_seconds": retry_delays(),
    "retry_condition_fn": transient_only,
    "cache_policy": NO_CACHE,
}
# Steps that must run exactly once per attempt of the flow.
ONCE: dict[str, Any] = {"cache_policy": NO_CACHE}
