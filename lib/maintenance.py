"""Looking after a cube: drift between the ledger and the source (``verify``), and expiring old
snapshots and collecting their garbage (``maintain``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lib.discovery import compile_pattern, list_sources
from lib.errors import IcefloeError
from lib.ledger import INGESTED, read_ledger
from lib.storage import object_store

if TYPE_CHECKING:
    import icechunk

    from lib.spec import Spec

__all__ = ["Drift", "prune_history", "verify_sources"]


@dataclass
class Drift:
    """Objects whose source changed or disappeared since they were ingested."""

    checked: int = 0
    changed: list[dict[str, str]] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.changed and not self.gone

    def to_json(self) -> dict[str, Any]:
        return {"clean": self.clean, "checked": self.checked, "changed": self.changed, "gone": self.gone}


def verify_sources(repo: icechunk.Repository, spec: Spec) -> Drift:
    """Compare every object main holds with the source as it is now (one listing, no reads).

    A changed object would fail loudly on read (its refs carry the old checksum): re-ingest it with
    ``icefloe ingest`` (it re-ingests changed objects). A gone object's data can no longer be read at all.
    """
    store = repo.readonly_session(branch=spec.repo.branch).store
    ledger = {url: row for url, row in read_ledger(store).items() if row.status == INGESTED}
    listed = list_sources(
        spec.source.url, object_store(spec.source.url, spec.source.storage), compile_pattern(spec.source.pattern)
    )
    now = {o.url: o for o in listed.objects}
    drift = Drift(checked=len(ledger))
    for url, row in sorted(ledger.items()):
        obj = now.get(url)
        if obj is None:
            drift.gone.append(url)
        elif obj.etag != row.etag:
            drift.changed.append({"url": url, "ingested_etag": row.etag, "current_etag": obj.etag})
    return drift


def prune_history(repo: icechunk.Repository, spec: Spec, older_than_days: float) -> dict[str, Any]:
    """Expire snapshots older than the threshold and delete what no branch or tag still needs.

    Branch tips (main, staging) and tags are never expired, so the published cube and its ledger
    stay whole; only history older than ``older_than_days`` goes.
    """
    if older_than_days < 0:
        raise IcefloeError("--older-than must be zero or more days")
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=older_than_days)
    before = sum(1 for _ in repo.ancestry(branch=spec.repo.branch))
    expired = repo.expire_snapshots(older_than=cutoff)
    summary = repo.garbage_collect(delete_object_older_than=cutoff)
    after = sum(1 for _ in repo.ancestry(branch=spec.repo.branch))
    return {
        "expired_snapshots": len(expired),
        "history_before": before,
        "history_after": after,
        "deleted_chunks": summary.chunks_deleted,
        "deleted_manifests": summary.manifests_deleted,
        "deleted_snapshots": summary.snapshots_deleted,
        "deleted_bytes": summary.bytes_deleted,
        "main": repo.lookup_branch(spec.repo.branch),
    }
