"""Checks run on the staging snapshot before it may be published.

* structural: concat coordinates unique and monotonic, no gaps on axes the spec calls regular,
  every array at the shape the axes say;
* the spot check: sampled chunks read through the cube and, independently, from the source object
  with the format's own library (h5py, scipy's netCDF reader, astropy) -- never through the same
  references -- must be bit-for-bit identical;
* data-quality expectations (Great Expectations), see :mod:`lib.expectations`.

A finding that belongs to particular files quarantines them; a finding about the cube as a whole
blocks the publish.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from lib.assembly import cube_shape
from lib.errors import Failure, StorageError, classify_failure, first_line, store_failure
from lib.hierarchy import array_at, open_root
from lib.layout import Axes, Placement
from lib.parsing.readers import open_source
from lib.validation import CELL, DATA, VIRTUAL, CubeSchema, VariableSchema

if TYPE_CHECKING:
    from obspec_utils.registry import ObjectStoreRegistry
    from zarr.abc.store import Store

__all__ = ["Finding", "SpotSample", "choose_samples", "spot_check", "structural_findings"]


class Scope(StrEnum):
    """Whom a finding is about: files (they are quarantined) or the cube as a whole (the publish is blocked)."""

    FILE = "file"
    CUBE = "cube"


FILE, CUBE = Scope.FILE, Scope.CUBE

# Failures that say nothing about the file being checked: they are raised, never made a finding.
_STORES_DOING = (Failure.OUTAGE, Failure.REFUSED, Failure.NO_CREDENTIALS)


@dataclass
class Finding:
    """One failed check: ``scope`` is "file" (quarantine ``urls``) or "cube" (block the publish)."""

    check: str
    scope: Scope
    message: str
    urls: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "scope": self.scope, "message": self.message, "urls": self.urls}


@dataclass(frozen=True)
class SpotSample:
    """A file to spot-check: where it sits in the cube, its format, and its layout's key."""

    placement: Placement
    format: str
    layout_key: str


def choose_samples(candidates: Iterable[SpotSample], files: int | str, seed: int | None = None) -> list[SpotSample]:
    """Every file if there are at most ``files`` (or ``files == "all"``), else a random ``files`` of
    them -- always at least one file of each distinct layout.

    One pass with reservoir sampling: it holds ``files`` candidates plus one per layout, however
    many files a run added.
    """
    if files == "all":
        return list(candidates)
    wanted = int(files)
    rng = random.Random(seed)
    per_layout: dict[str, tuple[int, SpotSample]] = {}  # a reservoir of one per layout: (seen, pick)
    reservoir: list[SpotSample] = []
    seen = 0
    for c in candidates:
        count, pick = per_layout.get(c.layout_key, (0, c))
        per_layout[c.layout_key] = (count + 1, c if rng.randrange(count + 1) == 0 else pick)
        seen += 1
        if len(reservoir) < wanted:
            reservoir.append(c)
        else:
            j = rng.randrange(seen)
            if j < wanted:
                reservoir[j] = c
    if seen <= wanted:
        return reservoir
    picked = [pick for _, pick in per_layout.values()]
    rest = [c for c in reservoir if all(c is not p for p in picked)]
    return picked + rest[: max(0, wanted - len(picked))]


def _regular_gaps(values: np.ndarray, encoding: dict[str, Any]) -> list[str]:
    """Missing steps on a regular axis, described in decoded units (a calendar month is one step)."""
    from lib.regularity import describe_value, gaps, infer_step

    model = infer_step(values, [], encoding)
    if model is None:
        return []
    return [
        f"{missing} step(s) of {model.describe()} missing between {describe_value(values[i], encoding)} and "
        f"{describe_value(values[i + 1], encoding)}"
        for i, missing in gaps(model.numbers(values))
    ]


