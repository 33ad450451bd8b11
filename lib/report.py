"""What a run did, as the ``--json`` summary, an exit code and Markdown for a Prefect artifact.

The summary keys are a contract (the README's Commands section): ``discovered = ingested + unchanged + len(changed) +
len(quarantined) + len(deferred)``, ``dims`` lists every dim of the cube, ``snapshot`` is main's tip after the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["EXIT_BAD_SPEC", "EXIT_DRIFT", "EXIT_FAILED", "EXIT_OK", "EXIT_QUARANTINED", "Operation", "RunSummary"]

EXIT_OK, EXIT_FAILED, EXIT_BAD_SPEC, EXIT_QUARANTINED, EXIT_DRIFT = 0, 1, 2, 3, 4

Operation = Literal["build", "ingest", "nativize", "rechunk"]  # what a run does; recorded in its commits


@dataclass
class RunSummary:
    """The outcome of a build or ingest."""

    operation: Operation
    branch: str = "main"
    snapshot: str | None = None
    discovered: int = 0
    ingested: int = 0
    unchanged: int = 0
    changed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    deferred: list[dict[str, str]] = field(default_factory=list)
    quarantined: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    dims: dict[str, int] = field(default_factory=dict)
    published: bool = False
    refs: int = 0
    fast_path: int = 0
    parsed: int = 0
    findings: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    previously_quarantined: int = 0
    copies: list[dict[str, Any]] = field(default_factory=list)  # native copies brought along (lib.copies)
    error: str | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return EXIT_FAILED
        return EXIT_QUARANTINED if self.quarantined or self.changed else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "snapshot": self.snapshot,
            "branch": self.branch,
            "discovered": self.discovered,
            "ingested": self.ingested,
            "unchanged": self.unchanged,
            "changed": self.changed,
            "replaced": self.replaced,
            "deferred": self.deferred,
            "quarantined": self.quarantined,
            "skipped": self.skipped,
            "dims": self.dims,
            "operation": self.operation,
            "published": self.published,
            "refs": self.refs,
            "fast_path_share": round(self.fast_path / self.parsed, 4) if self.parsed else None,
            "previously_quarantined": self.previously_quarantined,
            "findings": self.findings,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }
        if self.copies:
            out["copies"] = self.copies
        if self.error is not None:
            out["error"] = self.error
        return out

    def markdown(self) -> str:
        """A report for the Prefect UI: counts, dims, quarantined objects and skipped variables."""
        status = "published" if self.published else ("failed: " + self.error if self.error else "nothing to publish")
        lines = [
            f"# icefloe {self.operation}: {status}",
            "",
            "| discovered | ingested | unchanged | changed | deferred | quarantined | refs | main |",
            "|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| {self.discovered} | {self.ingested} | {self.unchanged} | {len(self.changed)} | "
            f"{len(self.deferred)} | {len(self.quarantined)} | {self.refs} | `{self.snapshot or '-'}` |",
            "",
            "**dims:** " + (", ".join(f"{d}={n}" for d, n in self.dims.items()) or "-"),
        ]
        if self.parsed:
            lines.append(f"\n**parser:** {self.fast_path}/{self.parsed} object(s) took the fast path")
        if self.quarantined:
            lines += ["", "## Quarantined", "", "| object | reason |", "|---|---|"]
            lines += [f"| `{q['url']}` | {_cell(q['reason'])} |" for q in self.quarantined[:200]]
        if self.deferred:
            lines += ["", "## Deferred (waiting for a gap on their axis to fill)", "", "| object | why |", "|---|---|"]
            lines += [f"| `{d['url']}` | {_cell(d['reason'])} |" for d in self.deferred[:200]]
        if self.replaced:
            lines += ["", "## Re-ingested (their content changed)", ""] + [f"- `{u}`" for u in self.replaced[:200]]
        if self.findings:
            lines += ["", "## Check findings", "", "| check | scope | finding |", "|---|---|---|"]
            lines += [f"| {f['check']} | {f['scope']} | {_cell(f['message'])} |" for f in self.findings[:200]]
        if self.skipped:
            lines += ["", "## Skipped variables", "", "| object | variable | reason |", "|---|---|---|"]
            lines += [f"| `{s['url']}` | `{s['variable']}` | {_cell(s['reason'])} |" for s in self.skipped[:200]]
        if self.changed:
            lines += ["", "## Changed since ingest, kept (--keep)", ""] + [f"- `{u}`" for u in self.changed[:200]]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {_cell(n)}" for n in self.notes[:200]]
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
