"""What the ``icefloe`` command shows people on stderr: progress bars, summary and coverage tables."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["Bars", "console", "copies_lines", "coverage_table", "summary_table"]

# tables are never cut to 80 columns when the output is not a terminal (piped, or a CI log)
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


class Bars:
    """Rich progress bars on stderr for the flow's stages."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description:>8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def start(self, stage: str, total: int) -> None:
        if not self.progress.live.is_started:
            self.progress.start()
        self.tasks[stage] = self.progress.add_task(stage, total=max(total, 0))

    def advance(self, stage: str, amount: int = 1) -> None:
        if stage in self.tasks:
            self.progress.advance(self.tasks[stage], amount)

    def stop(self) -> None:
        if self.progress.live.is_started:
            self.progress.stop()


def summary_table(summary: dict[str, Any], title: str) -> None:
    """A build or ingest summary: counts, dims, main, and what was refused or changed."""
    table = Table(title=title, show_header=True, header_style="bold")
    for column in ("discovered", "ingested", "unchanged", "changed", "deferred", "quarantined"):
        table.add_column(column, justify="right")
    table.add_row(
        str(summary.get("discovered", 0)),
        str(summary.get("ingested", 0)),
        str(summary.get("unchanged", 0)),
        str(len(summary.get("changed", []))),
        str(len(summary.get("deferred", []))),
        str(len(summary.get("quarantined", []))),
    )
    console.print(table)
    dims = summary.get("dims") or {}
    if dims:
        console.print("dims: " + " x ".join(f"{d}={n}" for d, n in dims.items()))
    if summary.get("snapshot"):
        console.print(f"main: {summary['snapshot']}" + ("" if summary.get("published") else " (unchanged)"))
    for q in summary.get("quarantined", [])[:20]:
        console.print(f"[yellow]quarantined[/] {escape(q['url'])}\n    {escape(q['reason'])}")
    for d in summary.get("deferred", [])[:20]:
        console.print(f"[cyan]waiting[/] {escape(d['url'])}\n    {escape(d['reason'])}")
    for url in summary.get("replaced", [])[:20]:
        console.print(f"[cyan]re-ingested[/] {url} (its content changed)")
    for s in summary.get("skipped", [])[:20]:
        console.print(f"[yellow]skipped[/] {escape(s['variable'])} of {escape(s['url'])}: {escape(s['reason'])}")
    for f in summary.get("findings", [])[:20]:
        console.print(f"[red]{escape(f['check'])}[/] ({f['scope']}): {escape(f['message'])}")
    for note in summary.get("notes", [])[:10]:
        console.print(f"[dim]note:[/] {escape(note)}")
    for url in summary.get("changed", [])[:20]:
        console.print(f"[cyan]changed[/] {url} (kept with --keep; a run without it re-ingests it)")


def coverage_table(cov: Any, name: str) -> None:
    """The coverage map as a table (pattern cells x the concat axis' share present), the totals, and
    the objects waiting for a gap to fill."""
    from lib.coverage import folded

    frac, quar, wait, rows, cols, row_dim, col_dim = folded(cov)
    t = cov.totals
    kind = ", rectilinear" if t.get("concat_dim") in (t.get("rectilinear") or []) else ""
    table = Table(
        title=f"{name}: coverage of the {t.get('concat_dim') or 'cube'} axis ({cov.axis_length} positions{kind}), "
        f"snapshot {t.get('snapshot')} of {t.get('written_at')}"
    )
    table.add_column(f"{row_dim} \\ {col_dim}")
    for c in cols[:30]:
        table.add_column(str(c), justify="right")
    for r, label in enumerate(rows[:60]):
        cells = []
        for c in range(min(len(cols), 30)):
            text = (
                f"{100 * frac[r, c]:.0f}%"
                + (f" {quar[r, c]}q" if quar[r, c] else "")
                + (f" {wait[r, c]}w" if wait[r, c] else "")
            )
            cells.append(f"[red]{text}[/]" if frac[r, c] < 1 else text)
        table.add_row(str(label), *cells)
    console.print(table)
    overhead = f"{t['overhead_percent']}%" if t.get("overhead_percent") is not None else "-"
    console.print(
        f"{t['objects']} objects, {t['refs']} refs, {t['source_bytes']:,} source bytes, "
        f"{t['repo_bytes']:,} repository bytes (overhead {overhead}), "
        f"{t['quarantined']} quarantined, {t.get('deferred', 0)} waiting (q: quarantined, w: waiting)"
    )
    for w in cov.waiting[:20]:
        console.print(f"[cyan]waiting[/] {w['url']} since {w['since']} ({w['waited']})")


