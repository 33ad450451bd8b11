"""Bad input is quarantined with a reason naming the file, the variable and both sides; the rest lands."""

from __future__ import annotations

import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from lib import quality
from lib.errors import StorageError
from lib.parsing.fragment import PackedSlice
from lib.pipeline import Step, run_steps
from lib.runs import CubeRun
from tests.helpers import dataset, file_url, locations, make_spec, open_repo, read_cube, run_cube, write_nc4


def bad_ds(**kw: object) -> xr.Dataset:
    return dataset(9, scalar=1.0, **kw)  # type: ignore[arg-type]


def good_files(workdir: Path, n: int = 4, **kw: object) -> list[Path]:
    return [write_nc4(workdir / "archive" / f"d{t:02d}.nc", dataset(t, scalar=1.0), **kw) for t in range(n)]  # type: ignore[arg-type]


def only_quarantined(summary: object, path: Path) -> str:
    q = summary.quarantined  # type: ignore[attr-defined]
    assert [item["url"] for item in q] == [file_url(path)], q
    return q[0]["reason"]


def assert_rest_landed(spec: object, files: list[Path]) -> None:
    assert locations(spec) == {file_url(f) for f in files}
    cube = read_cube(spec)  # type: ignore[arg-type]
    assert cube.sizes["time"] == len(files)


@pytest.mark.parametrize(
    ("write_bad", "pattern"),
    [
        (
            lambda p: write_nc4(p, bad_ds(), chunks=(1, 4, 6)),
            r"variable 'tas' in '.*d09.nc' has chunks \[1, 4, 6\]; the cube has \[1, 2, 3\]",
        ),
        (
            lambda p: write_nc4(p, bad_ds(), complevel=9),
            r"variable 'tas' in '.*d09.nc' has codecs .*level.*9.*; the cube has .*level.*4",
        ),
        (
            lambda p: write_nc4(p, bad_ds(dtype="f8")),
            r"variable 'tas' in '.*d09.nc' has dtype 'float64'; the cube has 'float32'",
        ),
        (
            lambda p: write_nc4(p, bad_ds(), encoding={"tas": {"_FillValue": -999.0}}),
            r"variable 'tas' in '.*d09.nc' has fill_value",
        ),
        (
            lambda p: write_nc4(p, bad_ds().assign(tas=lambda d: d.tas.assign_attrs(units="degC"))),
            r"variable 'tas' in '.*d09.nc' has attribute units 'degC'; the cube has 'K'",
        ),
        (
            lambda p: write_nc4(p, bad_ds().assign(tas=lambda d: d.tas.assign_attrs(scale_factor=0.5))),
            r"variable 'tas' in '.*d09.nc' has attribute scale_factor 0.5; the cube has none",
        ),
        (lambda p: write_nc4(p, dataset(9)), r"'.*d09.nc' lacks variable 'height' that the cube has"),
        (
            lambda p: write_nc4(p, bad_ds().assign(extra=lambda d: d.tas * 2)),
            r"'.*d09.nc' has variable 'extra' that the cube does not have",
        ),
        (
            lambda p: write_nc4(
                p, bad_ds().assign_coords(lat=("lat", np.array([5, 6, 7, 8], "f4"), {"units": "degrees_north"}))
            ),
            r"coordinate 'lat' in '.*d09.nc' differs from the cube's 'lat'",
        ),
        (
            lambda p: write_nc4(p, bad_ds(shape=(4, 5)), chunks=(1, 2, 5)),
            r"variable 'lat' in '.*d09.nc' has shape|variable '\w+' in '.*d09.nc' has (shape|chunks)",
        ),
        (
            lambda p: p.write_bytes(b"not a netCDF file at all\n"),
            r"'.*d09.nc' is not a supported format: its first bytes",
        ),
        (lambda p: p.write_bytes(b""), r"'.*d09.nc' is not a supported format: the object is empty"),
    ],
)
def test_schema_and_format_mismatches(workdir: Path, write_bad: object, pattern: str) -> None:
    files = good_files(workdir)
    bad = workdir / "archive" / "d09.nc"
    write_bad(bad)  # type: ignore[operator]
    spec = make_spec(workdir, "d*.nc")
    summary = run_cube(spec)
    reason = only_quarantined(summary, bad)
    assert __import__("re").search(pattern, reason), reason
    assert summary.exit_code == 3 and summary.published and summary.ingested == len(files)
    assert_rest_landed(spec, files)


