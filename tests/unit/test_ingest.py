"""Keeping a cube current: appends along time and along ensemble members, no-op reruns, findings,
drift, replace and maintenance -- each step read back through Icechunk and compared with xarray."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from lib import ledger
from lib.maintenance import prune_history, verify_sources
from lib.spec import Spec
from tests.helpers import dataset, file_url, locations, make_spec, open_repo, read_cube, run_cube, write_nc4

PATTERN = "member_{member:d}/day_*.nc"


def write_day(workdir: Path, member: int, day: int, **kw: object) -> Path:
    return write_nc4(
        workdir / "archive" / f"member_{member}" / f"day_{day:03d}.nc",
        dataset(day, seed=member, scalar=float(member)),
        **kw,
    )  # type: ignore[arg-type]


def assert_matches_files(spec: Spec, workdir: Path, snapshot: str | None = None) -> xr.Dataset:
    """Every member's series in the cube equals xarray on that member's files, value for value."""
    cube = read_cube(spec, snapshot=snapshot).load()
    for member_dir in sorted((workdir / "archive").glob("member_*")):
        member = int(member_dir.name.split("_")[1])
        files = sorted(member_dir.glob("day_*.nc"))
        ref = xr.concat([xr.open_dataset(f).load() for f in files], dim="time", data_vars="minimal")
        got = cube.sel(member=member, drop=True).sel(time=ref.time)
        xr.testing.assert_identical(got.tas, ref.tas)
        xr.testing.assert_identical(got.height, ref.height)
    return cube


@pytest.fixture
def cube(workdir: Path) -> tuple[Spec, Path]:
    for member in (1, 2):
        for day in range(3):
            write_day(workdir, member, day)
    spec = make_spec(workdir, PATTERN)
    summary = run_cube(spec)
    assert summary.exit_code == 0 and summary.ingested == 6
    return spec, workdir


def test_append_along_time_then_members_then_both(cube: tuple[Spec, Path]) -> None:
    spec, workdir = cube
    first = open_repo(spec).lookup_branch("main")

    write_day(workdir, 1, 3)
    write_day(workdir, 2, 3)
    s = run_cube(spec, "ingest")
    assert (s.exit_code, s.ingested, s.unchanged, s.dims["time"]) == (0, 2, 6, 4)
    assert_matches_files(spec, workdir)

    for day in range(4):
        write_day(workdir, 3, day)  # a whole new ensemble member
    s = run_cube(spec, "ingest")
    assert (s.ingested, s.dims["member"], s.dims["time"]) == (4, 3, 4)
    assert_matches_files(spec, workdir)

    for member in (1, 2, 3):
        write_day(workdir, member, 4)
    for day in range(5):
        write_day(workdir, 4, day)
    s = run_cube(spec, "ingest")
    assert (s.ingested, s.dims["member"], s.dims["time"]) == (8, 4, 5)
    cube_now = assert_matches_files(spec, workdir)
    assert locations(spec) == {file_url(p) for p in (workdir / "archive").rglob("*.nc")}
    assert int(cube_now.tas.notnull().sum()) == 20 * 4 * 6

    old = read_cube(spec, snapshot=first)  # readers of the first snapshot keep its shape
    assert dict(old.sizes) == {"member": 2, "time": 3, "lat": 4, "lon": 6}


def test_rerun_with_nothing_new_is_a_no_op(cube: tuple[Spec, Path]) -> None:
    spec, _ = cube
    repo = open_repo(spec)
    tip, history = repo.lookup_branch("main"), len(list(repo.ancestry(branch="main")))
    s = run_cube(spec, "ingest")
    assert (s.exit_code, s.ingested, s.unchanged, s.published) == (0, 0, 6, False)
    assert s.snapshot == tip
    repo = open_repo(spec)
    assert repo.lookup_branch("main") == tip and len(list(repo.ancestry(branch="main"))) == history


def test_quarantined_objects_are_remembered_until_they_change(cube: tuple[Spec, Path]) -> None:
    spec, workdir = cube
    bad = workdir / "archive" / "member_1" / "day_003.nc"
    bad.write_bytes(b"garbage")
    s = run_cube(spec, "ingest")
    assert (s.exit_code, [q["url"] for q in s.quarantined]) == (3, [file_url(bad)])
    s = run_cube(spec, "ingest")
    assert (s.exit_code, s.quarantined, s.previously_quarantined) == (0, [], 1)
    time.sleep(1.1)
    write_day(workdir, 1, 3).touch()  # fixed at the source: a new etag, so it is tried again
    s = run_cube(
        spec,
        "ingest",
    )
    assert (s.exit_code, s.ingested) == (0, 1)


def test_per_file_findings_quarantine_the_file_and_publish_the_rest(cube: tuple[Spec, Path]) -> None:
    spec, workdir = cube
    dup = write_nc4(workdir / "archive" / "member_1" / "day_099.nc", dataset(2, seed=9, scalar=1.0))
    new = write_day(workdir, 1, 3)
    s = run_cube(spec, "ingest")
    reasons = {q["url"]: q["reason"] for q in s.quarantined}
    assert list(reasons) == [file_url(dup)]
    assert "overlaps" in reasons[file_url(dup)] and "day_002.nc" in reasons[file_url(dup)]
    assert s.exit_code == 3 and s.published and file_url(new) in locations(spec)


def test_a_per_file_expectation_quarantines_that_file(workdir: Path) -> None:
    for day in range(3):
        write_day(workdir, 1, day)
    hot = write_nc4(
        workdir / "archive" / "member_1" / "day_003.nc",
        dataset(3, seed=1, scalar=1.0).assign(tas=lambda d: d.tas + 100),
    )
    spec = make_spec(
        workdir,
        PATTERN,
        extra=(
            "checks:\n  expectations:\n    - {type: expect_column_values_to_be_between, variable: tas, "
            "kwargs: {min_value: -10, max_value: 10}}\n"
        ),
    )
    s = run_cube(spec)
    assert [q["url"] for q in s.quarantined] == [file_url(hot)]
    assert "expect_column_values_to_be_between on 'tas'" in s.quarantined[0]["reason"]
    assert s.exit_code == 3 and s.ingested == 3 and file_url(hot) not in locations(spec)
    assert any(f["check"] == "expectation:expect_column_values_to_be_between" for f in s.findings)


def test_a_file_beyond_a_gap_waits_and_lands_when_the_gap_fills(cube: tuple[Spec, Path]) -> None:
    spec, workdir = cube
    late = write_day(workdir, 1, 5)  # days 3 and 4 are missing
    s = run_cube(spec, "ingest")
    assert (s.exit_code, s.ingested, s.quarantined) == (0, 0, []), s
    assert [d["url"] for d in s.deferred] == [file_url(late)]
    assert "waits for 2 missing step(s) of 'time' (1 days each) after 2000-01-03" in s.deferred[0]["reason"]
    assert s.discovered == s.ingested + s.unchanged + len(s.changed) + len(s.quarantined) + len(s.deferred)
    assert file_url(late) not in locations(spec)
    rows = ledger.read_ledger(open_repo(spec).readonly_session(branch="main").store)
    assert rows[file_url(late)].status == "deferred" and rows[file_url(late)].since
    tip = open_repo(spec).lookup_branch("main")
    again = run_cube(spec, "ingest")  # tried again, still waiting: nothing new to record
    assert [d["url"] for d in again.deferred] == [file_url(late)] and again.exit_code == 0
    assert open_repo(spec).lookup_branch("main") == tip
    write_day(workdir, 1, 3)
    write_day(workdir, 1, 4)
    s = run_cube(spec, "ingest")  # the gap filled: the waiting file lands with the rest
    assert s.exit_code == 0 and s.ingested == 3 and s.deferred == []
    assert_matches_files(spec, workdir)


def test_verify_finds_rewritten_and_deleted_sources_and_an_ingest_repairs(cube: tuple[Spec, Path]) -> None:
    spec, workdir = cube
    assert verify_sources(open_repo(spec), spec).clean
    rewritten = workdir / "archive" / "member_2" / "day_001.nc"
    deleted = workdir / "archive" / "member_1" / "day_000.nc"
    time.sleep(1.1)
    write_nc4(rewritten, dataset(1, seed=77, scalar=2.0))
    os.utime(rewritten)
    deleted.unlink()
    drift = verify_sources(open_repo(spec), spec)
    assert [c["url"] for c in drift.changed] == [file_url(rewritten)] and drift.gone == [file_url(deleted)]
    with pytest.raises(Exception, match="checksum"):  # reading the stale refs fails loudly, never silently
        read_cube(spec).tas.sel(member=2).load()

    s = run_cube(spec, "ingest", keep=True)
    assert s.changed == [file_url(rewritten)] and s.ingested == 0  # kept and reported, never silently doubled
    assert s.exit_code == 3  # while changed objects remain
    s = run_cube(spec, "ingest")  # by default a changed object is re-ingested through the same checks
    assert (s.ingested, s.replaced, s.changed, s.exit_code) == (1, [file_url(rewritten)], [], 0)
    cube_now = read_cube(spec).sel(member=2, drop=True).load()
    xr.testing.assert_identical(cube_now.tas.isel(time=[1]), xr.open_dataset(rewritten).tas.load())
    assert [c["url"] for c in verify_sources(open_repo(spec), spec).changed] == []


def test_ledger_appends_touch_only_its_last_chunk(cube: tuple[Spec, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    spec, workdir = cube
    repo = open_repo(spec)
    rows = ledger.read_rows(repo.readonly_session(branch="main").store)
    assert [r.status for r in rows] == ["ingested"] * 6
    before = repo.lookup_branch("main")
    write_day(workdir, 1, 3)
    run_cube(spec, "ingest")
    after = open_repo(spec).lookup_branch("main")
    diff = open_repo(spec).diff(from_snapshot_id=before, to_snapshot_id=after)
    touched = {path: chunks for path, chunks in diff.updated_chunks.items() if "ledger" in path}
    assert list(touched) == ["/_icefloe/ledger"] and len(touched["/_icefloe/ledger"]) == 1
    assert len(ledger.read_rows(open_repo(spec).readonly_session(branch="main").store)) == 7


def test_maintain_expires_history_but_keeps_the_cube(cube: tuple[Spec, Path]) -> None:
    spec, workdir = cube
    write_day(workdir, 1, 3)
    write_day(workdir, 2, 3)
    run_cube(spec, "ingest")
    repo = open_repo(spec)
    done = prune_history(repo, spec, older_than_days=0)
    assert done["history_after"] < done["history_before"]
    assert_matches_files(spec, workdir)
    assert np.isfinite(read_cube(spec).tas.values).all()


def test_an_ingest_of_named_objects_looks_them_up_without_listing(
    cube: tuple[Spec, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import obstore

    from lib.errors import SpecError

    spec, workdir = cube
    named, other = write_day(workdir, 1, 3), write_day(workdir, 2, 3)

    def no_listing(*args: object, **kwargs: object) -> None:
        raise AssertionError("a run of a few named objects listed the whole source")

    monkeypatch.setattr(obstore, "list", no_listing)
    s = run_cube(spec, "ingest", urls=[file_url(named)])
    assert s.exit_code == 0 and s.ingested == 1 and s.discovered == 1, s
    assert file_url(named) in locations(spec) and file_url(other) not in locations(spec)
    again = run_cube(spec, "ingest", urls=[file_url(named)])  # already in the cube, at the same etag
    assert again.exit_code == 0 and again.ingested == 0 and again.unchanged == 1, again
    with pytest.raises(SpecError, match=r"1 named object\(s\) are not in the source .*day_999\.nc"):
        run_cube(spec, "ingest", urls=[file_url(workdir / "archive" / "member_1" / "day_999.nc")])
    monkeypatch.undo()
    rest = run_cube(spec, "ingest")  # the listing finds the other one, and sees the named one as unchanged
    assert rest.ingested == 1 and rest.unchanged == 7, rest
    assert_matches_files(spec, workdir)


def test_log_keeps_every_run_after_maintain_expires_their_snapshots(cube: tuple[Spec, Path]) -> None:
    from lib.repository import run_log

    spec, workdir = cube
    write_day(workdir, 1, 3)
    started = time.monotonic()
    assert run_cube(spec, "ingest").exit_code == 0
    took = time.monotonic() - started
    before = run_log(open_repo(spec), "main")
    assert [r["operation"] for r in before[:2]] == ["ingest", "build"]
    assert before[0]["ingested"] == 1 and before[1]["ingested"] == 6
    assert 0 < before[0]["seconds"] <= took  # the run's wall time, not the span of its commits
    prune_history(open_repo(spec), spec, older_than_days=0)
    after = run_log(open_repo(spec), "main")
    assert [(r["run"], r["ingested"]) for r in after[:2]] == [(r["run"], r["ingested"]) for r in before[:2]]
    assert after[1]["snapshot"] == "(expired)"


def test_a_cube_without_a_ledger_index_gets_one_from_its_next_ingest(cube: tuple[Spec, Path]) -> None:
    """Cubes written before the index existed: the first run that publishes folds their whole log."""
    import zarr

    from lib.ledger_index import CELLS, URLS, LedgerIndex

    spec, workdir = cube
    repo = open_repo(spec)
    session = repo.writable_session("main")  # take the index away, as a cube from before it would be
    group = zarr.open_group(session.store, path=ledger.META_GROUP, mode="r+")
    assert {URLS, CELLS} <= set(group.array_keys()) and group.attrs["index"]["rows"] == 6
    del group[URLS], group[CELLS]
    group.update_attributes({"index": {}})
    session.commit("a cube from before the ledger index")
    old = LedgerIndex(repo.readonly_session(branch="main").store)
    assert old.shards == 0 and len(old.tail) == 6  # every row is read from the log

    write_day(workdir, 1, 3)  # a late member-2 file too: its cell's objects come from the log's rows
    write_day(workdir, 2, 3)
    s = run_cube(spec, "ingest")
    assert (s.exit_code, s.ingested, s.unchanged) == (0, 2, 6)
    assert_matches_files(spec, workdir)
    store = open_repo(spec).readonly_session(branch="main").store
    index, truth = LedgerIndex(store), ledger.read_ledger_index(store)
    assert index.shards and not index.tail and len(index) == len(truth) == 8
    for url, row in truth.items():
        assert (index[url].etag, index[url].status, index[url].ranges) == (row.etag, row.status, row.ranges)
    assert set(index.cell({"member": 2}).rows) == {u for u, r in truth.items() if r.fields == {"member": 2}}