def structural_findings(
    store: Store, schema: CubeSchema, axes: Axes, monotonic: Sequence[str], regular: Sequence[str]
) -> list[Finding]:
    """Cube-wide structural checks on the snapshot behind ``store``."""

    from lib.validation import cube_dims

    root = open_root(store)
    findings: list[Finding] = []
    for dim in schema.concat:
        if dim not in root:
            findings.append(Finding("shape", CUBE, f"the concat coordinate '{dim}' is missing from the cube"))
            continue
        coordinate = array_at(root, dim)
        values = np.asarray(coordinate[...])
        findings += _missing_or_repeated(dim, values)
        if dim in monotonic and values.size > 1 and not np.all(values[1:] > values[:-1]):
            bad = int(np.argmax(values[1:] <= values[:-1]))
            findings.append(
                Finding(
                    "monotonic",
                    CUBE,
                    f"coordinate '{dim}' is not strictly increasing at position "
                    f"{bad + 1} ({values[bad]!r} then {values[bad + 1]!r})",
                )
            )
        if dim in regular:
            gaps = _regular_gaps(values, schema.concat_encoding.get(dim, {}))
            if gaps:
                findings.append(
                    Finding(
                        "regular",
                        CUBE,
                        f"axis '{dim}' is declared regular but has gaps: "
                        + "; ".join(gaps[:5])
                        + (" ..." if len(gaps) > 5 else ""),
                    )
                )
    for var in schema.variables.values():
        want = cube_shape(var, schema, axes)
        array = array_at(root, var.path) if var.path in root else None
        got = tuple(array.shape) if array is not None else None
        dims = getattr(array.metadata, "dimension_names", None) if array is not None else None
        if got != want:
            findings.append(Finding("shape", CUBE, f"array '{var.path}' has shape {got}; the axes say {want}"))
        elif tuple(dims or ()) != cube_dims(var, schema):
            findings.append(Finding("shape", CUBE, f"array '{var.path}' has dims {dims}"))
    return findings


def _missing_or_repeated(dim: str, values: np.ndarray) -> list[Finding]:
    """Every concat coordinate: no missing values (NaN, NaT), none repeated."""
    findings = []
    missing = np.isnan(values) if values.dtype.kind in "fcmM" else np.zeros(values.shape, bool)
    if missing.any():
        where = np.flatnonzero(missing)
        findings.append(
            Finding(
                "missing",
                CUBE,
                f"coordinate '{dim}' has {where.size} missing value(s), first at position {int(where[0])}",
            )
        )
    unique, counts = np.unique(values[~missing], return_counts=True)
    if (counts > 1).any():
        repeated = unique[counts > 1]
        findings.append(
            Finding(
                "unique",
                CUBE,
                f"coordinate '{dim}' repeats {repeated.size} value(s), e.g. {repeated[0]!r}",
            )
        )
    return findings


def _native_reader(fmt: str, handle: Any) -> Any:
    """A function (path, region) → raw stored values, using the format's own library."""
    if fmt == "hdf5":
        import h5py

        from lib.codecs import load_filter_plugins

        load_filter_plugins()  # the filters the cube's codecs decode (Blosc, LZ4, Bitshuffle, ...)
        f = h5py.File(handle, "r")
        return lambda path, region: np.asarray(f[path][region]), f.close
    if fmt == "netcdf3":
        from scipy.io import netcdf_file

        f = netcdf_file(handle, "r", mmap=False, maskandscale=False)
        return lambda path, region: np.array(f.variables[path][region]), f.close
    if fmt == "fits":
        from astropy.io import fits

        hdus = fits.open(handle, memmap=False, do_not_scale_image_data=True)
        names: dict[str, int] = {}
        for index, hdu in enumerate(hdus):
            name = hdu.name or str(index)
            names[name if name not in names else f"{name}_{index}"] = index
        return lambda path, region: np.asarray(hdus[names[path]].data)[region], hdus.close
    if fmt == "tiff":
        import tifffile

        tiff = tifffile.TiffFile(handle)
        return lambda path, region: np.asarray(tiff.pages[int(path)].asarray())[region], tiff.close
    if fmt == "grib":
        return _grib_reader(handle)
    raise ValueError(f"no native reader for {fmt}")


class Candidates(list):  # type: ignore[type-arg]
    """Values any one of which the cube's chunk must equal (GRIB: every message, decoded by ecCodes)."""


def _grib_reader(handle: Any) -> Any:
    """ecCodes decodes every message; variable names differ between GRIB tools, values do not."""
    import eccodes

    decoded = Candidates()
    while (message := eccodes.codes_grib_new_from_file(handle)) is not None:
        try:
            decoded.append(np.asarray(eccodes.codes_get_values(message)))
        finally:
            eccodes.codes_release(message)
    return lambda path, region: decoded, lambda: None


def _as_cube_values(raw: np.ndarray, var: VariableSchema) -> np.ndarray:
    """Apply value-changing codecs (FITS scaling) the way the cube's codec pipeline does."""
    for codec in var.metadata["codecs"]:
        if codec["name"] == "numcodecs.fixedscaleoffset":
            from numcodecs import FixedScaleOffset

            conf = codec["configuration"]
            shape = np.shape(raw)
            raw = FixedScaleOffset(**conf).decode(np.ascontiguousarray(raw, dtype=conf["astype"]).tobytes())
            raw = np.reshape(raw, shape)
    return raw


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        return bool(np.array_equal(a64, b64, equal_nan=True))
    return bool(np.array_equal(a, b))