def test_truncated_hdf5_is_quarantined(workdir: Path) -> None:
    files = good_files(workdir)
    source = write_nc4(workdir / "archive" / "d09.nc", dataset(9, scalar=1.0))
    data = source.read_bytes()
    for cut in (16, len(data) // 3):
        source.write_bytes(data[:cut])
        spec = make_spec(workdir, "d*.nc", name=f"cut{cut}")
        summary = run_cube(spec)
        reason = only_quarantined(summary, source)
        assert "d09.nc" in reason and "cannot be parsed" in reason
        assert_rest_landed(spec, files)


def test_calendar_and_time_encoding_mismatches(workdir: Path) -> None:
    files = good_files(workdir)
    half_day = write_nc4(
        workdir / "archive" / "d10.nc",
        dataset(10, scalar=1.0).assign_coords(time=[np.datetime64("2000-01-11T12:00", "ns")]),
        encoding={"time": {"units": "hours since 2000-01-01", "dtype": "int64"}},
    )
    summary = run_cube(make_spec(workdir, "d*.nc", extra="checks:\n  regular: []\n"))
    reasons = {q["url"]: q["reason"] for q in summary.quarantined}
    assert "cannot be represented exactly" in reasons[file_url(half_day)]
    assert "coordinate 'time'" in reasons[file_url(half_day)] and "d10.nc" in reasons[file_url(half_day)]
    assert summary.ingested == len(files)


def test_duplicated_and_out_of_order_times(workdir: Path) -> None:
    files = good_files(workdir)
    duplicate = write_nc4(workdir / "archive" / "d99.nc", dataset(2, seed=5, scalar=1.0))
    backwards = write_nc4(workdir / "archive" / "d98.nc", dataset([9, 8], scalar=1.0), chunks=(1, 2, 3))
    summary = run_cube(make_spec(workdir, "d*.nc"))
    reasons = {q["url"]: q["reason"] for q in summary.quarantined}
    assert f"'{file_url(duplicate)}' overlaps '{file_url(files[2])}'" in reasons[file_url(duplicate)]
    assert "is not strictly increasing" in reasons[file_url(backwards)]
    assert summary.ingested == len(files)


def test_one_chunk_per_range_rule(workdir: Path) -> None:
    # time chunks of 2: blocks must start on a chunk boundary; a partial chunk only at the axis end
    def write(name: str, days: list[int], member: int = 1) -> Path:
        return write_nc4(workdir / "archive" / f"m{member}" / f"{name}.nc", dataset(days, scalar=1.0), chunks=(2, 2, 3))

    ok = [write("a", [0, 1]), write("b", [2, 3]), write("c", [4, 5, 6])]  # c ends partially, at the end
    follows = write("d", [7, 8])  # would start mid-chunk, right after c's partial chunk
    spec = make_spec(workdir, "m{member:d}/*.nc", extra="checks:\n  regular: []\n")
    summary = run_cube(spec)
    assert only_quarantined(summary, follows).endswith(
        "would start mid-chunk on 'time': at position 7, the cube's chunks of 'tas' along 'time' hold 2 "
        "(list the dim under rectilinear to let files of unequal length land)"
    )
    assert summary.ingested == 3
    cube = read_cube(spec).load()
    ref = xr.concat([xr.open_dataset(f).load() for f in ok], dim="time", data_vars="minimal")
    xr.testing.assert_identical(cube.tas.sel(member=1, drop=True), ref.tas)

    follows.unlink()
    longer = write("e", [4, 5, 6, 7], member=2)  # another member makes the axis longer than c's partial chunk
    summary = run_cube(spec)
    reasons = {q["url"]: q["reason"] for q in summary.quarantined}
    assert list(reasons) == [file_url(ok[2])]
    assert (
        "ends with a partial chunk along 'time' (3 values, chunks of 2) that is not at the end"
        in reasons[file_url(ok[2])]
    )
    assert file_url(longer) in locations(spec)


def test_cell_variables_must_agree_within_a_cell(workdir: Path) -> None:
    files = [write_nc4(workdir / "archive" / "m1" / f"t{t}.nc", dataset(t, scalar=1.0)) for t in range(3)]
    odd = write_nc4(workdir / "archive" / "m1" / "t7.nc", dataset(7, scalar=2.0))
    summary = run_cube(make_spec(workdir, "m{member:d}/t*.nc", extra="checks:\n  regular: []\n"))
    reason = only_quarantined(summary, odd)
    assert "variable 'height' in" in reason and "t7.nc" in reason and "member=1" in reason
    assert summary.ingested == len(files)


def test_unsupported_variables_are_skipped_and_listed(workdir: Path) -> None:
    path = workdir / "archive" / "types.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("values", data=np.arange(10.0), chunks=(5,), compression="gzip")
        ragged = f.create_dataset("ragged", (3,), dtype=h5py.vlen_dtype(np.int32))
        ragged[0] = np.arange(3, dtype=np.int32)
        f.create_dataset("record", data=np.zeros(4, dtype=[("a", "<i4"), ("b", "<f8")]))
        f.create_dataset("ref", data=np.array([f["values"].ref], dtype=h5py.ref_dtype))
        f.create_dataset("names", data=np.array(["ab", "cde"], dtype=h5py.string_dtype()))
        f.attrs["bad_number"] = np.nan
    spec = make_spec(workdir, "*.h5", concat="[]")
    summary = run_cube(spec)
    skipped = {s["variable"]: s["reason"] for s in summary.skipped}
    assert set(skipped) == {"ragged", "record", "ref"}
    assert "variable-length" in skipped["ragged"] and "compound" in skipped["record"]
    assert all(s["url"] == file_url(path) for s in summary.skipped)
    cube = read_cube(spec).load()
    np.testing.assert_array_equal(cube["values"].values, np.arange(10.0))
    assert cube["names"].values.tolist() == ["ab", "cde"]
    assert cube.attrs["bad_number"] == "NaN"
    assert any("bad_number" in n and "NaN" in n for n in summary.notes)


def test_compact_datasets_are_read_natively(workdir: Path) -> None:
    path = workdir / "archive" / "compact.h5"
    with h5py.File(path, "w") as f:
        space = h5py.h5s.create_simple((6,))
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_layout(h5py.h5d.COMPACT)
        dset = h5py.h5d.create(f.id, b"small", h5py.h5t.NATIVE_DOUBLE, space, plist)
        dset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.arange(6.0) + 0.5)
    with h5py.File(path) as f:
        assert f["small"].id.get_create_plist().get_layout() == h5py.h5d.COMPACT
    spec = make_spec(workdir, "*.h5", concat="[]")
    assert run_cube(spec).exit_code == 0
    np.testing.assert_array_equal(read_cube(spec)["small"].values, np.arange(6.0) + 0.5)


