"""A corpus of bad and hostile inputs, each made by a fixture: every one is quarantined (or, where the
README says so, stored with a documented spelling or left out and listed), with a reason naming the
file; the good files of the same batch land; nothing crashes, hangs or runs out of memory."""

from __future__ import annotations

import os
import re
import struct
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import xarray as xr

from lib.pipeline import Step, run_steps
from lib.runs import CubeRun
from tests.helpers import dataset, file_url, locations, make_spec, read_cube, run_cube, write_nc3, write_nc4

pytestmark = pytest.mark.timeout(300)

QUARANTINED, SKIPPED, STORED = "quarantined", "skipped", "stored"


def good(day: int = 9, **kw: Any) -> xr.Dataset:
    return dataset(day, scalar=1.0, **kw)


def nc4(path: Path, ds: xr.Dataset | None = None, **kw: Any) -> None:
    write_nc4(path, ds if ds is not None else good(), **kw)


def truncated(fraction: float) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        nc4(path)
        data = path.read_bytes()
        path.write_bytes(data[: max(1, int(len(data) * fraction))])

    return make


def corrupt_chunk_index(path: Path) -> None:
    nc4(path)
    data = bytearray(path.read_bytes())
    for signature in (b"TREE", b"BTHD", b"BTLF"):  # v1 and v2 B-tree nodes of the chunk index
        at = data.find(signature)
        while at != -1:
            data[at : at + 4] = b"XXXX"
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))


