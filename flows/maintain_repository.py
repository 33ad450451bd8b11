"""The ``maintain_repository`` flow: expire old snapshots and collect garbage."""

from __future__ import annotations

from typing import Any

from prefect import flow

from lib.locks import writer_lock
from lib.spec import load_spec
from tasks.maintain import expire_and_collect


@flow(name="maintain_repository")
def maintain_repository(spec: str, older_than_days: float = 30.0) -> dict[str, Any]:
    """Expire snapshots older than ``older_than_days`` and delete objects no branch or tag needs.

    Branch tips and tags are never expired, so main's cube and its ledger stay whole.

    Parameters
    ----------
    spec
        Path of the cube's spec file, or the spec's YAML text.
    older_than_days
        Keep the history of the last this many days.
    """
    loaded = load_spec(spec)
    with writer_lock(loaded.repo.url):
        return expire_and_collect(loaded, older_than_days)
