"""The spool: parsed fragments wait on local disk, one file per batch, until their batch is written.

Planning needs every file's coordinates before any reference can be placed, but holding every
file's references in memory would grow with the archive. So each parsed batch goes to disk; a
writing run's small per-file entries wait there too (``kind="entries"``) until planning loads them.
Once planned, the entries and the files' placements go back to disk (``kind="plan"``), and the
assembly reads one batch back at a time, its fragments a slice at a time (:meth:`Spool.slices`).
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["Spool"]

SLICE = 2048  # items pickled together: a batch file is a sequence of slices, readable one at a time


class Spool:
    """A temporary directory of pickled batches (of fragments, or of planned entries), removed on :meth:`close`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="icefloe-spool-", dir=root))

    def write(
        self, batch: int, items: list[Any], kind: str = "fragments", pack: Callable[[list[Any]], Any] | None = None
    ) -> None:
        """Write a batch's items, a slice at a time; ``pack`` turns each slice into what is stored
        (it must iterate over the slice's items, in order)."""
        with open(self._file(batch, kind), "wb") as f:
            for start in range(0, len(items), SLICE):
                part = items[start : start + SLICE]
                pickle.dump(part if pack is None else pack(part), f, protocol=pickle.HIGHEST_PROTOCOL)

    def read(self, batch: int, kind: str = "fragments") -> list[Any]:
        return [item for part in self.slices(batch, kind) for item in part]

    def slices(self, batch: int, kind: str = "fragments") -> Iterator[Any]:
        """A batch's items a slice at a time, in the order they were written (nothing if never written)."""
        target = self._file(batch, kind)
        if not target.exists():
            return
        with open(target, "rb") as f:
            while True:
                try:
                    yield pickle.load(f)  # written by this run only
                except EOFError:
                    return

    def _file(self, batch: int, kind: str) -> Path:
        return self.path / f"{kind}-{batch:06d}.pkl"

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
