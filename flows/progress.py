"""Progress of a running flow, for whoever is watching: the CLI's progress bars, the Prefect UI.

Flows report stages ("parse", "commit") through :func:`start` and :func:`advance`; the CLI installs a reporter that
draws rich progress bars on stderr. Served deployments have no reporter and show progress as a
Prefect progress artifact instead.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Reporter", "advance", "set_reporter", "start"]


class Reporter(Protocol):
    def start(self, stage: str, total: int) -> None: ...

    def advance(self, stage: str, amount: int = 1) -> None: ...


_reporter: Reporter | None = None


def set_reporter(reporter: Reporter | None) -> None:
    global _reporter
    _reporter = reporter


def start(stage: str, total: int) -> None:
    if _reporter is not None:
        _reporter.start(stage, total)


def advance(stage: str, amount: int = 1) -> None:
    if _reporter is not None:
        _reporter.advance(stage, amount)
