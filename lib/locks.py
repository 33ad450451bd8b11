"""One writer per cube on this machine: an advisory file lock, released even when a writer is killed.

Prefect's deployment concurrency limit keeps served runs one at a time; this lock does the same for
command-line runs, which bypass Prefect's limits. Writers on other machines are kept honest by the
compare-and-swaps on every branch move (see :mod:`lib.repository`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["writer_lock"]


def lock_dir() -> Path:
    base = os.environ.get("ICEFLOE_STATE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "icefloe"
    )
    path = Path(base) / "locks"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def writer_lock(repo_url: str, on_wait: Callable[[], None] | None = None, poll: float = 0.5) -> Iterator[None]:
    """Hold the cube's writer lock; wait (calling ``on_wait`` once) while another writer holds it."""
    name = hashlib.sha256(repo_url.encode()).hexdigest()[:24]
    path = lock_dir() / f"{name}.lock"
    with open(path, "a+") as handle:
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                time.sleep(poll)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()} {repo_url}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
