"""Coverage: what the cube holds, what it is missing and what was refused, per pattern cell.

For each cell of the pattern dims (polygon x month, say) the share of the concat axis its objects
cover, the missing positions, and how many of its objects are quarantined; plus the cube's totals
(objects, refs, source bytes, repository bytes, storage overhead). Drawn as a table and, with
matplotlib, as a PNG map.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lib.discovery import compile_pattern
from lib.ledger import INGESTED, QUARANTINED, iter_current, read_schema
from lib.state import read_axes

if TYPE_CHECKING:
    import icechunk

    from lib.spec import Spec

__all__ = ["Coverage", "coverage_markdown", "coverage_png", "folded", "measure_coverage"]


@dataclass
class Coverage:
    """The cube's coverage: ``fraction`` and ``quarantined`` are shaped like the pattern dims."""

    dims: list[str]
    labels: list[list[Any]]
    fraction: np.ndarray
    quarantined: np.ndarray
    axis_length: int
    missing: dict[tuple[Any, ...], list[int]] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        cells = []
        for index in np.ndindex(*self.fraction.shape):
            key = tuple(self.labels[d][i] for d, i in enumerate(index))
            cells.append(
                {
                    "cell": dict(zip(self.dims, key, strict=True)),
                    "fraction": round(float(self.fraction[index]), 4),
                    "missing": self.missing.get(key, []),
                    "quarantined": int(self.quarantined[index]),
                }
            )
        return {"dims": self.dims, "axis_length": self.axis_length, "cells": cells, "totals": self.totals}


def _repo_bytes(spec: Spec) -> int:
    import obstore

    from lib.storage import object_store

    store = object_store(spec.repo.url.rstrip("/") + "/", spec.repo_storage)
    return sum(int(meta["size"]) for batch in obstore.list(store, chunk_size=10_000) for meta in batch)


def measure_coverage(repo: icechunk.Repository, spec: Spec, snapshot: str | None = None) -> Coverage:
    """Coverage of main (or a snapshot) from its ledger and axes: no chunk is read."""
    session = (
        repo.readonly_session(snapshot_id=snapshot) if snapshot else repo.readonly_session(branch=spec.repo.branch)
    )
    store = session.store
    schema = read_schema(store)
    dims = list(schema.pattern) if schema else list(compile_pattern(spec.source.pattern).fields)
    axes = read_axes(store, schema) if schema else None
    labels = [list(axes.pattern[d]) if axes else [] for d in dims]
    concat = schema.concat[0] if schema and schema.concat else None
    length = int(axes.concat[concat].size) if axes and concat else 1
    shape = tuple(max(len(values), 1) for values in labels) if dims else ()
    covered = np.zeros((*shape, length), dtype=bool)
    quarantined = np.zeros(shape, dtype=np.int64)
    pattern = compile_pattern(spec.source.pattern)
    index_of = [{v: i for i, v in enumerate(values)} for values in labels]

    def cell_index(fields: dict[str, Any]) -> tuple[int, ...] | None:
        try:
            return tuple(index_of[k][fields[d]] for k, d in enumerate(dims))
        except KeyError:
            return None

    objects = refs = source_bytes = refused = 0
    for row in iter_current(store):  # streamed: the ledger can hold an entry per object of the archive
        fields = row.fields or (pattern.match(row.url.removeprefix(spec.source.url)) or {})
        index = cell_index(fields)
        if row.status == INGESTED:
            objects += 1
            refs += row.refs
            source_bytes += row.size
            if index is None:
                continue
            if concat and concat in row.ranges:
                start, stop = row.ranges[concat]
                span: tuple[int | slice, ...] = (*index, slice(start, stop))
                covered[span] = True
            else:
                covered[index] = True
        elif row.status == QUARANTINED:
            refused += 1
            if index is not None:
                quarantined[index] += 1
    fraction = covered.mean(axis=-1) if length else np.zeros(shape)
    missing: dict[tuple[Any, ...], list[int]] = {}
    for index in np.ndindex(*shape):
        holes = np.flatnonzero(~covered[index]).tolist()
        if holes and labels and all(labels):
            missing[tuple(labels[d][i] for d, i in enumerate(index))] = holes
    repo_bytes = _repo_bytes(spec)
    totals = {
        "objects": objects,
        "refs": refs,
        "source_bytes": source_bytes,
        "repo_bytes": repo_bytes,
        "overhead_percent": round(100.0 * repo_bytes / source_bytes, 3) if source_bytes else None,
        "quarantined": refused,
        "concat_dim": concat,
        "snapshot": session.snapshot_id,
    }
    return Coverage(dims, labels, fraction, quarantined, length, missing, totals)


