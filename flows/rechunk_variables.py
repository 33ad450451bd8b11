"""The ``rechunk_variables`` flow: create or bring up to date a cube's native copies."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows import progress
from lib.locks import writer_lock
from lib.spec import load_spec
from tasks.rechunk import rechunk_published


@flow(name="rechunk_variables")
def rechunk_variables(spec: str, names: list[str] | None = None) -> dict[str, Any]:
    """Rewrite the spec's ``native_copies`` into native chunks of their own, in the cube's repository,
    and publish them once sampled chunks compare bit-identical with the virtual data.

    A copy that exists is brought up to date (only what changed since it was written); one that does
    not is made. A rerun after a crash continues where the interrupted run left off.

    Parameters
    ----------
    spec
        Path of the cube's spec file, or the spec's YAML text.
    names
        Only these copies (default: every copy the spec lists).
    """
    loaded = load_spec(spec)
    artifact: Any = create_progress_artifact(0.0, description="icefloe rechunk: native copies")
    written: dict[str, int] = {}

    def report(name: str, done: int, total: int) -> None:  # the command's bars, the UI's progress artifact
        if name not in written:
            progress.start(f"copy {name}", total)
        progress.advance(f"copy {name}", done - written.get(name, 0))
        written[name] = done
        update_progress_artifact(artifact, 100.0 * done / max(total, 1))

    with writer_lock(loaded.repo.url):
        done = rechunk_published(loaded, names, report)
    update_progress_artifact(artifact, 100.0)
    return done
