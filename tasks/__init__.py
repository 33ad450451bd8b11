"""Thin Prefect tasks: each calls one step of :class:`lib.runs.CubeRun` (or another lib function),
adding retries for transient storage errors only, logging and artifacts.

Tasks pass small values (counts, snapshot ids, summaries). A run's working state lives in the
``CubeRun`` object, which Prefect sees as one opaque value; no task hashes or persists it.
"""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE

from lib.errors import StorageError

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


# Steps that only read or that write idempotently to staging may be retried on transient errors.
RETRYING: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [1, 5, 20],
    "retry_condition_fn": transient_only,
    "cache_policy": NO_CACHE,
}
# Steps that must run exactly once per attempt of the flow.
ONCE: dict[str, Any] = {"cache_policy": NO_CACHE}
