"""Which variables a parser loads as native values, and which it leaves out."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NATIVE_LIMIT_BYTES", "ParseOptions"]

# A variable stored natively is copied into the repository; anything bigger than this stays virtual.
NATIVE_LIMIT_BYTES = 16 * 1024 * 1024

# Layouts whose bytes a reference cannot point at: their values are read and stored natively.
UNREFERENCEABLE = ("compact", "inlined")


@dataclass(frozen=True)
class ParseOptions:
    """What a parser needs from the spec; small and picklable, sent to every worker.

    ``native`` is ``"auto"`` (dimension coordinates, scalars and concat coordinates), ``"none"``
    (concat coordinates only) or a tuple of variable paths (plus the concat coordinates).
    """

    concat: tuple[str, ...] = ()
    rectilinear: tuple[str, ...] = ()
    native: str | tuple[str, ...] = "auto"
    drop: tuple[str, ...] = ()
    fast: bool = True
    extra_native: tuple[str, ...] = ()

    def dropped(self, path: str) -> bool:
        return path in self.drop or path.rsplit("/", 1)[-1] in self.drop

    def is_native(self, path: str, dims: tuple[str, ...], storage: str, nbytes: int) -> bool:
        """Whether a variable's values are loaded and stored natively instead of referenced."""
        name = path.rsplit("/", 1)[-1]
        if storage in UNREFERENCEABLE or path in self.extra_native:
            return True
        if dims == (name,) and name in self.concat:
            return True  # each file may encode its concat coordinate differently: decode, re-encode
        if nbytes > NATIVE_LIMIT_BYTES:
            return False
        if self.native == "none":
            return False
        if isinstance(self.native, tuple):
            return path in self.native or name in self.native
        return len(dims) == 0 or dims == (name,)
