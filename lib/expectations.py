"""Data-quality expectations (Great Expectations) on the staging snapshot.

An expectation on a coordinate (a concat, shared or pattern coordinate) is checked once on the
whole, decoded axis: a failure is about the cube and blocks the publish. An expectation on any other
variable is checked on each spot-checked file's block of it (decoded, first chunk across the
non-concat dims): a failure belongs to that file and quarantines it. Every cube also gets the
default expectations: each concat coordinate has no missing and no repeated values.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lib.errors import SpecError
from lib.layout import Axes, Placement
from lib.quality import CUBE, FILE, Finding
from lib.validation import CELL, DATA, CubeSchema

if TYPE_CHECKING:
    from lib.spec import Expectation

__all__ = [
    "check_expectation_types",
    "coordinate_findings",
    "coordinate_names",
    "file_findings",
    "new_value_owners",
]

_context: Any = None
_preloading: threading.Thread | None = None


def preload() -> None:
    """Start importing Great Expectations in the background (it takes seconds), so the checks at the
    end of a run do not wait for it."""
    global _preloading
    if _preloading is None:
        _preloading = threading.Thread(target=_import_quietly, name="icefloe-preload-gx", daemon=True)
        _preloading.start()


def _import_quietly() -> None:
    import logging

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations  # noqa: F401


def _class_name(kind: str) -> str:
    return "".join(part.capitalize() for part in kind.split("_"))


def _expectation_class(kind: str) -> Any:
    import great_expectations as gx

    cls = getattr(gx.expectations, _class_name(kind), None)
    if cls is None:
        raise SpecError(f"'{kind}' is not a Great Expectations expectation", key="checks.expectations")
    return cls


def check_expectation_types(expectations: Sequence[Expectation]) -> None:
    """Fail before any I/O if a spec names an expectation Great Expectations does not have.

    Raises
    ------
    SpecError
        An unknown expectation type or arguments it does not take.
    """
    for e in expectations:
        cls = _expectation_class(e.type)
        try:
            cls(column=e.variable, **e.kwargs)
        except Exception as error:
            message = str(error).splitlines()[0]
            raise SpecError(f"expectation {e.type} on '{e.variable}': {message}", key="checks.expectations") from None


def _validator() -> Any:
    """A batch factory on an ephemeral Great Expectations context (no files, no network)."""
    global _context
    if _preloading is not None:
        _preloading.join()
    if _context is None:
        import logging

        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        asset = context.data_sources.add_pandas("icefloe").add_dataframe_asset("values")
        _context = asset.add_batch_definition_whole_dataframe("all")
    return _context


def _validate(
    kind: str, column: str, kwargs: dict[str, Any], values: np.ndarray
) -> tuple[str | None, list[int] | None]:
    """Run one expectation on a column of values: a short failure description (or None), and the
    positions of the unexpected values when the expectation judges value by value (else None)."""
    import pandas as pd

    frame = pd.DataFrame({column: np.asarray(values).ravel()})
    batch = _validator().get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(_expectation_class(kind)(column=column, **kwargs), result_format="COMPLETE")
    if result.success:
        return None, None
    detail = result.result or {}
    count = detail.get("unexpected_count")
    sample = detail.get("partial_unexpected_list") or []
    positions = detail.get("unexpected_index_list")
    where = [int(p) for p in positions] if isinstance(positions, list) and positions else None
    if count is not None:
        total = detail.get("element_count", frame.shape[0])
        return f"{count} of {total} values unexpected, e.g. {sample[:3]}", where
    observed = detail.get("observed_value")
    return (f"observed {observed!r}" if observed is not None else "failed"), None


Owners = Callable[[str, list[int]], set[str] | None]  # (coordinate, positions) -> the files that brought them


def new_value_owners(schema: CubeSchema, old: Axes | None, new: Axes, placements: Iterable[Placement]) -> Owners:
    """Who brought each value a run adds to the cube's coordinates: per coordinate, per position of a
    value the cube did not have before, the files whose blocks hold it. A position of a value the cube
    already had belongs to no file (a failure there is the cube's)."""
    table: dict[str, dict[int, set[str]]] = {}
    places = list(placements)
    for dim, values in new.concat.items():
        before = set(np.asarray(old.concat[dim]).tolist()) if old is not None and dim in old.concat else set()
        added = {p for p, v in enumerate(np.asarray(values).tolist()) if v not in before}
        column = table.setdefault(dim, {})
        for placement in places:
            a, z = placement.range_of(dim)
            for p in range(a, z):
                if p in added:
                    column.setdefault(p, set()).add(placement.url)
    for k, dim in enumerate(schema.pattern):
        before = set(old.pattern.get(dim, [])) if old is not None else set()
        column = table.setdefault(dim, {})
        for placement in places:
            if new.pattern[dim][placement.cell[k]] not in before:
                column.setdefault(placement.cell[k], set()).add(placement.url)

    def owners(variable: str, positions: list[int]) -> set[str] | None:
        column = table.get(variable)
        if column is None or any(p not in column for p in positions):
            return None
        return set().union(*(column[p] for p in positions))

    return owners


def coordinate_names(schema: CubeSchema) -> set[str]:
    """The cube's coordinates: pattern dims, concat coordinates and other dimension coordinates."""
    return set(schema.pattern) | {v.path for v in schema.variables.values() if v.role not in (DATA, CELL)}


def coordinate_findings(
    values_of: Mapping[str, np.ndarray],
    schema: CubeSchema,
    expectations: Sequence[Expectation],
    owners: Owners | None = None,
) -> list[Finding]:
    """The spec's expectations on the cube's decoded coordinates (``values_of``: name → values).

    A failure on values that files of this run brought (``owners`` says which) belongs to those files;
    a failure on values the cube already had, or one no value can be blamed for (an aggregate), is
    the cube's and blocks the publish.
    """
    coords = coordinate_names(schema)
    wanted = [(e.type, e.variable, e.kwargs) for e in expectations if e.variable in coords]
    findings = []
    for kind, variable, kwargs in wanted:
        if variable not in values_of:
            findings.append(
                Finding(
                    f"expectation:{kind}", CUBE, f"expectation {kind} names '{variable}', which the cube does not have"
                )
            )
            continue
        problem, positions = _validate(kind, variable, kwargs, values_of[variable])
        if not problem:
            continue
        urls = owners(variable, positions) if owners is not None and positions else None
        if not urls:
            findings.append(Finding(f"expectation:{kind}", CUBE, f"{kind} on '{variable}': {problem}"))
            continue
        for url in sorted(urls):
            findings.append(
                Finding(
                    f"expectation:{kind}",
                    FILE,
                    f"'{url}': {kind} on '{variable}' fails for the values it brings ({problem})",
                    [url],
                )
            )
    return findings


def file_findings(
    cube: Any, schema: CubeSchema, samples: Sequence[Placement], expectations: Sequence[Expectation]
) -> list[Finding]:
    """Per-file expectations on each sampled file's block of a data variable."""
    coords = coordinate_names(schema)
    wanted = [e for e in expectations if e.variable not in coords]
    findings: list[Finding] = []
    for p in samples:
        for e in wanted:
            var = schema.variables.get(e.variable)
            if var is None:
                findings.append(
                    Finding(
                        f"expectation:{e.type}",
                        CUBE,
                        f"expectation {e.type} names '{e.variable}', which the cube does not have",
                    )
                )
                continue
            region: dict[str, Any] = {d: i for d, i in zip(schema.pattern, p.cell, strict=True)}
            for dim, chunk in zip(var.dims, var.chunks, strict=True):
                region[dim] = slice(*p.range_of(dim)) if dim in schema.concat else slice(0, chunk)
            values = cube[e.variable].isel({k: v for k, v in region.items() if k in cube[e.variable].dims}).values
            problem, _ = _validate(e.type, e.variable, e.kwargs, values)
            if problem:
                findings.append(
                    Finding(f"expectation:{e.type}", FILE, f"'{p.url}': {e.type} on '{e.variable}': {problem}", [p.url])
                )
    return findings