def folded(cov: Coverage) -> tuple[np.ndarray, np.ndarray, list[Any], list[Any], str, str]:
    """Coverage folded to two dims (rows: the first pattern dim, columns: the second, others averaged)."""
    frac, quar = cov.fraction, cov.quarantined
    if frac.ndim == 0:
        return frac.reshape(1, 1), quar.reshape(1, 1), [""], [""], "", ""
    if frac.ndim == 1:
        return frac.reshape(1, -1), quar.reshape(1, -1), [""], cov.labels[0], "", cov.dims[0]
    extra = tuple(range(2, frac.ndim))
    return (
        frac.mean(axis=extra) if extra else frac,
        quar.sum(axis=extra) if extra else quar,
        cov.labels[0],
        cov.labels[1],
        cov.dims[0],
        cov.dims[1],
    )


def coverage_markdown(cov: Coverage, image: bytes | None = None, limit: int = 40) -> str:
    """A Markdown report: totals, the coverage table (percent of the concat axis per cell), the PNG."""
    frac, quar, rows, cols, row_dim, col_dim = folded(cov)
    t = cov.totals
    overhead = f"{t['overhead_percent']}%" if t.get("overhead_percent") is not None else "-"
    lines = [
        "# Coverage",
        "",
        f"**{t['objects']}** objects, **{t['refs']}** refs, {t['source_bytes']:,} source bytes, "
        f"{t['repo_bytes']:,} repository bytes (overhead {overhead}), **{t['quarantined']}** quarantined; "
        f"`{t.get('concat_dim') or '-'}` axis of {cov.axis_length}.",
        "",
        f"| {row_dim} \\ {col_dim} | " + " | ".join(str(c) for c in cols[:limit]) + " |",
        "|---|" + "---:|" * len(cols[:limit]),
    ]
    for r, label in enumerate(rows[:limit]):
        cells = []
        for c in range(min(len(cols), limit)):
            value = f"{100 * frac[r, c]:.0f}%"
            if frac[r, c] < 1:
                value = f"**{value}**"
            if quar[r, c]:
                value += f" ({quar[r, c]} q)"
            cells.append(value)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if cov.missing:
        lines += ["", "Missing positions (cell: indexes along the axis):", ""]
        for key, holes in list(cov.missing.items())[:limit]:
            shown = ", ".join(map(str, holes[:20])) + (" ..." if len(holes) > 20 else "")
            lines.append(f"- {dict(zip(cov.dims, key, strict=True))}: {shown}")
    if image:
        lines += ["", f"![coverage map](data:image/png;base64,{base64.b64encode(image).decode()})"]
    return "\n".join(lines) + "\n"


def coverage_png(cov: Coverage, title: str = "") -> bytes:
    """The coverage map as a PNG: one square per cell, missing shares highlighted, quarantines counted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frac, quar, rows, cols, row_dim, col_dim = folded(cov)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(cols) + 2), max(2.5, 0.45 * len(rows) + 1.5)), dpi=100)
    image = ax.imshow(frac, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (r, c), value in np.ndenumerate(frac):
        text = f"{100 * value:.0f}%" + (f"\n{quar[r, c]}q" if quar[r, c] else "")
        ax.text(c, r, text, ha="center", va="center", fontsize=7, color="white" if value < 0.6 else "black")
        if value < 1:
            ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], fontsize=7, rotation=90 if len(cols) > 12 else 0)
    ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=7)
    ax.set_xlabel(col_dim)
    ax.set_ylabel(row_dim)
    ax.set_title(title or f"share of the {cov.totals.get('concat_dim') or 'cube'} axis present", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