def h5_with(build: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    """The good dataset, then something more written into it with h5py."""

    def make(path: Path) -> None:
        nc4(path)
        with h5py.File(path, "a") as f:
            build(f)

    return make


def nc3_bad_record_count(path: Path) -> None:
    write_nc3(path, good())
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack(">i", 1_000_000)  # numrecs: far more records than the file holds
    path.write_bytes(bytes(data))


def nc3_huge_dimension(path: Path) -> None:
    write_nc3(path, good())
    data = bytearray(path.read_bytes())
    # the first fixed dimension after the record one ('lat', 4): claim 2**31 - 1 values
    at = data.find(b"lat\x00")
    data[at + 4 : at + 8] = struct.pack(">i", 2**31 - 1)
    path.write_bytes(bytes(data))


def many_variables(path: Path) -> None:
    nc4(path)
    with h5py.File(path, "a") as f:  # 10,000 scalar variables (h5py writes them far faster than netCDF4)
        for i in range(10_000):
            f.create_dataset(f"v{i:05d}", data=np.float32(i))


def deep_groups(path: Path) -> None:
    nc4(path)
    with h5py.File(path, "a") as f:
        g = f
        for level in range(60):
            g = g.create_group(f"level{level}")
        g.create_dataset("deep", data=np.arange(3.0))


def non_utf8_name(path: Path) -> None:
    nc4(path)
    with h5py.File(path, "a") as f:
        f.id.links.create_hard(b"bad\xff\xfename", f.id, b"tas")  # a second name for tas, not UTF-8


def time_missing_value(path: Path) -> None:
    ds = good()
    nc4(path, ds, encoding={"time": {"units": "days since 2000-01-01", "dtype": "int64", "_FillValue": -1}})
    with h5py.File(path, "a") as f:
        f["time"][...] = -1  # the fill value: the file's time is missing


def big_endian(path: Path) -> None:
    nc4(path, encoding={"tas": {"dtype": ">f4"}})


def external_link(path: Path) -> None:
    outside = path.parent.parent / "outside.h5"
    with h5py.File(outside, "w") as f:
        f["secret"] = np.arange(5.0)
    nc4(path)
    with h5py.File(path, "a") as f:
        f["leak"] = h5py.ExternalLink(str(outside), "/secret")


def symlink_out(path: Path) -> None:
    outside = path.parent.parent / "elsewhere.nc"
    nc4(outside)
    os.symlink(outside, path)


def enum_variable(path: Path, codes: list[int]) -> None:
    with h5py.File(path, "a") as f:
        kind = h5py.enum_dtype({"cloud": 0, "clear": 1}, basetype="i1")
        f.create_dataset("sky", data=np.array(codes, dtype="i1"), dtype=kind)


# kind → (how to make the bad file, what must happen, a pattern the reason (or note) must match)
CORPUS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "zero bytes": (lambda p: p.write_bytes(b""), QUARANTINED, r"the object is empty"),
    "wrong magic (text)": (
        lambda p: p.write_text("date,value\n2000-01-01,3\n"),
        QUARANTINED,
        r"not a supported format",
    ),
    "wrong magic (PNG)": (
        lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64),
        QUARANTINED,
        r"not a supported format",
    ),
    "truncated after 8 bytes": (
        truncated(0.001),
        QUARANTINED,
        r"'.*d99\.nc' cannot be parsed as hdf5: fast parser: OSError: Unable to synchronously open file",
    ),
    "truncated at a third": (truncated(1 / 3), QUARANTINED, r"cannot be parsed as hdf5: .*\(truncated file: eof ="),
    "truncated at 90%": (
        truncated(0.9),
        QUARANTINED,
        r"cannot be parsed as hdf5: .*\(truncated file: eof =",
    ),
    "corrupt chunk index": (
        corrupt_chunk_index,
        QUARANTINED,
        r"the chunk index of variable 'tas' in '.*d99\.nc' cannot be read \(.*\): the file is corrupt",
    ),
    "netCDF3 wrong record count": (nc3_bad_record_count, QUARANTINED, r"declares 1,000,000 records .* holds only"),
    "netCDF3 huge declared dimension": (
        nc3_huge_dimension,
        QUARANTINED,
        r"variable 'tas' in '.*d99\.nc' reaches byte [\d,]+, past the end of the object \([\d,]+ bytes\)",
    ),
    "HDF5 huge declared dimension": (
        h5_with(lambda f: f.create_dataset("huge", shape=(2**40,), chunks=(1,), dtype="u1")),
        QUARANTINED,
        r"declares 1,099,511,627,776 chunks",
    ),
    "10,000 tiny variables": (many_variables, QUARANTINED, r"has variable 'v00000' that the cube does not have"),
    "60 nested groups": (deep_groups, QUARANTINED, r"has variable 'level0/.*/deep' that the cube does not have"),
    "non-UTF-8 variable name": (non_utf8_name, SKIPPED, r"bad\\xff\\xfename its name is not UTF-8"),
    "non-UTF-8 attribute": (
        h5_with(lambda f: f["tas"].attrs.create("comment", np.bytes_(b"caf\xe9"))),
        STORED,
        r"'comment' of 'tas' is not UTF-8: stored as base64",
    ),
    "NaN and infinity attributes": (
        h5_with(lambda f: f["tas"].attrs.create("valid_max", np.inf)),
        STORED,
        r"'valid_max' of 'tas' holds inf, which JSON cannot: stored as the string \"Infinity\"",
    ),
    "filter without a Zarr codec (scaleoffset)": (
        h5_with(lambda f: f.create_dataset("packed", data=np.arange(8.0), scaleoffset=2, chunks=(4,))),
        SKIPPED,
        r"packed",
    ),
    "variable-length sequences": (
        h5_with(lambda f: f.create_dataset("ragged", (2,), dtype=h5py.vlen_dtype("i4"))),
        SKIPPED,
        r"variable-length",
    ),
    "compound type": (h5_with(lambda f: f.create_dataset("record", data=np.zeros(2, "i4,f8"))), SKIPPED, r"compound"),
    "object references": (
        h5_with(lambda f: f.create_dataset("refs", data=np.array([f["tas"].ref], dtype=h5py.ref_dtype))),
        SKIPPED,
        r"references",
    ),
    "external link to another file": (external_link, SKIPPED, r"an external link to .*outside\.h5"),
    "symlink out of the source": (symlink_out, QUARANTINED, r"could lead outside the source prefix"),
    "mismatched chunks": (
        lambda p: nc4(p, chunks=(1, 4, 6)),
        QUARANTINED,
        r"variable 'tas' in '.*d99\.nc' has chunks \[1, 4, 6\]; the cube has \[1, 2, 3\]",
    ),
    "mismatched codec level": (
        lambda p: nc4(p, complevel=9),
        QUARANTINED,
        r"variable 'tas' .* has codecs .*9.*; the cube has .*4",
    ),
    "mismatched dtype": (
        lambda p: nc4(p, good(dtype="f8")),
        QUARANTINED,
        r"variable 'tas' .* has dtype 'float64'; the cube has 'float32'",
    ),
    "mismatched byte order": (big_endian, QUARANTINED, r"variable 'tas' .* has codecs .*big.*; the cube has .*little"),
    "mismatched units": (
        lambda p: nc4(p, good().assign(tas=lambda d: d.tas.assign_attrs(units="degC"))),
        QUARANTINED,
        r"attribute units 'degC'; the cube has 'K'",
    ),
    "mismatched calendar": (
        lambda p: nc4(p, encoding={"time": {"units": "days since 2000-01-01", "calendar": "noleap", "dtype": "int64"}}),
        QUARANTINED,
        r"coordinate 'time' in '.*d99\.nc' \(units 'days since 2000-01-01', calendar 'noleap'\) cannot be "
        r"represented exactly in the cube's encoding \(.*calendar 'proleptic_gregorian'",
    ),
    "mismatched fill value": (
        lambda p: nc4(p, encoding={"tas": {"_FillValue": -999.0}}),
        QUARANTINED,
        r"variable 'tas' .* has fill_value",
    ),
    "duplicated time within a file": (
        lambda p: nc4(p, dataset([9, 9], scalar=1.0)),
        QUARANTINED,
        r"not strictly increasing",
    ),
    "out-of-order times within a file": (
        lambda p: nc4(p, dataset([11, 10], scalar=1.0)),
        QUARANTINED,
        r"not strictly increasing",
    ),
    "overlapping another file": (lambda p: nc4(p, good(day=1, seed=7)), QUARANTINED, r"overlaps '.*d01\.nc'"),
    "missing time value": (time_missing_value, QUARANTINED, r"coordinate 'time' in '.*d99\.nc' has missing values"),
}