def spot_check(
    store: Store,
    schema: CubeSchema,
    samples: Sequence[SpotSample],
    registry: ObjectStoreRegistry,
    chunks_per_variable: int = 1,
    seed: int | None = None,
) -> list[Finding]:
    """Compare sampled chunks read through the cube with the same data read from each source object.

    Returns one file-scoped finding per object whose values differ or cannot be read back.
    """

    rng = random.Random(seed)
    root = open_root(store)
    findings: list[Finding] = []
    variables = [v for v in schema.by_role(DATA, CELL) if v.kind == VIRTUAL]
    for sample in samples:
        p = sample.placement
        problem = None
        try:
            with open_source(p.url, registry) as handle:
                read, close = _native_reader(sample.format, handle)
                try:
                    for var in variables:
                        problem = _check_variable(root, var, schema, p, read, rng, chunks_per_variable)
                        if problem:
                            break
                finally:
                    close()
        except Exception as e:
            if classify_failure(e) in _STORES_DOING:
                # throttling, an outage or a refusal is the store's doing, not the file's: the check
                # step is retried (or the run fails saying what to fix)
                raise (store_failure(e) or StorageError(str(e))) from e
            # a file that cannot be read back natively cannot be vouched for
            problem = f"it could not be read back with its own library ({type(e).__name__}: {first_line(e)})"
        if problem:
            findings.append(Finding("spot_check", FILE, f"'{p.url}': {problem}", [p.url]))
    return findings


def _check_variable(
    root: Any, var: VariableSchema, schema: CubeSchema, p: Placement, read: Any, rng: random.Random, count: int
) -> str | None:
    file_shape = []
    chunks = [p.chunk_of(var.path, dim, chunk) for dim, chunk in zip(var.dims, var.chunks, strict=True)]
    for dim, size in zip(var.dims, var.shape, strict=True):
        if dim in schema.concat:
            a, b = p.range_of(dim)
            file_shape.append(b - a)
        else:
            file_shape.append(size)
    grid = [math.ceil(s / c) for s, c in zip(file_shape, chunks, strict=True)]
    total = math.prod(grid)  # a file may declare millions of chunks: pick by number, never list them
    for pick in rng.sample(range(total), min(count, total)):
        index = tuple(int(i) for i in np.unravel_index(pick, grid)) if grid else ()
        file_region = tuple(
            slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, file_shape, strict=True)
        )
        cube_region: list[Any] = list(p.cell) if var.role in (DATA, CELL) else []
        for dim, region in zip(var.dims, file_region, strict=True):
            offset = p.range_of(dim)[0] if dim in schema.concat else 0
            cube_region.append(slice(region.start + offset, region.stop + offset))
        where = ", ".join(f"{d} {r.start}:{r.stop}" for d, r in zip(var.dims, file_region, strict=True))
        raw = read(var.path, file_region)
        want = raw if isinstance(raw, Candidates) else _as_cube_values(raw, var)
        try:
            got = np.asarray(array_at(root, var.path)[tuple(cube_region)])
        except Exception as e:
            if classify_failure(e) in _STORES_DOING:
                raise  # reading a reference hit a store failure: not the file's fault
            return (
                f"parser returned different values for variable '{var.path}' ({where or 'scalar'}): "
                f"the cube cannot decode the chunk its reference points at ({type(e).__name__}: {e})"
            )
        if isinstance(want, Candidates):
            same = any(c.size == got.size and _identical(got.ravel(), c.ravel()) for c in want)
            if not same:
                return (
                    f"parser returned different values for variable '{var.path}' ({where or 'scalar'}): "
                    f"the cube reads {_preview(got)}, which no GRIB message of the file holds"
                )
            continue
        if not _identical(got, np.asarray(want)):
            return (
                f"parser returned different values for variable '{var.path}' ({where or 'scalar'}): "
                f"the cube reads {_preview(got)}, the file holds {_preview(np.asarray(want))}"
            )
    return None


def _preview(values: np.ndarray) -> str:
    flat = values.ravel()
    return np.array2string(flat[:4], precision=6, separator=", ") + ("..." if flat.size > 4 else "")
