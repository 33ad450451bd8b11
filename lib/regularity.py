"""Regular axes: their step, where they have gaps, and how far a value lies from them.

An axis the spec calls regular (``checks.regular``) advances by one step: a fixed step in the cube's
encoding (one day, six hours, 0.5 of anything) or a calendar step (a month, a quarter, a year: 28 to
31 days, leap years included, are one step, never a gap). A :class:`StepModel` turns axis values into
step numbers, so "consecutive" means "step numbers one apart" and a gap is a jump of more than one.

The step is inferred from the spacing the data itself shows: the values within each file, the axis
the cube already has, and, failing those, the new values together. The smallest spacing all of them
are whole multiples of is the step.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["StepModel", "gaps", "infer_step", "reachable", "stretches"]

_TOLERANCE = 1e-6  # of a step: encoded floats may carry rounding noise


@dataclass(frozen=True)
class StepModel:
    """How a regular axis advances.

    ``kind`` is ``"fixed"`` (``step`` in the cube's encoded units) or ``"months"`` (``step`` months);
    ``origin`` is the value step number 0 stands for.
    """

    kind: str
    step: float
    origin: float
    encoding: tuple[tuple[str, Any], ...] = ()

    def numbers(self, values: np.ndarray) -> np.ndarray:
        """Step numbers of encoded values (whole numbers for values on the axis' steps)."""
        values = np.asarray(values)
        if self.kind == "fixed":
            return (values.astype(np.float64) - self.origin) / self.step
        months = _month_numbers(values, dict(self.encoding))
        return (months - self.origin) / self.step

    def steps(self, values: np.ndarray) -> list[int]:
        """The step numbers of values on the axis' steps, as ints."""
        return [int(n) for n in np.round(self.numbers(values))] if np.size(values) else []

    def value_at(self, step: int, *candidates: np.ndarray) -> Any:
        """The value of step number ``step``: the first of the candidate values that falls on it (the
        step number itself if none does)."""
        for values in candidates:
            if np.size(values):
                hit = np.flatnonzero(np.round(self.numbers(values)).astype(np.int64) == step)
                if hit.size:
                    return values[hit[0]]
        return step

    def on_steps(self, values: np.ndarray) -> np.ndarray:
        """Which values fall on the axis' steps."""
        numbers = self.numbers(values)
        return np.abs(numbers - np.round(numbers)) <= _TOLERANCE

    def describe(self) -> str:
        if self.kind == "months":
            return {1: "one month", 3: "three months", 12: "one year"}.get(int(self.step), f"{self.step:g} months")
        return f"{self.step:g} {_unit(dict(self.encoding))}".strip()


def _unit(encoding: dict[str, Any]) -> str:
    units = str(encoding.get("units") or "")
    return units.split(" since ")[0] if " since " in units else units


def _decoded(values: np.ndarray, encoding: dict[str, Any]) -> Any:
    import xarray as xr
    from xarray import conventions

    attrs = {k: encoding[k] for k in ("units", "calendar") if k in encoding}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return conventions.decode_cf_variable("axis", xr.Variable(("axis",), np.asarray(values), attrs)).values


def _month_numbers(values: np.ndarray, encoding: dict[str, Any]) -> np.ndarray:
    """Months since year 0 of each value, or NaN where the value is not a date."""
    if " since " not in str(encoding.get("units") or ""):
        return np.full(np.shape(values), np.nan)
    decoded = _decoded(values, encoding)
    if np.asarray(decoded).dtype.kind == "M":
        stamps = np.asarray(decoded).astype("datetime64[M]").astype(np.int64)  # months since 1970-01
        return stamps.astype(np.float64) + 1970 * 12
    return np.array([v.year * 12 + v.month - 1 for v in np.asarray(decoded).ravel()], dtype=np.float64)


def _spacings(groups: Iterable[np.ndarray]) -> np.ndarray:
    diffs = [np.diff(np.asarray(g, dtype=np.float64)) for g in groups if np.size(g) > 1]
    if not diffs:
        return np.zeros(0)
    out = np.concatenate(diffs)
    return out[out > 0]


def _common_step(spacings: np.ndarray) -> float | None:
    """The largest of the spacings that every spacing is a whole multiple of, or None."""
    if spacings.size == 0:
        return None
    for candidate in np.unique(spacings):  # smallest first
        ratios = spacings / candidate
        if np.all(np.abs(ratios - np.round(ratios)) <= _TOLERANCE * np.maximum(ratios, 1)):
            return float(candidate)
    return None


MONTHLY_DAYS = 27  # spacings of at least this many days, one value per month: a calendar step


def _days_apart(values: np.ndarray, encoding: dict[str, Any]) -> np.ndarray | None:
    """Spacings of sorted encoded time values in days, or None if they are not times."""
    if " since " not in str(encoding.get("units") or "") or np.size(values) < 2:
        return None
    decoded = np.asarray(_decoded(values, encoding))
    if decoded.dtype.kind == "M":
        return np.diff(decoded).astype("timedelta64[s]").astype(np.float64) / 86400
    return np.array([(b - a).total_seconds() / 86400 for a, b in itertools.pairwise(decoded)])


def infer_step(
    axis: np.ndarray, files: Sequence[np.ndarray], encoding: dict[str, Any], union: np.ndarray | None = None
) -> StepModel | None:
    """The step of a regular axis, from the spacing of its values; None if no spacing shows one.

    The evidence is the spacing within the cube's axis and within each new file; when none of them
    holds two values, the spacing of all values together. Times spaced a month or more apart with
    one value per month advance in calendar months (or multiples: quarters, years); anything else by
    the largest fixed step every spacing is a whole multiple of.
    """
    known: list[np.ndarray] = [np.asarray(axis), *(np.asarray(f) for f in files)]
    pool: list[np.ndarray] = [*known, np.asarray(union if union is not None else [])]
    everything = np.unique(np.concatenate([np.ravel(a) for a in pool]))
    if everything.size < 2:
        return None
    inside = [g for g in known if np.size(g) > 1]
    evidence = inside or [everything]
    frozen = tuple(sorted(encoding.items()))
    days = [d for d in (_days_apart(np.sort(g), encoding) for g in evidence) if d is not None and d.size]
    if days and min(float(np.min(d)) for d in days) >= MONTHLY_DAYS:
        months = _month_numbers(everything, encoding)
        if not np.isnan(months).any() and np.unique(months).size == months.size:  # one value per month
            month_evidence = [_month_numbers(np.sort(g), encoding) for g in evidence]
            months_step = _common_step(_spacings(month_evidence))
            if months_step is not None:
                first = np.asarray([np.min(known[0]) if np.size(known[0]) else everything[0]])
                return StepModel("months", months_step, float(_month_numbers(first, encoding)[0]), frozen)
    step = _common_step(_spacings(evidence))
    if step is None:
        return None
    origin = float(np.min(known[0])) if np.size(known[0]) else float(everything[0])
    return StepModel("fixed", step, origin, frozen)


def describe_value(value: Any, encoding: dict[str, Any]) -> str:
    """An axis value as people read it (a date for time axes)."""
    if " since " in str(encoding.get("units") or ""):
        try:
            decoded = np.asarray(_decoded(np.asarray([value]), encoding)).ravel()[0]
            text = str(decoded)
            return text.replace("T00:00:00.000000000", "").replace("T00:00:00", "").replace(" 00:00:00", "")
        except Exception:  # an undecodable value is shown as stored
            pass
    return str(value.item() if hasattr(value, "item") else value)


def gaps(numbers: np.ndarray) -> list[tuple[int, int]]:
    """Where sorted step numbers jump: (index before the jump, steps missing)."""
    ints = np.round(np.asarray(numbers, dtype=np.float64)).astype(np.int64)
    jumps = np.diff(ints)
    return [(int(i), int(j) - 1) for i, j in enumerate(jumps) if j > 1]


def stretches(steps: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted step numbers as stretches without a gap: ``[(first, last), ...]``."""
    runs: list[tuple[int, int]] = []
    for s in steps:
        if runs and s == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], s)
        else:
            runs.append((s, s))
    return runs


def reachable(runs: list[tuple[int, int]], anchor: tuple[int, int], limit: int) -> list[tuple[int, int]]:
    """The stretches chained to the anchor by gaps of at most ``limit`` steps (the anchor included)."""
    body = [r for r in runs if r[0] <= anchor[1] and anchor[0] <= r[1]] or [anchor]
    low, high = min(r[0] for r in body), max(r[1] for r in body)
    for r in sorted(runs, key=lambda r: r[0]):  # forwards
        if r[0] > high and r[0] - high - 1 <= limit:
            body.append(r)
            high = r[1]
    for r in sorted(runs, key=lambda r: -r[1]):  # backwards
        if r[1] < low and low - r[1] - 1 <= limit:
            body.append(r)
            low = r[0]
    return body
