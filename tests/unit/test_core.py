"""The pure core, table-driven: schema comparison, concat-coordinate encoding, manifest splitting,
the run history and the store's error codes.

No repository and no file: every input is built by hand, shaped like what the parsers and Icechunk
produce, so the whole module runs in well under a second.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
from typing import Any

import icechunk
import numpy as np
import obstore.exceptions as obstore_errors
import pytest

import lib.validation
from lib.errors import service_codes
from lib.layout import Axes
from lib.planning import Plan
from lib.repository import run_history
from lib.staging import manifest_split
from lib.validation import (
    CELL,
    CONCAT,
    DATA,
    NATIVE,
    SHARED,
    VIRTUAL,
    ConcatCoordinate,
    CubeSchema,
    FileEntry,
    Kind,
    Role,
    VariableSchema,
    compare_schemas,
    cube_encoding,
    encode_concat_values,
)

URL = "s3://archive/2003/0911.nc"

# ---------------------------------------------------------------------------------------------------
# compare_schemas
# ---------------------------------------------------------------------------------------------------

BYTES = [{"name": "bytes", "configuration": {"endian": "little"}}]


def zlib(level: int) -> list[dict[str, Any]]:
    return [*BYTES, {"name": "numcodecs.zlib", "configuration": {"level": level}}]


def zarr_json(
    dims: list[str],
    shape: list[int],
    chunks: list[int] | None = None,
    data_type: str = "float32",
    codecs: list[dict[str, Any]] | None = None,
    fill_value: Any = 0.0,
    attributes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A variable's zarr.json as the parsers give it."""
    return {
        "shape": list(shape),
        "data_type": data_type,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks or shape)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill_value,
        "codecs": copy.deepcopy(codecs if codecs is not None else BYTES),
        "attributes": dict(attributes or {}),
        "dimension_names": list(dims),
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def schema(time: int = 10, lat: int = 4) -> CubeSchema:
    """A cube of ``tas(time, lat)``, referenced and zlib-compressed, with native ``time`` and ``lat``."""
    variables = {
        "time": VariableSchema(
            "time",
            CONCAT,
            NATIVE,
            zarr_json(["time"], [time], data_type="int64", fill_value=0, attributes={"units": "days since 2000-01-01"}),
        ),
        "lat": VariableSchema("lat", SHARED, NATIVE, zarr_json(["lat"], [lat], data_type="float64", fill_value="NaN")),
        "tas": VariableSchema(
            "tas",
            DATA,
            VIRTUAL,
            zarr_json(
                ["time", "lat"],
                [time, lat],
                chunks=[1, lat],
                codecs=zlib(4),
                fill_value=1e20,
                attributes={"long_name": "air temperature"},
            ),
        ),
    }
    return CubeSchema(pattern={"year": "int"}, concat=("time",), variables=variables)


def variant(
    path: str = "tas",
    *,
    role: Role | None = None,
    kind: Kind | None = None,
    chunks: list[int] | None = None,
    attributes: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    add: tuple[str, ...] = (),
    **metadata: Any,
) -> CubeSchema:
    """The default schema with one variable changed (or variables dropped or added)."""
    out = schema()
    v = out.variables[path]
    v.role = role or v.role
    v.kind = kind or v.kind
    v.metadata.update(metadata)
    if chunks is not None:
        v.metadata["chunk_grid"]["configuration"]["chunk_shape"] = chunks
    v.metadata["attributes"].update(attributes or {})
    for name in drop:
        del out.variables[name]
    for name in add:
        out.variables[name] = VariableSchema(name, CELL, VIRTUAL, zarr_json(["lat"], [4], codecs=zlib(4)))
    return out


# attribute, value in the file, as the message shows it, value in the cube, as the message shows it
ENCODING_VALUES = [
    ("units", "K", "'K'", "degC", "'degC'"),
    ("calendar", "noleap", "'noleap'", "360_day", "'360_day'"),
    ("scale_factor", 0.01, "0.01", 0.1, "0.1"),
    ("add_offset", 273.15, "273.15", 0.0, "0.0"),
    ("_FillValue", "AAAAgB2vFUQ=", "'AAAAgB2vFUQ='", "AAAAAAAA+H8=", "'AAAAAAAA+H8='"),
    ("missing_value", -999.0, "-999.0", 1e20, "1e+20"),
]


