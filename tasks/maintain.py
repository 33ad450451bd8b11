"""Looking after a repository: expiring old snapshots and collecting garbage."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from lib.errors import IcefloeError
from lib.maintenance import prune_history
from lib.repository import open_repository
from lib.spec import Spec
from tasks import RETRYING


@task(name="expire-and-collect", **RETRYING)
def expire_and_collect(spec: Spec, older_than_days: float) -> dict[str, Any]:
    """Expire snapshots older than the threshold, then delete what nothing references any more."""
    repo = open_repository(spec)
    if repo is None:
        raise IcefloeError(f"no cube at {spec.repo.url}")
    done = prune_history(repo, spec, older_than_days)
    get_run_logger().info(
        "expired %d snapshot(s); deleted %d chunk(s), %d manifest(s), %d byte(s)",
        done["expired_snapshots"],
        done["deleted_chunks"],
        done["deleted_manifests"],
        done["deleted_bytes"],
    )
    rows = "\n".join(f"| {k} | {v} |" for k, v in done.items())
    create_markdown_artifact(
        f"# icefloe maintain: {spec.name}\n\n| | |\n|---|---|\n{rows}\n",
        key=f"{spec.name}-maintain"[:100],
        description="snapshots expired, garbage collected",
    )
    return done
