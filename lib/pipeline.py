"""The steps of one build or ingest, in order: the one place that says which step follows which.

::

    open → discover → parse (per batch) → plan → prepare → commit (per batch) → nativize → check → rechunk
    → publish

Each step is a method of :class:`~lib.runs.CubeRun` with the step's name. The Prefect flows run each
step as a task (``flows/update_cube.py``); ``icefloe plan`` and the tests run them directly. All of
them go through :func:`run_steps`, so the order cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lib.runs import CubeRun

__all__ = ["Perform", "Step", "run_steps"]


class Step(StrEnum):
    """A step of the pipeline; its value is the name of the :class:`~lib.runs.CubeRun` method."""

    OPEN = "open"  # open the repository; resume unfinished staging work or start from main
    DISCOVER = "discover"  # list the source (or look up named objects), sort against the ledger
    PARSE = "parse"  # one batch of objects into fragments, over the executor
    PLAN = "plan"  # validate every fragment, lay out the axes; nothing is written
    PREPARE = "prepare"  # create or grow the arrays, record quarantines: one staging commit
    COMMIT = "commit"  # one batch's references and ledger rows: one staging commit
    NATIVIZE = "nativize"  # optionally store small referenced coordinates natively
    CHECK = "check"  # structural checks, spot check, expectations; file findings taken out
    RECHUNK = "rechunk"  # bring the native copies along with what changed, and compare them with it
    PUBLISH = "publish"  # compare-and-swap main to the checked snapshot


ORDER = tuple(Step)
Perform = Callable[..., Any]  # (step, *args) -> the step's result


def run_steps(run: CubeRun, perform: Perform | None = None, until: Step = Step.PUBLISH) -> None:
    """Run ``run``'s steps in order, up to and including ``until``.

    ``perform(step, *args)`` runs one step (a Prefect task, say); by default the run's own method.
    Parse and commit run once per batch, with the batch's number.
    """

    def do(step: Step, *args: Any) -> Any:
        return perform(step, *args) if perform is not None else getattr(run, step.value)(*args)

    last = ORDER.index(until)
    for step in ORDER[: last + 1]:
        if step == Step.PARSE:
            for batch in range(len(run.batches)):
                do(step, batch)
        elif step == Step.COMMIT:
            for batch in range(len(run.plan_.batches) if run.plan_ is not None else 0):
                do(step, batch)
        else:
            do(step)