def _attribute_rows() -> list[Any]:
    rows = []
    for key, mine, mine_shown, theirs, theirs_shown in ENCODING_VALUES:
        where = f"variable 'tas' in '{URL}' has attribute {key}"
        rows += [
            pytest.param(
                variant(attributes={key: mine}),
                schema(),
                f"{where} {mine_shown}; the cube has none",
                id=f"{key} in the file only",
            ),
            pytest.param(
                schema(),
                variant(attributes={key: theirs}),
                f"{where} none; the cube has {theirs_shown}",
                id=f"{key} in the cube only",
            ),
            pytest.param(
                variant(attributes={key: mine}),
                variant(attributes={key: theirs}),
                f"{where} {mine_shown}; the cube has {theirs_shown}",
                id=f"{key} differs",
            ),
            pytest.param(variant(attributes={key: mine}), variant(attributes={key: mine}), None, id=f"{key} equal"),
        ]
    return rows


SCHEMA_CASES = [
    pytest.param(schema(), schema(), None, id="identical"),
    pytest.param(
        variant(attributes={"long_name": "near-surface air temperature"}), schema(), None, id="other long_name"
    ),
    pytest.param(schema(time=3), schema(time=10), None, id="concat dim length differs"),
    pytest.param(
        schema(lat=3),
        schema(lat=4),
        f"variable 'lat' in '{URL}' has shape [3]; the cube has [4]",
        id="lat length differs",
    ),
    pytest.param(
        variant(shape=[10, 3], chunks=[1, 3]),
        schema(),
        f"variable 'tas' in '{URL}' has shape [null, 3]; the cube has [null, 4]",
        id="non-concat length of a data variable differs",
    ),
    pytest.param(
        variant(drop=("tas", "lat")),
        schema(),
        f"'{URL}' lacks variable 'lat' that the cube has",
        id="missing variables",
    ),
    pytest.param(
        variant(add=("orog", "height")),
        schema(),
        f"'{URL}' has variable 'height' that the cube does not have (list it under variables.drop to leave it out)",
        id="extra variables",
    ),
    pytest.param(
        variant(data_type="float64"),
        schema(),
        f"variable 'tas' in '{URL}' has dtype 'float64'; the cube has 'float32'",
        id="dtype",
    ),
    pytest.param(
        variant(chunks=[2, 4]),
        schema(),
        f"variable 'tas' in '{URL}' has chunks [2, 4]; the cube has [1, 4]",
        id="chunks",
    ),
    pytest.param(
        variant(codecs=zlib(9)),
        schema(),
        f"variable 'tas' in '{URL}' has codecs [bytes({{'endian': 'little'}}), numcodecs.zlib({{'level': 9}})]; "
        f"the cube has [bytes({{'endian': 'little'}}), numcodecs.zlib({{'level': 4}})]",
        id="zlib level 9 vs 4",
    ),
    pytest.param(
        variant(codecs=BYTES),
        schema(),
        f"variable 'tas' in '{URL}' has codecs [bytes({{'endian': 'little'}})]; "
        f"the cube has [bytes({{'endian': 'little'}}), numcodecs.zlib({{'level': 4}})]",
        id="uncompressed vs zlib",
    ),
    pytest.param(
        variant(fill_value=-999.0),
        schema(),
        f"variable 'tas' in '{URL}' has fill_value -999.0; the cube has 1e+20",
        id="fill value",
    ),
    pytest.param(
        variant(fill_value=-999.0, attributes={"_FillValue": "AAAAAAAA+H8="}),
        schema(),
        f"variable 'tas' in '{URL}' has fill_value -999.0; the cube has 1e+20",
        id="several differences: the first is named",
    ),
    pytest.param(
        variant(dimension_names=["time", "lon"]),
        schema(),
        f'variable \'tas\' in \'{URL}\' has dims ["time", "lon"]; the cube has ["time", "lat"]',
        id="dims",
    ),
    *_attribute_rows(),
    pytest.param(
        schema(),
        variant(kind=NATIVE),
        f"variable 'tas' in '{URL}' is referenced; the cube has it native",
        id="referenced in the file, native in the cube",
    ),
    pytest.param(
        variant(kind=NATIVE),
        schema(),
        f"variable 'tas' in '{URL}' is stored natively; the cube has it referenced",
        id="native in the file, referenced in the cube",
    ),
    # native variables are compared after CF decoding: their storage does not matter, their dtype does
    pytest.param(variant("lat", codecs=zlib(9), chunks=[2]), schema(), None, id="native lat stored otherwise"),
    pytest.param(
        variant("lat", data_type="float32"),
        schema(),
        f"variable 'lat' in '{URL}' has dtype 'float32'; the cube has 'float64'",
        id="native lat dtype",
    ),
    # the concat coordinate is re-encoded into the cube's units, not compared
    pytest.param(
        variant("time", attributes={"units": "hours since 2000-01-01"}, data_type="float64"),
        schema(),
        None,
        id="concat coordinate in other units",
    ),
    pytest.param(
        variant(role=CELL, dimension_names=["lat"], shape=[4], chunks=[4]),
        schema(),
        f"variable 'tas' in '{URL}' has role 'cell'; the cube has 'data'",
        id="role",
    ),
]


