"""The cube's Zarr hierarchy, typed: the root group of a store and the arrays in it.

Zarr's ``group[path]`` may be an array or a group; a cube's variables are always arrays, so
:func:`array_at` says so once, and fails with the path if the hierarchy is not what icefloe wrote.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import zarr
    from zarr.abc.store import Store

__all__ = ["allow_rectilinear", "array_at", "open_root"]


def open_root(store: Store, mode: Literal["r", "r+", "a", "w"] = "r", **kwargs: object) -> zarr.Group:
    """The root group of the cube behind ``store`` (Zarr v3)."""
    import zarr

    return zarr.open_group(store, mode=mode, zarr_format=3, **kwargs)  # type: ignore[arg-type]


def array_at(group: zarr.Group, path: str) -> zarr.Array:
    """The array at ``path`` below ``group``.

    Raises
    ------
    TypeError
        ``path`` is a group: the cube's hierarchy is not the one icefloe wrote.
    """
    import zarr

    node = group[path]
    if not isinstance(node, zarr.Array):
        raise TypeError(f"'{path}' in the cube is a group, not an array")
    return node


def allow_rectilinear() -> None:
    """Let Zarr read rectilinear chunk grids (cubes with ``rectilinear:`` axes use them).

    Zarr 3.4 keeps them behind the ``array.rectilinear_chunks`` option, which this sets for the
    process, as ``ZARR_ARRAY__RECTILINEAR_CHUNKS=True`` in the environment would.
    """
    import zarr

    zarr.config.set({"array.rectilinear_chunks": True})
