"""The ``ingest_objects`` flow: bring pending objects into the cube through staging and checks."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.update_cube import update_cube


@flow(name="ingest_objects", log_prints=True)
def ingest_objects(
    spec: str, urls: list[str] | None = None, keep: bool = False, coverage: bool | None = None
) -> dict[str, Any]:
    """Ingest what is pending: objects in the source but not (or not at this etag) in the ledger.

    Event-triggered runs pass no URLs: they drain everything pending, so lost, batched or
    duplicated events do no harm.

    Parameters
    ----------
    spec
        Path of the cube's spec file, or the spec's YAML text.
    urls
        Only these objects (they must be in the source and match the pattern).
    keep
        Leave objects whose content changed since they were ingested as they are, and report them
        (by default they are re-ingested through the same checks).
    coverage
        Draw the cube's coverage map into the run's artifacts after publishing. By default only runs
        that place many objects do (reading the whole ledger is a large cube's costliest read; the
        sweep deployment draws it on every run).
    """
    return update_cube(spec, "ingest", urls=urls, keep=keep, coverage=coverage)