@pytest.mark.parametrize(("file_schema", "cube", "expected"), SCHEMA_CASES)
def test_compare_schemas(file_schema: CubeSchema, cube: CubeSchema, expected: str | None) -> None:
    assert compare_schemas(file_schema, cube, URL) == expected


def test_compare_schemas_survives_the_cube_schema_round_trip() -> None:
    """The cube's schema is read back from JSON; a file still fits it, and a misfit is still named."""
    stored = CubeSchema.from_json(schema().to_json())
    assert compare_schemas(schema(), stored, URL) is None
    assert compare_schemas(variant(chunks=[2, 4]), stored, URL) == (
        f"variable 'tas' in '{URL}' has chunks [2, 4]; the cube has [1, 4]"
    )


# ---------------------------------------------------------------------------------------------------
# cube_encoding, encode_concat_values
# ---------------------------------------------------------------------------------------------------

DAYS = {"units": "days since 2000-01-01"}
HOURS = {"units": "hours since 2000-01-01"}
F = "s3://archive/f.nc"


def entry(url: str, raw: Any, attrs: dict[str, Any], dim: str = "time") -> FileEntry:
    return FileEntry(
        url=url,
        etag="e",
        size=1,
        checksum=None,
        fields=(),
        format="netcdf4",
        parser="hdf5",
        schema_key="s",
        layout_key="l",
        concat={dim: ConcatCoordinate(np.asarray(raw), dict(attrs))},
        shared={},
        cell={},
        ref_count=1,
    )


@pytest.mark.parametrize(
    ("raw", "attrs", "expected"),
    [
        pytest.param([0, 1], DAYS, {**DAYS, "dtype": "<i8"}, id="int64 days"),
        pytest.param(np.array([0, 1], "i4"), DAYS, {**DAYS, "dtype": "<i4"}, id="int32 days"),
        pytest.param([0.0, 0.5], HOURS, {**HOURS, "dtype": "<f8"}, id="float hours"),
        pytest.param(
            [0, 1], {**DAYS, "calendar": "noleap"}, {**DAYS, "calendar": "noleap", "dtype": "<i8"}, id="noleap"
        ),
        pytest.param(
            np.array([0, 2], "i2"),
            {**DAYS, "scale_factor": 0.5, "add_offset": 1.0},
            {**DAYS, "scale_factor": 0.5, "add_offset": 1.0, "dtype": "<i2"},
            id="packed",
        ),
    ],
)
def test_cube_encoding_is_the_first_files_own(raw: Any, attrs: dict[str, Any], expected: dict[str, Any]) -> None:
    assert cube_encoding(ConcatCoordinate(np.asarray(raw), dict(attrs)), "time") == expected


