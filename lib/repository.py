"""The cube's Icechunk repository: opening it, its branches, commits and the publish step.

Readers only ever see ``main``. Writers work on the staging branch and ``main`` moves only by a
compare-and-swap fast-forward to the exact snapshot the checks ran on. Every branch move is a
compare-and-swap, so a writer that lost a race notices (:class:`~lib.errors.ConflictError`) and
re-plans instead of overwriting the winner's work.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lib.errors import ConflictError, StorageError, first_line, store_error
from lib.hierarchy import allow_rectilinear
from lib.storage import container_credentials, repo_storage, virtual_containers

if TYPE_CHECKING:
    import icechunk

    from lib.spec import Spec

__all__ = [
    "BranchState",
    "commit_session",
    "history",
    "is_ancestor",
    "open_repository",
    "publish",
    "reset_branch",
    "run_history",
    "run_log",
    "set_manifest_splitting",
]

os.environ.setdefault("ICECHUNK_LOG", "error")  # a local repository warns about concurrent commits otherwise


# Icechunk's in-memory caches, bounded: a long build must not keep every manifest it wrote.
CACHE = {
    "num_snapshot_nodes": 100_000,
    "num_chunk_refs": 200_000,  # ~90 bytes each: a manifest cache of ~18 MB
    "num_transaction_changes": 100_000,
    "num_bytes_attributes": 16 * 1024 * 1024,
    "num_bytes_chunks": 64 * 1024 * 1024,
}


def _config(spec: Spec, existing: icechunk.RepositoryConfig | None = None) -> icechunk.RepositoryConfig:
    import icechunk

    config = existing or icechunk.RepositoryConfig.default()
    for container in virtual_containers(spec):
        config.set_virtual_chunk_container(container)
    config.caching = icechunk.CachingConfig(**CACHE)
    config.storage = _storage_settings()
    return config


def _storage_settings() -> icechunk.StorageSettings:
    """A few quick retries per request; longer outages are ridden out by the pipeline's step retries.

    Icechunk's own default retries a refused connection for ~19 s before giving up.
    """
    import icechunk

    retries = icechunk.StorageRetriesSettings(max_tries=5, initial_backoff_ms=200, max_backoff_ms=4000)
    return icechunk.StorageSettings(retries=retries)


def open_repository(spec: Spec, *, create: bool = False) -> icechunk.Repository | None:
    """Open the cube's repository, or create it (``create``); None if it does not exist.

    The source prefix is registered as the only virtual chunk container; read credentials come
    from the environment at open time and are never stored in the repository.

    Raises
    ------
    StorageError
        The repository's storage cannot be reached.
    """
    import icechunk

    allow_rectilinear()  # a cube with rectilinear axes must open wherever icefloe opens it
    storage = repo_storage(spec)
    try:
        exists = icechunk.Repository.exists(storage, storage_settings=_storage_settings())
        if not exists:
            if not create:
                return None
            return icechunk.Repository.create(
                storage, _config(spec), authorize_virtual_chunk_access=container_credentials(spec)
            )
        stored = icechunk.Repository.fetch_config(storage)
        prefixes = set((stored.virtual_chunk_containers or {}) if stored else {})
        new_container = not {c.url_prefix for c in virtual_containers(spec)} <= prefixes
        config = _config(spec, stored)  # the stored settings (manifest splitting...) plus bounded caches
        repo = icechunk.Repository.open(
            storage, config=config, authorize_virtual_chunk_access=container_credentials(spec)
        )
        if new_container and create:
            repo.save_config()
        return repo
    except icechunk.IcechunkError as e:
        raise store_error(f"cannot open the repository {spec.repo.url}", e, first_line(e)) from e


def set_manifest_splitting(repo: icechunk.Repository, split: dict[str, int]) -> icechunk.Repository:
    """Split manifests along the given dims (dim → chunks per split) for every later commit.

    Returns the repository handle to use from now on (the setting is saved in the repository too).
    """
    import icechunk as ic

    if not split:
        return repo
    conditions: dict[
        ic.ManifestSplitDimCondition.Axis
        | ic.ManifestSplitDimCondition.DimensionName
        | ic.ManifestSplitDimCondition.Any,
        int,
    ] = {ic.ManifestSplitDimCondition.DimensionName(dim): size for dim, size in split.items()}
    config = repo.config
    config.manifest = ic.ManifestConfig(
        splitting=ic.ManifestSplittingConfig.from_dict({ic.ManifestSplitCondition.AnyArray(): conditions})
    )
    repo = repo.reopen(config=config)
    repo.save_config()
    return repo


@dataclass(frozen=True)
class BranchState:
    main: str
    staging: str


def branch_state(repo: icechunk.Repository, spec: Spec) -> BranchState:
    """The tips of main and staging, creating staging at main's tip if it does not exist."""
    import icechunk

    main = repo.lookup_branch(spec.repo.branch)
    try:
        staging = repo.lookup_branch(spec.repo.staging)
    except icechunk.RefNotFoundError:
        try:
            repo.create_branch(spec.repo.staging, main)
        except icechunk.AlreadyExistsError:  # another writer created it meanwhile
            staging = repo.lookup_branch(spec.repo.staging)
        else:
            staging = main
    return BranchState(main=main, staging=staging)