def copies_lines(copies: list[dict[str, Any]], spec: object = "SPEC") -> None:
    """One line per native copy: what a rechunk run wrote (its result), or how current it is (status)."""
    from lib.copies import size_text

    for c in copies:
        name = escape(c["name"])
        if "units" in c:
            console.print(
                f"native copy [bold]{name}[/]: {c['units']} of {c['total_units']} unit(s) written "
                f"({size_text(c['bytes'])}), {100 * c['coverage']:.0f}% current; "
                f"open it with xr.open_zarr(store, group={c['name']!r})"
            )
        elif not c["made"]:
            console.print(f"native copy {name}: not made yet (icefloe rechunk {spec} {c['name']})")
        else:
            stale = f"; {c['stale_units']} unit(s) still to write: run icefloe rechunk" if c["stale_units"] else ""
            console.print(
                f"native copy {name} ({', '.join(c['variables'])}): {100 * c['coverage']:.1f}% of its chunks "
                f"current, as of snapshot {c['current_to']}{stale}"
            )


def plan_lines(plan: dict[str, Any], name: str) -> None:
    """What ``icefloe plan`` found: the counts, the dims after, and what would be refused or wait."""
    table = Table(title=f"plan for {name}")
    counts = {
        "discovered": plan["discovered"],
        "pending": len(plan["pending"]),
        "would ingest": len(plan["would_ingest"]),
        "unchanged": plan["unchanged"],
        **{key: len(plan[key]) for key in ("changed", "deferred", "quarantined")},
    }
    for column in counts:
        table.add_column(column, justify="right")
    table.add_row(*(str(v) for v in counts.values()))
    console.print(table)
    console.print("dims after: " + " x ".join(f"{d}={n}" for d, n in plan["dims"].items()))
    for q in plan["quarantined"][:20]:
        console.print(f"[yellow]would quarantine[/] {escape(q['url'])}\n    {escape(q['reason'])}")
    for d in plan["deferred"][:20]:
        console.print(f"[cyan]would defer[/] {escape(d['url'])}\n    {escape(d['reason'])}")
    for f in plan["findings"][:20]:
        if f["scope"] == "cube":
            console.print(f"[red]would block the publish[/]: {escape(f['message'])}")


def runs_table(runs: list[dict[str, Any]], title: str, rectilinear: list[str]) -> None:
    """``icefloe log``: one row per run, newest first as the cube's log of runs holds them."""
    kind = f" (rectilinear axes: {', '.join(rectilinear)})" if rectilinear else ""
    table = Table(title=title + kind)
    numbers = ("ingested", "quarantined", "deferred", "refs", "seconds")
    for column in ("finished", "operation", *numbers, "snapshot", "flow run"):
        table.add_column(column, justify="right" if column in numbers else "left", no_wrap=True)
    for r in runs:
        table.add_row(
            str(r["finished_at"])[:19].replace("T", " "),
            r["operation"],
            str(r["ingested"]),
            str(r["quarantined"]),
            str(r.get("deferred", 0)),
            str(r["refs"]),
            f"{r['seconds']:.1f}",
            r["snapshot"],
            str(r["flow_run"] or ""),
        )
    console.print(table)