XARRAY = "(…)"  # xarray's own words, between the parts icefloe writes
CUBE_DAYS = f"in the cube's encoding (units {DAYS['units']!r}, dtype int64)"


@pytest.mark.parametrize(
    ("raw", "attrs", "cube", "expected"),
    [
        pytest.param([3, 4], DAYS, ([0], DAYS), np.array([3, 4]), id="same units"),
        pytest.param([0, 1], {"units": "days since 2000-01-05"}, ([0], DAYS), np.array([4, 5]), id="other epoch"),
        pytest.param([0, 24, 48], HOURS, ([0], DAYS), np.array([0, 1, 2]), id="whole days in hours"),
        pytest.param(
            [12],
            HOURS,
            ([0], DAYS),
            f"coordinate 'time' in '{F}' (units 'hours since 2000-01-01') cannot be represented exactly {XARRAY} {CUBE_DAYS}",
            id="half a day",
        ),
        pytest.param(
            [0, 1],
            {**DAYS, "calendar": "noleap"},
            ([0], {**DAYS, "calendar": "proleptic_gregorian"}),
            f"coordinate 'time' in '{F}' (units 'days since 2000-01-01', calendar 'noleap') cannot be represented "
            "exactly in the cube's encoding (units 'days since 2000-01-01', calendar 'proleptic_gregorian', dtype int64)",
            id="noleap into proleptic_gregorian",
        ),
        pytest.param(
            [60, 61],
            {**DAYS, "calendar": "proleptic_gregorian"},
            ([0], {**DAYS, "calendar": "noleap"}),
            f"coordinate 'time' in '{F}' (units 'days since 2000-01-01', calendar 'proleptic_gregorian') cannot be "
            "represented exactly in the cube's encoding (units 'days since 2000-01-01', calendar 'noleap', dtype int64)",
            id="proleptic_gregorian into noleap",
        ),
        pytest.param(
            [0, -1],
            {**DAYS, "_FillValue": -1},
            ([0], DAYS),
            f"coordinate 'time' in '{F}' has missing values (NaN/NaT, or its fill value): a file cannot be placed "
            "without its coordinates",
            id="fill value",
        ),
        pytest.param(
            [0.0, np.nan],
            DAYS,
            ([0], DAYS),
            f"coordinate 'time' in '{F}' has missing values (NaN/NaT, or its fill value): a file cannot be placed "
            "without its coordinates",
            id="NaN",
        ),
        pytest.param(
            [1.0, np.nan],
            {},
            ([0.0], {}),
            f"coordinate 'time' in '{F}' has missing values (NaN/NaT, or its fill value): a file cannot be placed "
            "without its coordinates",
            id="NaN in a coordinate that is not a time",
        ),
        pytest.param([1.0, 2.5], {}, ([0.0], {}), np.array([1.0, 2.5]), id="a coordinate that is not a time"),
        pytest.param([0.0, 1.0], DAYS, ([0], DAYS), np.array([0, 1]), id="float stored, int cube"),
        pytest.param([0, 1], DAYS, ([0.0], DAYS), np.array([0.0, 1.0]), id="int stored, float cube"),
        pytest.param(np.array([0, 1], "i4"), DAYS, ([0], DAYS), np.array([0, 1]), id="int32 stored, int64 cube"),
        pytest.param(
            [0.5],
            DAYS,
            ([0], DAYS),
            f"coordinate 'time' in '{F}' (units 'days since 2000-01-01') cannot be represented exactly {XARRAY} {CUBE_DAYS}",
            id="half a day stored as float, int cube",
        ),
    ],
)
def test_encode_concat_values(
    raw: Any, attrs: dict[str, Any], cube: tuple[list[Any], dict[str, Any]], expected: np.ndarray | str
) -> None:
    encoding = cube_encoding(ConcatCoordinate(np.asarray(cube[0]), cube[1]), "time")
    e = entry(F, raw, attrs)
    failures = encode_concat_values([e], "time", encoding)
    if isinstance(expected, str):
        assert list(failures) == [F] and "time" not in e.encoded
        before, quoted, after = expected.partition(XARRAY)
        if quoted:
            assert failures[F].startswith(before + "(") and failures[F].endswith(")" + after), failures[F]
        else:
            assert failures[F] == expected
    else:
        assert failures == {}
        assert e.encoded["time"].dtype == np.dtype(encoding["dtype"])
        np.testing.assert_array_equal(e.encoded["time"], expected, strict=True)


