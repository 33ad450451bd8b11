"""Kerchunk references of the published cube, for readers that cannot use Icechunk yet.

VirtualiZarr reads main's snapshot back (its Icechunk parser), the native variables (coordinates,
scalars) are loaded and written inline, and every referenced chunk becomes a ``[url, offset, length]``
entry, as ``fsspec``'s ReferenceFileSystem reads them. JSON for small cubes, Parquet (a directory)
for large ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lib.errors import IcefloeError
from lib.ledger import read_schema
from lib.storage import parse_location, source_registry
from lib.validation import NATIVE

if TYPE_CHECKING:
    import icechunk

    from lib.spec import Spec

__all__ = ["export_kerchunk"]


def _registry(spec: Spec) -> Any:
    """Where the parser reads from: the source (for refs) and the repository (for native chunks)."""
    from obspec_utils.registry import ObjectStoreRegistry

    from lib.storage import object_store

    registry = source_registry(spec.source.url, spec.source.storage)
    repo = parse_location(spec.repo.url)
    if repo.scheme == "s3":
        prefix = f"s3://{repo.bucket}"
        stores = dict(registry.map) if hasattr(registry, "map") and registry.map else {}
        stores.setdefault(prefix, object_store(spec.repo.url + "/", spec.repo_storage, rooted=False))
        if parse_location(spec.source.url).scheme == "s3":
            source = parse_location(spec.source.url)
            stores.setdefault(f"s3://{source.bucket}", object_store(spec.source.url, spec.source.storage, rooted=False))
        return ObjectStoreRegistry(stores)
    if parse_location(spec.source.url).scheme == "s3":
        source = parse_location(spec.source.url)
        return ObjectStoreRegistry(
            {
                "file://": object_store("file:///", rooted=False),
                f"s3://{source.bucket}": object_store(spec.source.url, spec.source.storage, rooted=False),
            }
        )
    return registry


def export_kerchunk(repo: icechunk.Repository, spec: Spec, out: Path) -> dict[str, Any]:
    """Write Kerchunk references of main to ``out`` (``.json``, or ``.parquet`` for a directory).

    Raises
    ------
    IcefloeError
        The output's suffix is neither ``.json`` nor ``.parquet``, the cube is empty, or it has
        rectilinear axes (Kerchunk cannot express them).
    """
    from virtualizarr.parsers import IcechunkParser

    suffix = out.suffix.lower()
    if suffix not in (".json", ".parquet"):
        raise IcefloeError(f"{out}: write Kerchunk references to a .json file or a .parquet directory")
    session = repo.readonly_session(branch=spec.repo.branch)
    schema = read_schema(session.store)
    if schema is None:
        raise IcefloeError(f"the cube at {spec.repo.url} is empty: nothing to export")
    if schema.rectilinear:
        raise IcefloeError(
            f"Kerchunk references cannot express the rectilinear chunk grid of {', '.join(schema.rectilinear)} "
            f"(every chunk of a Kerchunk array has one shape): open the cube with Icechunk instead"
        )
    native = sorted({*schema.pattern, *(p for p, v in schema.variables.items() if v.kind == NATIVE and "/" not in p)})
    store = IcechunkParser().parse_session(session, _registry(spec), native_chunks_prefix=f"{spec.repo.url}/chunks")
    vds = store.to_virtual_dataset(loadable_variables=native, decode_times=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    vds.vz.to_kerchunk(str(out), format="json" if suffix == ".json" else "parquet")
    return {
        "path": str(out),
        "format": suffix.lstrip("."),
        "snapshot": session.snapshot_id,
        "variables": sorted(str(v) for v in vds.variables),
        "inlined": native,
    }
