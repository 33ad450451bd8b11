"""Coverage: what the cube holds, what it is missing and what was refused, per pattern cell.

For each cell of the pattern dims (polygon x month, say) the share of the concat axis its objects
cover, the missing positions, and how many of its objects are quarantined; plus the cube's totals
(objects, refs, source bytes, repository bytes, storage overhead). Drawn as a table and, with
matplotlib, as a PNG map.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lib.discovery import compile_pattern
from lib.errors import IcefloeError
from lib.ledger import DEFERRED, INGESTED, QUARANTINED, iter_current, read_schema
from lib.state import read_axes

if TYPE_CHECKING:
    import icechunk

    from lib.spec import Spec

__all__ = ["Coverage", "coverage_markdown", "coverage_png", "folded", "measure_coverage"]


@dataclass
class Coverage:
    """The cube's coverage: ``fraction``, ``quarantined`` and ``deferred`` are shaped like the pattern dims.

    The concat axis counted is the cube's axis together with the values of the objects refused or
    waiting (their values are known from the parse): a position no object of a cell covers is a
    hole, whether nothing arrived for it or what arrived was refused or waits.
    """

    dims: list[str]
    labels: list[list[Any]]
    fraction: np.ndarray
    quarantined: np.ndarray
    axis_length: int
    missing: dict[tuple[Any, ...], list[int]] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)
    deferred: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    waiting: list[dict[str, Any]] = field(default_factory=list)

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
                    "deferred": int(self.deferred[index]) if self.deferred.shape == self.fraction.shape else 0,
                }
            )
        return {
            "dims": self.dims,
            "axis_length": self.axis_length,
            "cells": cells,
            "totals": self.totals,
            "deferred": self.waiting,
        }


def _repo_bytes(spec: Spec) -> int:
    import obstore

    from lib.storage import object_store

    store = object_store(spec.repo.url.rstrip("/") + "/", spec.repo_storage)
    return sum(int(meta["size"]) for batch in obstore.list(store, chunk_size=10_000) for meta in batch)


def _waited(since: str, now: dt.datetime) -> str:
    seconds = int((now - dt.datetime.fromisoformat(since.replace("Z", "+00:00"))).total_seconds())
    days, rest = divmod(max(seconds, 0), 86400)
    return f"{days}d {rest // 3600}h" if days else f"{rest // 3600}h {rest % 3600 // 60}m"


def measure_coverage(repo: icechunk.Repository, spec: Spec, snapshot: str | None = None) -> Coverage:
    """Coverage of main (or a snapshot) from its ledger and axes: no chunk is read.

    Raises
    ------
    IcefloeError
        Nothing has been published yet (a first build that did not publish).
    """
    session = (
        repo.readonly_session(snapshot_id=snapshot) if snapshot else repo.readonly_session(branch=spec.repo.branch)
    )
    store = session.store
    schema = read_schema(store)
    if schema is None:
        raise IcefloeError(
            f"no cube has been published at {spec.repo.url} yet: the first build did not publish "
            f"(its report says why; `icefloe build` again once the sources are fixed)"
        )
    dims = list(schema.pattern)
    axes = read_axes(store, schema)
    concat = schema.concat[0] if schema.concat else None
    axis = axes.concat[concat] if concat else np.zeros(1)
    pattern = compile_pattern(spec.source.pattern)

    def cell_index(row: Any, index_of: list[dict[Any, int]]) -> tuple[int, ...] | None:
        fields = row.fields or pattern.match(row.url.removeprefix(spec.source.url)) or {}  # older rows: from the URL
        try:
            return tuple(index_of[k][fields[d]] for k, d in enumerate(dims))
        except KeyError:
            return None

    # One pass over the current rows, a row at a time (a whole archive's rows would not fit): what is in
    # the cube is marked on the cube's own axes; refused and waiting objects (few) are kept for later,
    # since the values only they carry widen the map.
    in_cube = np.zeros((*(max(len(axes.pattern[d]), 1) for d in dims), int(axis.size) if concat else 1), dtype=bool)
    cube_index_of = [{v: i for i, v in enumerate(axes.pattern[d])} for d in dims]
    refused = []
    objects = refs = source_bytes = 0
    for row in iter_current(store):
        if row.status in (QUARANTINED, DEFERRED):
            refused.append(row)
        if row.status != INGESTED:
            continue
        objects += 1
        refs += row.refs
        source_bytes += row.size
        index = cell_index(row, cube_index_of)
        if index is None:
            continue
        if concat and concat in row.ranges:
            start, stop = row.ranges[concat]
            span: tuple[int | slice, ...] = (*index, slice(start, stop))
            in_cube[span] = True
        else:
            in_cube[index] = True
    labels = []
    for d in dims:  # the cube's values, and those only refused or waiting objects carry
        extra = {r.fields[d] for r in refused if d in r.fields and r.values} - set(axes.pattern[d])
        labels.append(sorted([*axes.pattern[d], *extra]))
    if concat:
        extra_values = [np.asarray(r.values.get(concat, []), dtype=axis.dtype) for r in refused if r.values]
        full = np.unique(np.concatenate([axis, *extra_values])) if extra_values else axis
    else:
        full = axis
    length = int(full.size) if concat else 1
    shape = tuple(max(len(values), 1) for values in labels) if dims else ()
    index_of = [{v: i for i, v in enumerate(values)} for values in labels]
    covered = np.zeros((*shape, length), dtype=bool)
    quarantined = np.zeros(shape, dtype=np.int64)
    deferred = np.zeros(shape, dtype=np.int64)
    # the cube's cells and positions, in the widened map
    cells = [np.asarray([index_of[k][v] for v in axes.pattern[d]] or [0], dtype=np.intp) for k, d in enumerate(dims)]
    where = np.searchsorted(full, axis) if concat else np.zeros(1, dtype=np.intp)
    covered[np.ix_(*cells, where)] = in_cube
    now = dt.datetime.now(dt.UTC)
    waiting = []
    for row in refused:
        index = cell_index(row, index_of)
        if row.status == QUARANTINED and index is not None:
            quarantined[index] += 1
        elif row.status == DEFERRED:
            if index is not None:
                deferred[index] += 1
            waiting.append({"url": row.url, "since": row.since, "waited": _waited(row.since or row.at, now)})
    fraction = covered.mean(axis=-1) if length else np.zeros(shape)
    missing: dict[tuple[Any, ...], list[int]] = {}
    for index in np.ndindex(*shape):
        holes = np.flatnonzero(~covered[index]).tolist()
        if holes and labels and all(labels):
            missing[tuple(labels[d][i] for d, i in enumerate(index))] = holes
    repo_bytes = _repo_bytes(spec)
    info = next(iter(repo.ancestry(snapshot_id=session.snapshot_id)))
    totals = {
        "objects": objects,
        "refs": refs,
        "source_bytes": source_bytes,
        "repo_bytes": repo_bytes,
        "overhead_percent": round(100.0 * repo_bytes / source_bytes, 3) if source_bytes else None,
        "quarantined": sum(1 for r in refused if r.status == QUARANTINED),
        "deferred": len(waiting),
        "concat_dim": concat,
        "rectilinear": list(schema.rectilinear),
        "snapshot": session.snapshot_id,
        "written_at": info.written_at.isoformat(timespec="seconds"),
    }
    return Coverage(dims, labels, fraction, quarantined, length, missing, totals, deferred, waiting)


def folded(cov: Coverage) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any], list[Any], str, str]:
    """Coverage folded to two dims (rows: the first pattern dim, columns: the second, others averaged):
    (fraction, quarantined, deferred, row labels, column labels, row dim, column dim)."""
    frac, quar = cov.fraction, cov.quarantined
    wait = cov.deferred if cov.deferred.shape == frac.shape else np.zeros(frac.shape, dtype=np.int64)
    if frac.ndim == 0:
        return frac.reshape(1, 1), quar.reshape(1, 1), wait.reshape(1, 1), [""], [""], "", ""
    if frac.ndim == 1:
        return frac.reshape(1, -1), quar.reshape(1, -1), wait.reshape(1, -1), [""], cov.labels[0], "", cov.dims[0]
    extra = tuple(range(2, frac.ndim))
    return (
        frac.mean(axis=extra) if extra else frac,
        quar.sum(axis=extra) if extra else quar,
        wait.sum(axis=extra) if extra else wait,
        cov.labels[0],
        cov.labels[1],
        cov.dims[0],
        cov.dims[1],
    )


def _axis(cov: Coverage) -> str:
    t = cov.totals
    kind = " (rectilinear)" if t.get("concat_dim") in (t.get("rectilinear") or []) else ""
    return f"`{t.get('concat_dim') or '-'}` axis of {cov.axis_length}{kind}"


def coverage_markdown(cov: Coverage, image: bytes | None = None, limit: int = 40) -> str:
    """A Markdown report: totals, the coverage table (percent of the concat axis per cell), the PNG."""
    frac, quar, wait, rows, cols, row_dim, col_dim = folded(cov)
    t = cov.totals
    overhead = f"{t['overhead_percent']}%" if t.get("overhead_percent") is not None else "-"
    lines = [
        "# Coverage",
        "",
        f"**{t['objects']}** objects, **{t['refs']}** refs, {t['source_bytes']:,} source bytes, "
        f"{t['repo_bytes']:,} repository bytes (overhead {overhead}), **{t['quarantined']}** quarantined, "
        f"**{t.get('deferred', 0)}** waiting; {_axis(cov)}; snapshot `{t.get('snapshot')}` of {t.get('written_at')}.",
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
            if wait[r, c]:
                value += f" ({wait[r, c]} waiting)"
            cells.append(value)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if cov.missing:
        lines += ["", "Missing positions (cell: indexes along the axis):", ""]
        for key, holes in list(cov.missing.items())[:limit]:
            shown = ", ".join(map(str, holes[:20])) + (" ..." if len(holes) > 20 else "")
            lines.append(f"- {dict(zip(cov.dims, key, strict=True))}: {shown}")
    if cov.waiting:
        lines += ["", "Waiting for a gap on their axis to fill:", "", "| object | since | waited |", "|---|---|---|"]
        lines += [f"| `{w['url']}` | {w['since']} | {w['waited']} |" for w in cov.waiting[:limit]]
    if image:
        lines += ["", f"![coverage map](data:image/png;base64,{base64.b64encode(image).decode()})"]
    return "\n".join(lines) + "\n"


MAP_CELLS = 40  # the map shows at most this many rows and columns; more cells are binned together
MAP_LABELLED = 400  # cells on a map that still carry their percentages as text


def _binned(
    frac: np.ndarray,
    quar: np.ndarray,
    wait: np.ndarray,
    rows: list[Any],
    cols: list[Any],
    row_dim: str,
    col_dim: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any], list[Any], str, str]:
    """The folded map with at most MAP_CELLS rows and columns: neighbouring cells are binned (the
    share present averaged, quarantined and waiting objects summed), labelled by their first and
    last values. A cube of 50 x 100 cells would otherwise draw a 48-inch image of 5,000 labels."""

    def bins(n: int) -> list[slice]:
        size = -(-n // MAP_CELLS)
        return [slice(i, min(n, i + size)) for i in range(0, n, size)]

    def label(values: list[Any], part: slice) -> str:
        first, last = values[part.start], values[part.stop - 1]
        return str(first) if part.stop - part.start == 1 else f"{first}-{last}"

    if frac.shape[0] <= MAP_CELLS and frac.shape[1] <= MAP_CELLS:
        return frac, quar, wait, rows, cols, row_dim, col_dim
    rs, cs = bins(frac.shape[0]), bins(frac.shape[1])
    shape = (len(rs), len(cs))
    out_frac, out_quar, out_wait = np.zeros(shape), np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for i, r in enumerate(rs):
        for j, c in enumerate(cs):
            out_frac[i, j] = frac[r, c].mean()
            out_quar[i, j] = quar[r, c].sum()
            out_wait[i, j] = wait[r, c].sum()
    row_labels = [label(rows, r) for r in rs] if len(rows) == frac.shape[0] else rows
    col_labels = [label(cols, c) for c in cs] if len(cols) == frac.shape[1] else cols
    return out_frac, out_quar, out_wait, row_labels, col_labels, row_dim, col_dim


def coverage_png(cov: Coverage, title: str = "") -> bytes:
    """The coverage map as a PNG: one square per cell with the share of the axis present, holes
    outlined in red, quarantined (q) and waiting (w) objects counted; a legend, the axis' name, and
    the snapshot the map is of."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    frac, quar, wait, rows, cols, row_dim, col_dim = _binned(*folded(cov))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(cols) + 3), max(3.0, 0.45 * len(rows) + 2)), dpi=100)
    image = ax.imshow(frac, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    labelled = frac.size <= MAP_LABELLED  # beyond that, colours and outlines only: text would not fit
    for (r, c), value in np.ndenumerate(frac):
        if labelled:
            marks = (f"\n{quar[r, c]}q" if quar[r, c] else "") + (f"\n{wait[r, c]}w" if wait[r, c] else "")
            text = f"{100 * value:.0f}%" + marks
            ax.text(c, r, text, ha="center", va="center", fontsize=7, color="white" if value < 0.6 else "black")
        if value < 1:
            ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], fontsize=7, rotation=90 if len(cols) > 12 else 0)
    ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=7)
    ax.set_xlabel(col_dim)
    ax.set_ylabel(row_dim)
    t = cov.totals
    axis = str(t.get("concat_dim") or "cube")
    heading = title or f"share of the '{axis}' axis present"
    ax.set_title(f"{heading}\nsnapshot {t.get('snapshot')} of {t.get('written_at')}", fontsize=8)
    bar = fig.colorbar(image, ax=ax, fraction=0.04)
    bar.set_label(f"share of the '{axis}' axis ({cov.axis_length} positions) present", fontsize=7)
    legend = [
        Patch(facecolor="none", edgecolor="red", label="holes: positions missing, refused or waiting"),
        Patch(facecolor="none", edgecolor="none", label="Nq: objects quarantined; Nw: objects waiting"),
    ]
    ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=7, frameon=False, ncol=1)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