def test_a_concat_coordinate_in_other_units_is_converted_or_refused() -> None:
    encoding = cube_encoding(ConcatCoordinate(np.array([0.0, 500.0]), {"units": "m"}), "depth")
    e = entry(F, [1.0, 2.0], {"units": "km"}, dim="depth")
    failures = encode_concat_values([e], "depth", encoding)
    if failures:
        assert "'km'" in failures[F] and "'m'" in failures[F]
    else:
        assert e.encoded["depth"].tolist() == [1000.0, 2000.0]  # never 1 and 2 on an axis in metres


def test_encode_concat_values_refuses_a_file_without_the_coordinate() -> None:
    e = entry(F, [0], DAYS, dim="step")
    assert encode_concat_values([e], "time", {**DAYS, "dtype": "<i8"}) == {
        F: f"'{F}' has no coordinate variable for the concat dimension 'time'"
    }
    assert e.encoded == {}


def test_files_sharing_an_encoding_are_decoded_together_and_each_gets_its_own_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoding = {**DAYS, "dtype": "<i8"}

    def run(files: int) -> tuple[list[FileEntry], dict[str, str], int]:
        calls = []
        decode = lib.validation._decode
        monkeypatch.setattr(lib.validation, "_decode", lambda *a: calls.append(a) or decode(*a))
        hourly = [entry(f"s3://a/h{i}.nc", [24 * (3 * i + k) for k in range(i % 3 + 1)], HOURS) for i in range(files)]
        shifted = entry("s3://a/shifted.nc", [0], {"units": "days since 2000-01-05"})
        gap = entry("s3://a/gap.nc", [1.0, np.nan], HOURS)
        entries = [hourly[0], shifted, *hourly[1:], gap]
        return entries, encode_concat_values(entries, "time", encoding), len(calls)

    entries, failures, calls = run(6)
    assert list(failures) == ["s3://a/gap.nc"]
    assert "missing values" in failures["s3://a/gap.nc"]
    got = {e.url: e.encoded["time"].tolist() for e in entries if e.url not in failures}
    assert got == {
        "s3://a/h0.nc": [0],
        "s3://a/shifted.nc": [4],
        "s3://a/h1.nc": [3, 4],
        "s3://a/h2.nc": [6, 7, 8],
        "s3://a/h3.nc": [9],
        "s3://a/h4.nc": [12, 13],
        "s3://a/h5.nc": [15, 16, 17],
    }
    assert run(60)[2] == calls  # one decoding per distinct encoding, whatever the number of files


def test_one_inexact_file_does_not_refuse_the_files_sharing_its_encoding() -> None:
    exact = entry("s3://a/exact.nc", [0, 24], HOURS)
    inexact = entry("s3://a/inexact.nc", [36], HOURS)
    failures = encode_concat_values([exact, inexact], "time", {**DAYS, "dtype": "<i8"})
    assert list(failures) == ["s3://a/inexact.nc"]
    assert exact.encoded["time"].tolist() == [0, 1]


# ---------------------------------------------------------------------------------------------------
# manifest_split
# ---------------------------------------------------------------------------------------------------


def split_plan(
    pattern: dict[str, int], concat: dict[str, int], data: dict[str, tuple[Kind, dict[str, int]]], files: int
) -> Plan:
    """A plan over a cube with these pattern dims and concat axes (sizes) and data variables
    (kind, chunk size per dim), placing ``files`` files."""
    variables = {
        name: VariableSchema(
            name, DATA, kind, zarr_json(list(chunks), [concat.get(d, 4) for d in chunks], chunks=list(chunks.values()))
        )
        for name, (kind, chunks) in data.items()
    }
    cube = CubeSchema(pattern={d: "int" for d in pattern}, concat=tuple(concat), variables=variables)
    axes = Axes(
        pattern={d: list(range(2000, 2000 + n)) for d, n in pattern.items()},
        concat={d: np.arange(n, dtype="i8") * 24 for d, n in concat.items()},
    )
    return Plan(schema=cube, axes=axes, fresh=True, batches=[[f"s3://a/{i}.nc" for i in range(files)]])