def reset_branch(repo: icechunk.Repository, branch: str, to: str, expected: str) -> None:
    """Move a branch to ``to`` only if it still points at ``expected`` (compare-and-swap).

    Raises
    ------
    ConflictError
        The branch moved since it was read.
    """
    import icechunk

    if to == expected:
        return
    try:
        repo.reset_branch(branch, to, from_snapshot_id=expected)
    except icechunk.IcechunkError as e:
        current = _tip_or_none(repo, branch)  # None: the store cannot say either
        if current is not None and current != expected:
            raise ConflictError(f"branch '{branch}' moved to {current} while this run expected {expected}") from e
        raise StorageError(f"cannot move branch '{branch}': {first_line(e)}") from e


def _tip_or_none(repo: icechunk.Repository, branch: str) -> str | None:
    import icechunk

    try:
        return repo.lookup_branch(branch)
    except icechunk.IcechunkError:  # the store cannot say either
        return None


def commit_session(session: icechunk.Session, message: str, metadata: dict[str, Any]) -> str:
    """Commit a session; a conflict (another writer committed first) becomes a ConflictError."""
    import icechunk

    try:
        return session.commit(message, metadata=metadata, allow_empty=True)
    except icechunk.ConflictError as e:
        raise ConflictError(f"another writer committed to '{session.branch}' first: {first_line(e)}") from e
    except icechunk.IcechunkError as e:
        raise StorageError(f"commit to '{session.branch}' failed: {first_line(e)}") from e


def is_ancestor(repo: icechunk.Repository, ancestor: str, snapshot: str) -> bool:
    """Whether ``ancestor`` is in the history of ``snapshot`` (or is it)."""
    return any(info.id == ancestor for info in repo.ancestry(snapshot_id=snapshot))


def publish(repo: icechunk.Repository, spec: Spec, checked: str, main_at_start: str) -> None:
    """Fast-forward main to the checked snapshot, if main is still where the run found it.

    Raises
    ------
    ConflictError
        Main moved since the run started, or the checked snapshot does not descend from it.
    """
    if not is_ancestor(repo, main_at_start, checked):
        raise ConflictError(f"snapshot {checked} does not descend from main's tip {main_at_start}")
    reset_branch(repo, spec.repo.branch, checked, main_at_start)


def history(repo: icechunk.Repository, branch: str, limit: int | None = None) -> list[dict[str, Any]]:
    """A branch's snapshots, newest first, with their message and icefloe metadata."""
    out = []
    for info in repo.ancestry(branch=branch):
        out.append(
            {
                "snapshot": info.id,
                "parent": info.parent_id,
                "written_at": info.written_at.isoformat(),
                "message": info.message,
                "metadata": dict(info.metadata or {}),
            }
        )
        if limit is not None and len(out) >= limit:
            break
    return out


def run_history(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Main's history told per run: the commits of one build or ingest folded into one story.

    ``entries`` is :func:`history` (newest first). Commits icefloe did not make stand alone.
    """
    runs: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for e in entries:
        meta = e["metadata"].get("icefloe") or {}
        key = meta.get("run") or e["snapshot"]
        if key not in runs:
            order.append(key)
            runs[key] = {
                "run": meta.get("run"),
                "flow_run": meta.get("flow_run"),
                "operation": meta.get("operation") or "other",
                "snapshot": e["snapshot"],
                "finished_at": e["written_at"],
                "started_at": e["written_at"],
                "commits": 0,
                "ingested": 0,
                "quarantined": 0,
                "refs": 0,
                "nativized": [],
                "message": e["message"],
            }
        run = runs[key]
        run["commits"] += 1
        run["started_at"] = e["written_at"]
        stage = meta.get("stage")
        if stage == "batch":
            run["ingested"] += int(meta.get("ingested", 0))
            run["refs"] += int(meta.get("refs", 0))
        elif stage == "prepare":
            run["quarantined"] += int(meta.get("quarantined", 0))
        elif stage == "quarantine":  # files the checks took back out: placed by a batch, then refused
            run["quarantined"] += int(meta.get("quarantined", 0))
            run["ingested"] -= int(meta.get("quarantined", 0))
        elif stage == "nativize":
            run["nativized"] = list(meta.get("nativized", []))
    out = []
    for key in order:
        run = runs[key]
        took = dt.datetime.fromisoformat(run["finished_at"]) - dt.datetime.fromisoformat(run["started_at"])
        run["seconds"] = round(took.total_seconds(), 3)
        out.append(run)
    return out


def run_log(repo: icechunk.Repository, branch: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Every run that published to ``branch``, newest first, from the cube's own log of runs (which
    outlives expired snapshots), and before that log existed, from the branch's history.

    A run that resumed an interrupted one records again; one record per publish is kept (the last).
    """
    from lib.ledger import read_runs

    entries = history(repo, branch, limit)
    snapshots = {
        (e["metadata"].get("icefloe") or {}).get("run"): e["snapshot"]
        for e in entries
        if (e["metadata"].get("icefloe") or {}).get("stage") == "record"
    }
    per_publish: dict[Any, tuple[int, dict[str, Any]]] = {}
    for i, record in enumerate(read_runs(repo.readonly_session(branch=branch).store)):
        per_publish[record.get("main_before") or record["run"]] = (i, record)
    recorded = [
        {**record, "snapshot": snapshots.get(record["run"], "(expired)")}
        for _, record in sorted(per_publish.values(), key=lambda item: item[0], reverse=True)  # newest first
    ]
    known = {r["run"] for r in recorded}
    runs = recorded + [r for r in run_history(entries) if r["run"] is None or r["run"] not in known]
    return runs[:limit] if limit is not None else runs
