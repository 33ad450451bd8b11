"""The spool: parsed fragments wait on local disk, one file per batch, until their batch is written.

Planning needs every file's coordinates before any reference can be placed, but holding every
file's references in memory would grow with the archive. So each parsed batch goes to disk; a
writing run's small per-file entries wait there too (``kind="entries"``) until planning loads them.
Once planned, the entries and the files' placements go back to disk (``kind="plan"``), and the
assembly reads one batch back at a time.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["Spool"]


class Spool:
    """A temporary directory of pickled batches (of fragments, or of planned entries), removed on :meth:`close`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="icefloe-spool-", dir=root))

    def write(self, batch: int, items: list[Any], kind: str = "fragments") -> None:
        with open(self._file(batch, kind), "wb") as f:
            pickle.dump(items, f, protocol=pickle.HIGHEST_PROTOCOL)

    def read(self, batch: int, kind: str = "fragments") -> list[Any]:
        target = self._file(batch, kind)
        if not target.exists():
            return []
        with open(target, "rb") as f:
            return pickle.load(f)  # written by this run only

    def _file(self, batch: int, kind: str) -> Path:
        return self.path / f"{kind}-{batch:06d}.pkl"

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