TAS = {"tas": (VIRTUAL, {"time": 1, "lat": 4})}

SPLIT_CASES = [
    pytest.param({}, {"time": 10}, TAS, 5, 2, {"time": 10}, id="no pattern dims"),
    pytest.param(
        {}, {"time": 10}, {"tas": (VIRTUAL, {"time": 4, "lat": 4})}, 5, 2, {"time": 3}, id="partial last chunk"
    ),
    pytest.param({}, {"time": 0}, TAS, 0, 2, {"time": 1}, id="empty axis"),
    pytest.param(
        {},
        {"time": 10},
        {"tas": (VIRTUAL, {"time": 1, "lat": 4}), "pr": (VIRTUAL, {"time": 5, "lat": 4})},
        5,
        2,
        {"time": 10},
        id="the variable with the most chunks decides",
    ),
    pytest.param(
        {},
        {"time": 10},
        {"tas": (VIRTUAL, {"time": 5, "lat": 4}), "flag": (NATIVE, {"time": 1})},
        5,
        2,
        {"time": 2},
        id="native variables do not count",
    ),
    pytest.param({"member": 4}, {"time": 10}, TAS, 8, 4, {"time": 10, "member": 2}, id="one pattern dim"),
    pytest.param({"member": 4}, {"time": 10}, TAS, 4, 100, {"time": 10, "member": 4}, id="one pattern dim, one batch"),
    pytest.param(
        {"year": 3, "month": 12},
        {"time": 10},
        TAS,
        36,
        24,
        {"time": 10, "month": 12, "year": 2},
        id="two pattern dims, a batch covers several cells",
    ),
    pytest.param(
        {"year": 3, "month": 12},
        {"time": 10},
        TAS,
        36,
        6,
        {"time": 10, "month": 6, "year": 1},
        id="two pattern dims, a batch covers part of the inner dim",
    ),
    pytest.param(
        {"year": 3, "month": 12},
        {"time": 10},
        TAS,
        72,
        30,
        {"time": 10, "month": 12, "year": 1},
        id="two pattern dims, two files per cell",
    ),
    pytest.param({"station": 3}, {"time": 10}, TAS, 30, 4, {"time": 10, "station": 1}, id="batch smaller than a cell"),
    pytest.param(
        {"year": 3, "month": 12},
        {"time": 10},
        TAS,
        360,
        4,
        {"time": 10, "month": 1, "year": 1},
        id="two pattern dims, batch smaller than a cell",
    ),
    pytest.param(
        {},
        {"time": 10, "step": 3},
        {"tas": (VIRTUAL, {"time": 1, "step": 1, "lat": 4})},
        1,
        2,
        {"time": 10, "step": 3},
        id="two concat dims",
    ),
]


