"""Warm flow runs for ``icefloe serve``: each run in its own process, without paying for imports.

A served deployment runs each flow run in a new process (Prefect's runner spawns one, which imports
Prefect, xarray, zarr, Great Expectations and icefloe again): ~2.6 s of an event's 7 s path to main
on these machines. Here the runner starts flow runs from a *fork server* instead -- a process that
imported all of that once, when ``serve`` started, and forks a child per flow run. The child is a new
process as before (its own memory, killed alone, crash-safe like any run), and the run is the same
Prefect flow run: states, logs and artifacts in the UI, the deployment's concurrency limit.

Icechunk is the one import the fork server must not hold: its runtime's threads do not survive a fork
(a child forked after ``import icechunk`` hangs on its first repository call), so each run imports it
itself (~0.25 s) and opens the repository (~0.1 s).

How: Prefect's runner starts served flows through ``prefect.flow_engine.run_flow_in_subprocess``,
which takes its process context from the module's ``multiprocessing``; :func:`use_warm_processes`
gives that module a stand-in whose contexts are the fork server's. Everything else about starting a
flow run (environment, settings, the control channel for cancellation) stays Prefect's own.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
from typing import Any

__all__ = ["EXPECTATIONS", "PRELOAD", "use_warm_processes"]

# imported once by the fork server; nothing here may import icechunk (a test checks)
PRELOAD = [
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.concurrency.services",
    "prefect.concurrency._sync",
    "prefect.utilities.visualization",
    "flows.build_cube",
    "flows.ingest_objects",
    "flows.maintain_repository",
    "flows.nativize_coords",
    "lib.expectations",
    "lib.codecs",
    "lib.coverage",
    "lib.parsing.hdf5",
    "virtualizarr.parsers",
    "hdf5plugin",
    "matplotlib.pyplot",
    "dask.array",  # xarray imports it lazily, on the first dataset it opens
    "scipy.fftpack",
    "fastapi",
    "psutil",
    "tblib.pickling_support",
    "pydantic_extra_types.color",
    "opentelemetry.metrics",
    "anyio._backends._asyncio",
    "multiprocessing.synchronize",
    "rich._emoji_codes",
    "xarray",
    "zarr",
    "h5py",
    "obstore",
]


FREEZE = "flows.services.frozen"  # imported after all the others: freezes the heap they made
EXPECTATIONS = ["great_expectations"]  # only for cubes whose spec lists expectations (~100 MB)


class _WarmMultiprocessing:
    """Stands in for ``multiprocessing`` inside ``prefect.flow_engine``: every context is the fork server's."""

    def __init__(self, context: multiprocessing.context.BaseContext) -> None:
        self._context = context

    def get_context(self, method: str | None = None) -> multiprocessing.context.BaseContext:
        return self._context

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def use_warm_processes(
    preload: list[str] | None = None, expectations: bool = False
) -> multiprocessing.context.BaseContext:
    """Make this process's Prefect runner start flow runs from a warm fork server; returns its context.

    The fork server imports ``preload`` (by default :data:`PRELOAD`, and Great Expectations when the
    cube has ``expectations``) as soon as it starts, before the first event.
    """
    import prefect.flow_engine

    context = multiprocessing.get_context("forkserver")
    modules = list(preload if preload is not None else PRELOAD) + (EXPECTATIONS if expectations else [])
    context.set_forkserver_preload([*modules, FREEZE])
    from multiprocessing import forkserver

    forkserver.ensure_running()
    prefect.flow_engine.multiprocessing = _WarmMultiprocessing(context)  # type: ignore[assignment]
    return context
