"""Keeping a process's resident memory close to what it actually uses.

Icechunk's runtime allocates from many threads. glibc gives each thread its own malloc arena (up to
8 per core) and seldom hands freed arena memory back, so a long build's RSS grows with
fragmentation rather than data: committing 2 M refs peaked at 712 MB with the default arenas and
474 MB with two (``benchmarks/RESULTS.md``, P4). :func:`limit_arenas` caps the arenas, as
``MALLOC_ARENA_MAX=2`` would, for every arena created afterwards -- so it is called first thing in
the command and in each parse worker -- and :func:`release` hands free heap pages back after the
steps that drop a lot (planning, each commit). Elsewhere than glibc both do nothing.

:func:`gc_paused` is about time, not size: the commits' hot loops make an object or more per
reference, and Python's cyclic collector, set off every few hundred new objects, spent a third of
the time making a slice's references rechecking them (``benchmarks/RESULTS.md``, P4).
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

__all__ = ["gc_paused", "limit_arenas", "release"]

M_ARENA_MAX = -8  # glibc's mallopt parameter number


@cache
def _glibc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 -- musl and others have no mallopt
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas, unless ``MALLOC_ARENA_MAX`` already says how many; True if set."""
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


def release() -> None:
    """Give the heap's free pages back to the operating system."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector over a burst of allocations that make no reference cycles
    (what they free, reference counting frees). Process-wide while it lasts: keep it short."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