def test_spot_check_catches_a_wrong_reference(workdir: Path) -> None:
    files = good_files(workdir, n=4)
    spec = make_spec(workdir, "d*.nc", extra="checks:\n  spot_check: {files: all, chunks_per_variable: 4}\n")
    victim = file_url(files[1])
    run = CubeRun(spec, "build", str(uuid.uuid4()))

    def parse_then_break(step: Step, *args: object) -> object:
        result = getattr(run, step)(*args)
        if step == Step.PARSE:  # a parser bug: one chunk of one file points 7 bytes off
            fragments = run.spool.read(args[0])  # type: ignore[arg-type]
            for fragment in fragments:
                if fragment.url == victim:
                    fragment.arrays["tas"].offsets.ravel()[0] += 7
            run.spool.write(args[0], fragments, pack=PackedSlice.pack)  # type: ignore[arg-type]
        return result

    try:
        run_steps(run, parse_then_break)
        findings = [f.to_json() for f in run.findings]
        summary = run.finish()
    finally:
        run.close()
    assert [f["urls"] for f in findings] == [[victim]]
    reason = only_quarantined(summary, files[1])
    assert "parser returned different values for variable 'tas'" in reason
    good = [f for f in files if file_url(f) != victim]
    assert locations(spec) == {file_url(f) for f in good}
    cube = read_cube(spec).load()
    for f in good:
        ref = xr.open_dataset(f).load()
        xr.testing.assert_identical(cube.tas.sel(time=ref.time), ref.tas)
    assert bool(cube.tas.sel(time=xr.open_dataset(files[1]).time).isnull().all())