@pytest.mark.parametrize(("pattern", "concat", "data", "files", "batch_files", "expected"), SPLIT_CASES)
def test_manifest_split(
    pattern: dict[str, int],
    concat: dict[str, int],
    data: dict[str, tuple[Kind, dict[str, int]]],
    files: int,
    batch_files: int,
    expected: dict[str, int],
) -> None:
    split = manifest_split(split_plan(pattern, concat, data, files), batch_files)
    assert split == expected

    # the invariants the docstring states
    assert set(split) == set(pattern) | set(concat)
    files_per_cell = max(1, -(-files // math.prod(pattern.values())))
    assert math.prod(split[d] for d in pattern) * files_per_cell <= max(batch_files, files_per_cell)
    inner_whole = True
    for d in reversed(list(pattern)):  # innermost dims whole before an outer one is split at more than 1
        assert 1 <= split[d] <= pattern[d]
        assert inner_whole or split[d] == 1
        inner_whole = split[d] == pattern[d]
    for d, size in concat.items():  # the axis as built is one split; a value appended past it starts a new one
        counts = [-(-size // c[d]) for kind, c in data.values() if kind == VIRTUAL and d in c]
        assert split[d] == max([1, *counts])


# ---------------------------------------------------------------------------------------------------
# run_history
# ---------------------------------------------------------------------------------------------------

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat()


def commit(
    snapshot: str,
    seconds: float,
    run: str | None = None,
    operation: str = "build",
    stage: str = "batch",
    flow_run: str | None = None,
    **counts: Any,
) -> dict[str, Any]:
    """One entry of ``history()``: an icefloe commit when ``run`` is given, someone else's otherwise."""
    meta: dict[str, Any] = {}
    if run is not None:
        meta = {"icefloe": {"operation": operation, "stage": stage, "run": run, "main_at_start": "M", **counts}}
        if flow_run:
            meta["icefloe"]["flow_run"] = flow_run
    return {
        "snapshot": snapshot,
        "parent": None,
        "written_at": at(seconds),
        "message": f"message of {snapshot}",
        "metadata": meta,
    }


def folded(
    snapshot: str,
    started: float,
    finished: float,
    commits: int,
    run: str | None = None,
    operation: str = "build",
    flow_run: str | None = None,
    ingested: int = 0,
    quarantined: int = 0,
    refs: int = 0,
    nativized: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "run": run,
        "flow_run": flow_run,
        "operation": operation if run else "other",
        "snapshot": snapshot,
        "finished_at": at(finished),
        "started_at": at(started),
        "commits": commits,
        "ingested": ingested,
        "quarantined": quarantined,
        "refs": refs,
        "nativized": nativized or [],
        "message": f"message of {snapshot}",
        "seconds": finished - started,
    }


BUILD = [  # newest first
    commit("B3", 7.5, "r1", stage="batch", flow_run="fr-1", batch=2, batches=2, ingested=1, refs=10),
    commit("B2", 5.25, "r1", stage="batch", flow_run="fr-1", batch=1, batches=2, ingested=2, refs=20),
    commit("B1", 0, "r1", stage="prepare", flow_run="fr-1", planned=4, quarantined=1, batches=2),
]
BUILT = folded("B3", 0, 7.5, 3, "r1", flow_run="fr-1", ingested=3, quarantined=1, refs=30)

HISTORY_CASES = [
    pytest.param([], [], id="no commits"),
    pytest.param(BUILD, [BUILT], id="one build of three commits"),
    pytest.param(
        [
            commit("I2", 100, "r2", operation="ingest", stage="batch", ingested=4, refs=8),
            commit("I1", 90, "r2", operation="ingest", stage="prepare", planned=4, quarantined=0),
            *BUILD,
        ],
        [folded("I2", 90, 100, 2, "r2", operation="ingest", ingested=4, refs=8), BUILT],
        id="a build then an ingest",
    ),
    pytest.param(
        [commit("X2", 60), *BUILD, commit("X1", -5), commit("X0", -10)],
        [folded("X2", 60, 60, 1), BUILT, folded("X1", -5, -5, 1), folded("X0", -10, -10, 1)],
        id="commits icefloe did not make stand alone",
    ),
    pytest.param(
        [
            {**commit("Y", 3), "metadata": {"author": "someone"}},
            {**commit("Z", 2), "metadata": {"icefloe": None}},
        ],
        [folded("Y", 3, 3, 1), folded("Z", 2, 2, 1)],
        id="metadata without icefloe's",
    ),
    pytest.param(
        [
            commit("N1", 30, "r3", operation="nativize", stage="nativize", nativized=["lat", "lon"]),
            commit("B4", 9, "r1", stage="nativize", flow_run="fr-1", nativized=["time_bnds"]),
            *BUILD,
        ],
        [
            folded("N1", 30, 30, 1, "r3", operation="nativize", nativized=["lat", "lon"]),
            {
                **BUILT,
                "snapshot": "B4",
                "message": "message of B4",
                "commits": 4,
                "finished_at": at(9),
                "seconds": 9,
                "nativized": ["time_bnds"],
            },
        ],
        id="nativize lists",
    ),
]


@pytest.mark.parametrize(("entries", "expected"), HISTORY_CASES)
def test_run_history(entries: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert run_history(copy.deepcopy(entries)) == expected


CHECKED_BUILD = [  # the checks took one of the three placed files back out
    commit("Q", 9, "r1", stage="quarantine", quarantined=1),
    commit("B2", 5, "r1", stage="batch", ingested=3, refs=30),
    commit("B1", 0, "r1", stage="prepare", planned=3, quarantined=2),
]


def test_run_history_counts_quarantines_from_prepare_and_the_checks() -> None:
    [run] = run_history(CHECKED_BUILD)
    assert (run["quarantined"], run["commits"], run["seconds"], run["snapshot"]) == (3, 3, 9, "Q")


def test_run_history_ingested_leaves_out_files_the_checks_took_back_out() -> None:
    [run] = run_history(CHECKED_BUILD)
    assert run["ingested"] == 2


# ---------------------------------------------------------------------------------------------------
# service_codes (the classifier built on it is tested in test_store_errors.py)
# ---------------------------------------------------------------------------------------------------

# as obstore 0.x and Icechunk 2.x report a local S3 server's answers (Debug source abridged)
OBSTORE_503 = (
    "Generic S3 error: Error performing GET http://127.0.0.1:8333/b/k in 1.2ms - Server returned non-2xx status "
    'code: 503 Service Unavailable: <?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    '<Message>m</Message></Error>\n\nDebug source:\nGeneric {\n    store: "S3",\n    source: RetryError(\n'
    "        RetryErrorImpl {\n            retries: 0,\n            inner: Status {\n                status: 503,\n"
    '                body: Some(\n                    "<Error><Code>SlowDown</Code></Error>",\n'
    "                ),\n            },\n        },\n    ),\n}"
)
OBSTORE_404 = (
    "Object at location k not found: Error performing GET http://127.0.0.1:8333/b/k in 770µs - Server returned "
    "non-2xx status code: 404 Not Found: <Error><Code>NoSuchKey</Code><Message>m</Message></Error>\n\n"
    'Debug source:\nNotFound {\n    path: "k",\n    source: RetryError(\n        RetryErrorImpl {\n'
    "            inner: Status {\n                status: 404,\n            },\n        },\n    ),\n}"
)
OBSTORE_LOCAL_RANGE = (
    "Generic LocalFileSystem error: Requested range was invalid\n\nDebug source:\nGeneric {\n"
    '    store: "LocalFileSystem",\n    source: InvalidRange {\n        source: StartTooLarge {\n'
    "            requested: 100,\n            length: 6,\n        },\n    },\n}"
)
ICECHUNK_SDK = (
    'object store error service error: unhandled error ({0}): Error {{ code: "{0}", message: "m" }}\n\n'
    'context:\n   0: icechunk::refs::fetch_branch\n           with name="main"\n             at icechunk/src/refs.rs:445'
)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(obstore_errors.GenericError(OBSTORE_503), {"SlowDown", "503"}, id="S3 XML and the status"),
        pytest.param(FileNotFoundError(OBSTORE_404), {"NoSuchKey", "404"}, id="obstore not found"),
        pytest.param(icechunk.StorageError(ICECHUNK_SDK.format("AccessDenied")), {"AccessDenied"}, id="SDK code"),
        pytest.param(icechunk.StorageError(ICECHUNK_SDK.format("SlowDown")), {"SlowDown"}, id="SDK throttled"),
        pytest.param(RuntimeError("HTTP error: status: 503, body: busy"), {"503"}, id="bare status"),
        pytest.param(
            obstore_errors.GenericError(OBSTORE_LOCAL_RANGE), {"InvalidRange", "StartTooLarge"}, id="obstore variant"
        ),
        pytest.param(
            obstore_errors.GenericError("Generic S3 error: tcp connect error: Connection refused (os error 111)"),
            set(),
            id="no code",
        ),
        pytest.param(
            icechunk.StorageError("dispatch failure: other: no providers in chain provided credentials"),
            set(),
            id="credential chain, in words only",
        ),
    ],
)
def test_service_codes(error: BaseException, expected: set[str]) -> None:
    assert service_codes(error) == expected
