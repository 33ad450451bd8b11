"""A test-only fault hook: kill this process with SIGKILL at a named point of a run.

Set ``ICEFLOE_KILL_AT`` to one of :data:`POINTS` to make a run kill itself there, exactly as a
crash, an OOM kill or a lost machine would: no cleanup, no exception handlers, no ``finally``. The
crash-safety tests use it to prove that rerunning the same command finishes the job with every
object in the cube exactly once. Never set it in production.
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["COPY_POINTS", "HANG_ENV", "KILL_ENV", "POINTS", "checkpoint", "hang_if_asked", "hooks_in_effect"]

KILL_ENV = "ICEFLOE_KILL_AT"
POINTS = (
    "parsed",  # every batch parsed, nothing written
    "moving",  # the arrays grown and references moved to open room, the prepare commit not made
    "refs-half-written",  # earlier batches committed; the middle batch's refs written but not committed
    "staging-committed",  # every batch committed to staging, no check run
    "checks-done",  # checks run (and quarantines committed), main not moved
    "publishing",  # about to move main
)
COPY_POINTS = ("copy-round",)  # `icefloe rechunk`: a copy's first round of units on staging, the rest not written


def checkpoint(point: str) -> None:
    """Kill this process with SIGKILL if ``ICEFLOE_KILL_AT`` names ``point``."""
    if os.environ.get(KILL_ENV) == point:
        sys.stderr.write(f"icefloe: {KILL_ENV}={point}: killing this process\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


HANG_ENV = "ICEFLOE_TEST_HANG_ON"


def hang_if_asked(url: str) -> None:
    """Test-only: a parser worker stuck on one object (``ICEFLOE_TEST_HANG_ON`` names its path) never returns."""
    target = os.environ.get(HANG_ENV)
    if target and url.endswith(target):
        import time

        time.sleep(24 * 3600)


def hooks_in_effect() -> dict[str, str | None]:
    """The test hooks this process was given (None where unset), for worker processes to take over."""
    return {name: os.environ.get(name) for name in (KILL_ENV, HANG_ENV)}
