"""Where a run starts: the branches' tips, whether unfinished work can be resumed, and what the cube
already holds (schema, axes, ledger).

A run works on the staging branch. If staging holds unfinished work of the same kind, on top of
main's current tip and for the same spec, the run resumes it (a crash loses at most one batch);
otherwise staging is brought back to main's tip with a compare-and-swap and the run starts clean.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lib.hierarchy import array_at, open_root
from lib.layout import Axes
from lib.ledger import ledger_size, read_schema
from lib.ledger_index import LedgerIndex
from lib.report import Operation
from lib.repository import branch_state, reset_branch
from lib.spec import Spec, spec_digest
from lib.validation import DATA, VIRTUAL, CubeSchema

if TYPE_CHECKING:
    import icechunk
    from zarr.abc.store import Store

__all__ = ["CubeState", "read_axes", "read_cube_state", "read_main_state", "run_metadata"]


@dataclass
class CubeState:
    """What a run knows about the cube when it starts."""

    operation: Operation
    main: str
    staging: str
    resumed: bool
    fresh: bool
    schema: CubeSchema | None
    axes: Axes | None
    ledger: LedgerIndex = field(default_factory=LedgerIndex.empty)  # current rows, looked up as needed
    ledger_base: int = 0
    spec_digest: str = ""


RESUMES = {"rechunk": ("rechunk",)}  # what a run of each kind may take over (an ingest: anything; others: a build)


def run_metadata(snapshot_info: Any) -> dict[str, Any]:
    """The icefloe part of a commit's metadata (empty for commits icefloe did not make)."""
    meta = dict(getattr(snapshot_info, "metadata", None) or {})
    value = meta.get("icefloe")
    return dict(value) if isinstance(value, dict) else {}


def read_axes(store: Store, schema: CubeSchema) -> Axes:
    """The cube's axes as its coordinate arrays hold them."""

    root = open_root(store)
    axes = Axes()
    for dim, kind in schema.pattern.items():
        values = np.asarray(array_at(root, dim)[...]) if dim in root else np.zeros(0)
        axes.pattern[dim] = [int(v) if kind == "int" else str(v) for v in values.tolist()]
    for dim in schema.concat:
        axes.concat[dim] = np.asarray(array_at(root, dim)[...]) if dim in root else np.zeros(0)
    for dim in schema.rectilinear:  # the chunk edges the files brought, as each variable's grid holds them
        for var in schema.by_role(DATA):
            if var.kind != VIRTUAL or dim not in var.dims or var.path not in root:
                continue
            grid: dict[str, Any] = dict(array_at(root, var.path).metadata.to_dict()["chunk_grid"])  # type: ignore[arg-type]
            if grid.get("name") != "rectilinear":
                continue
            axis = len(schema.pattern) + var.dims.index(dim)
            spec = grid["configuration"]["chunk_shapes"][axis]
            sizes = _expanded(list(spec)) if isinstance(spec, (list, tuple)) else [int(spec)]
            axes.edges.setdefault(dim, {})[var.path] = [0, *itertools.accumulate(sizes)]
    return axes


def _expanded(sizes: list[Any]) -> list[int]:
    """Edge lengths as written, with run-length pairs ([length, count]) expanded."""
    out: list[int] = []
    for item in sizes:
        out += [int(item[0])] * int(item[1]) if isinstance(item, (list, tuple)) else [int(item)]
    return out


def read_main_state(repo: icechunk.Repository, spec: Spec, operation: Operation) -> CubeState:
    """The state a dry run plans against: main's, without touching any branch."""
    main = repo.lookup_branch(spec.repo.branch)
    store = repo.readonly_session(snapshot_id=main).store
    schema = read_schema(store)
    fresh = schema is None or operation == "build"
    return CubeState(
        operation,
        main,
        main,
        resumed=False,
        fresh=fresh,
        schema=None if fresh else schema,
        axes=None if fresh or schema is None else read_axes(store, schema),
        ledger=LedgerIndex.empty() if fresh else LedgerIndex(store),
        ledger_base=ledger_size(store),
    )


def read_cube_state(repo: icechunk.Repository, spec: Spec, operation: Operation) -> CubeState:
    """Decide between resuming staging and starting clean, and read the cube's state.

    Raises
    ------
    ConflictError
        Staging moved while it was being reset (another writer is active).
    """
    digest = spec_digest(spec)
    tips = branch_state(repo, spec)
    meta = run_metadata(repo.lookup_snapshot(tips.staging)) if tips.staging != tips.main else {}
    resumable = (
        tips.staging != tips.main
        and meta.get("main_at_start") == tips.main
        and meta.get("spec") == digest
        and (operation == "ingest" or meta.get("operation") in RESUMES.get(operation, ("build",)))
    )
    staging = tips.staging
    if not resumable and staging != tips.main:
        reset_branch(repo, spec.repo.staging, tips.main, expected=staging)
        staging = tips.main
    store = repo.readonly_session(snapshot_id=staging).store
    schema = read_schema(store)
    fresh = schema is None or (operation == "build" and not resumable)
    if fresh:
        return CubeState(
            operation,
            tips.main,
            staging,
            resumed=False,
            fresh=True,
            schema=None,
            axes=None,
            ledger_base=0,
            spec_digest=digest,
        )
    assert schema is not None
    base = int(meta.get("ledger_base", 0)) if resumable else ledger_size(store)
    return CubeState(
        operation,
        tips.main,
        staging,
        resumed=resumable,
        fresh=False,
        schema=schema,
        axes=read_axes(store, schema),
        ledger=LedgerIndex(store),
        ledger_base=base,
        spec_digest=digest,
    )
