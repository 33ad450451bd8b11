"""The spool: parsed fragments wait on local disk, one file per batch, until their batch is written.

Planning needs every file's coordinates before any reference can be placed, but holding every
file's references in memory would grow with the archive. So each parsed batch goes to disk and the
run keeps only small per-file entries; the assembly reads one batch back at a time.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from pathlib import Path

from lib.parsing.fragment import Fragment

__all__ = ["Spool"]


class Spool:
    """A temporary directory of pickled fragment batches, removed on :meth:`close`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="icefloe-spool-", dir=root))

    def write(self, batch: int, fragments: list[Fragment]) -> None:
        with open(self.path / f"{batch:06d}.pkl", "wb") as f:
            pickle.dump(fragments, f, protocol=pickle.HIGHEST_PROTOCOL)

    def read(self, batch: int) -> list[Fragment]:
        target = self.path / f"{batch:06d}.pkl"
        if not target.exists():
            return []
        with open(target, "rb") as f:
            return pickle.load(f)  # written by this run only

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