@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_bad_input_is_refused_and_the_batch_lands(workdir: Path, kind: str) -> None:
    make, outcome, pattern = CORPUS[kind]
    days = (0, 1, 2, 3) if "calendar" not in kind else (0, 1, 2)
    goods = [write_nc4(workdir / "archive" / f"d{t:02d}.nc", good(day=t)) for t in days]
    bad = workdir / "archive" / "d99.nc"
    make(bad)
    spec = make_spec(
        workdir, "d*.nc", extra="checks:\n  regular: []\n  spot_check: {files: all, chunks_per_variable: 4}\n"
    )
    summary = run_cube(spec)
    quarantined = {q["url"]: q["reason"] for q in summary.quarantined}
    if outcome == QUARANTINED:
        assert list(quarantined) == [file_url(bad)], quarantined
        assert "d99.nc" in quarantined[file_url(bad)] and re.search(pattern, quarantined[file_url(bad)]), quarantined
        assert summary.ingested == len(goods) and summary.exit_code == 3
    else:
        assert not quarantined, quarantined
        assert summary.ingested == len(goods) + 1 and summary.exit_code == 0
        if outcome == SKIPPED:
            assert any(
                s["url"] == file_url(bad) and re.search(pattern, s["variable"] + " " + s["reason"])
                for s in summary.skipped
            ), summary.skipped
        elif pattern:
            assert any(re.search(pattern, n) for n in summary.notes), summary.notes
    assert {file_url(g) for g in goods} <= locations(spec)
    cube = read_cube(spec)
    for g in goods:
        ref = xr.open_dataset(g).load()
        xr.testing.assert_identical(cube.tas.sel(time=ref.time).load(), ref.tas)