def test_a_store_failure_during_the_spot_check_is_retried_not_blamed_on_the_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = good_files(workdir, n=3)
    spec = make_spec(workdir, "d*.nc", extra="checks:\n  spot_check: {files: all}\n")
    run = CubeRun(spec, "build", str(uuid.uuid4()))

    def outage(url: str, registry: object) -> None:  # what obstore raises when the connection drops
        raise ConnectionError(f"connection reset by peer while reading '{url}'")

    def unreadable(url: str, registry: object) -> None:  # what h5py raises for a file it cannot open
        raise OSError(f"Unable to synchronously open file (truncated file: '{url}')")

    try:
        run_steps(run, until=Step.COMMIT)
        staged = run.repo.lookup_branch(spec.repo.staging)  # type: ignore[union-attr]
        monkeypatch.setattr(quality, "open_source", outage)
        with pytest.raises(StorageError, match="connection reset by peer"):
            run.check()  # raised for the check step's retry; no file is taken out
        assert run.repo.lookup_branch(spec.repo.staging) == staged  # type: ignore[union-attr]
        monkeypatch.setattr(quality, "open_source", unreadable)
        findings = run.check()  # a file its own library cannot read is the file's problem
    finally:
        run.close()
    assert sorted(u for f in findings for u in f["urls"]) == sorted(file_url(f) for f in files)
    assert all("could not be read back with its own library (OSError" in f["message"] for f in findings)


@pytest.mark.parametrize("damage", ["missing", "repeated"])
def test_a_concat_coordinate_with_missing_or_repeated_values_fails_the_structural_checks(
    workdir: Path, damage: str
) -> None:
    """Every cube's concat coordinates are checked for missing and repeated values (no expectation needed)."""
    import zarr

    from lib.ledger import read_schema
    from lib.quality import structural_findings
    from lib.state import read_axes

    for day in range(3):
        write_nc4(workdir / "archive" / f"day_{day}.nc", dataset(day))
    spec = make_spec(workdir, "day_*.nc")
    assert run_cube(spec).exit_code == 0
    session = open_repo(spec).writable_session("main")
    time = zarr.open_array(session.store, path="time", mode="r+")
    values = time[...]
    if damage == "missing":
        values = values.astype("f8")
        values[1] = np.nan
        time = zarr.create_array(session.store, name="time", data=values, overwrite=True)
    else:
        values[2] = values[1]
        time[...] = values
    schema = read_schema(session.store)
    assert schema is not None
    found = structural_findings(session.store, schema, read_axes(session.store, schema), ("time",), ())
    kinds = {f.check for f in found}
    assert damage in kinds if damage == "missing" else "unique" in kinds, found
    clean = structural_findings(
        open_repo(spec).readonly_session(branch="main").store, schema, read_axes(session.store, schema), ("time",), ()
    )
    assert not [f for f in clean if f.check in ("missing", "unique")]