def test_a_file_that_changes_while_it_is_parsed(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lib.parsing as parsing

    goods = [write_nc4(workdir / "archive" / f"d{t:02d}.nc", good(day=t)) for t in range(3)]
    victim = workdir / "archive" / "d09.nc"
    nc4(victim)
    original = parsing.parse_urls

    def parse_then_rewrite(urls: list[str], *args: Any, **kw: Any) -> list[Any]:
        results = original(urls, *args, **kw)
        if file_url(victim) in urls:  # someone rewrites the file right after the parser read it
            os.utime(victim, (1, 2_000_000_000))
        return results

    monkeypatch.setattr(parsing, "parse_urls", parse_then_rewrite)
    summary = run_cube(make_spec(workdir, "d*.nc", extra="checks:\n  regular: []\n"))
    assert [q["url"] for q in summary.quarantined] == [file_url(victim)]
    assert "changed while it was being parsed" in summary.quarantined[0]["reason"]
    assert summary.ingested == len(goods)


def test_enum_variables_land_as_their_codes_with_the_mapping(workdir: Path) -> None:
    for t in range(3):
        path = workdir / "archive" / f"d{t:02d}.nc"
        nc4(path, good(day=t))
        enum_variable(path, codes=[0, 1, 0])
    spec = make_spec(workdir, "d*.nc", extra="checks:\n  regular: []\n")
    summary = run_cube(spec)
    assert summary.exit_code == 0, summary.quarantined
    sky = read_cube(spec)["sky"]
    assert sky.attrs["flag_values"] == [0, 1] and sky.attrs["flag_meanings"] == "cloud clear"
    np.testing.assert_array_equal(sky.values, [0, 1, 0])


def test_a_parser_that_hangs_is_stopped_and_only_its_file_refused(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker process stuck on one file is killed; that file is quarantined, the others land."""
    import lib.parsing.fanout as fanout

    goods = [write_nc4(workdir / "archive" / f"d{t:02d}.nc", good(day=t)) for t in range(3)]
    hang = workdir / "archive" / "d09.nc"
    nc4(hang)
    hang.with_name("HANG").write_text(str(hang))  # the worker-side hook below looks for this marker
    monkeypatch.setattr(fanout, "PARSE_SECONDS_PER_CALL", 20.0)  # worker start-up fits in easily
    monkeypatch.setattr(fanout, "PARSE_SECONDS_PER_OBJECT", 0.5)
    monkeypatch.setenv("ICEFLOE_TEST_HANG_ON", str(hang))
    spec = make_spec(workdir, "d*.nc", extra="checks:\n  regular: []\n").model_copy(
        update={"execution": make_spec(workdir, "d*.nc").execution.model_copy(update={"executor": "processes"})}
    )
    run = CubeRun(spec, "build", "hang-test")
    try:
        run_steps(run, until=Step.PLAN)
        plan = run.plan_
        quarantined = dict(plan.quarantined) if plan else {}
    finally:
        run.close()
    assert list(quarantined) == [file_url(hang)]
    assert "crashed the parser process (did not finish within" in quarantined[file_url(hang)]
    assert run.plan_.accepted == len(goods)  # type: ignore[union-attr]


def test_encoded_and_lookalike_keys_stay_inside_the_source(workdir: Path) -> None:
    """Names that decode to '../' or look like dots are just names: their refs read the file itself."""
    archive = workdir / "archive"
    files = [write_nc4(archive / f"d{t:02d}.nc", good(day=t)) for t in range(2)]
    files.append(write_nc4(archive / "%2e%2e%2fd02.nc", good(day=2)))  # decodes to ../d02.nc
    files.append(write_nc4(archive / "\uff0e\uff0e\u2215d03.nc", good(day=3)))  # fullwidth dots, division slash
    write_nc4(workdir / "d02.nc", good(day=2, seed=99))  # what '../d02.nc' would read: other values
    spec = make_spec(workdir, "*.nc", extra="checks:\n  regular: []\n")
    summary = run_cube(spec)
    assert summary.exit_code == 0 and summary.ingested == 4, summary.quarantined
    # refs are stored percent-encoded; decoded once they name exactly the files inside the source
    assert {urllib.parse.unquote(u) for u in locations(spec)} == {file_url(f) for f in files}
    cube = read_cube(spec)
    for f in files:
        ref = xr.open_dataset(f).load()
        xr.testing.assert_identical(cube.tas.sel(time=ref.time).load(), ref.tas)
