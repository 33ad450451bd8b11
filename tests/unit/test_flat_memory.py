"""The pieces that keep a run's memory flat as the archive grows: the ledger read a chunk at a time,
spot-check samples drawn in one pass, and the plan's per-file entries waiting in the spool."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import pickle
import tracemalloc
from pathlib import Path

import icechunk
import numpy as np
import obstore
import pytest
from obstore.store import LocalStore

from lib import ledger
from lib.discovery import SourceObject
from lib.layout import Axes, Placement
from lib.ledger import (
    INGESTED,
    QUARANTINED,
    LedgerRow,
    append_rows,
    iter_current,
    read_ledger,
    read_ledger_index,
)
from lib.parsing import ParseOptions, SourceConfig
from lib.parsing.fanout import ParsedBatch, _compact, summarize_objects
from lib.parsing.fragment import ArrayFragment, Fragment, PackedSlice
from lib.planning import Plan, PlannedFiles, plan_update
from lib.quality import SpotSample, choose_samples
from lib.spool import Spool
from lib.state import CubeState
from lib.validation import FileEntry
from tests.helpers import dataset, file_url, write_nc4


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> icechunk.IcechunkStore:
    monkeypatch.setattr(ledger, "LEDGER_CHUNK", 7)  # several chunks, with rows of one URL in different ones
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    return repo.writable_session("main").store


def test_iter_current_is_the_newest_row_of_each_url(store: icechunk.IcechunkStore) -> None:
    rows = [LedgerRow(f"file:///a/{i % 9}.nc", f"e{i}", INGESTED if i % 4 else QUARANTINED) for i in range(40)]
    append_rows(store, rows[:25])
    append_rows(store, rows[25:])
    newest = {r.url: r for r in rows}
    assert {r.url: r for r in iter_current(store)} == newest == read_ledger(store)
    assert len(list(iter_current(store))) == 9
    since = {r.url: r for r in rows[30:]}  # from a start position: only what was recorded since
    assert {r.url: r for r in iter_current(store, 30)} == since


def test_the_ledger_index_keeps_what_planning_needs(store: icechunk.IcechunkStore) -> None:
    rows = [
        LedgerRow(
            f"file:///a/{i % 12}.nc",
            f"e{i}",
            QUARANTINED if i % 5 == 0 else INGESTED,
            size=100 + i,
            reason="bad" if i % 5 == 0 else "",
            fields={"member": i % 3, "tag": "x"},
            ranges={"time": [i, i + 1]},
            checksum=f"c{i}",
            parser="fast",
            format="hdf5",
            refs=8,
            layout="L",
            digests={"lat": "abc", "lon": "def"} if i % 2 else {},
            run="r1",
            at="2026-11-29T00:00:00Z",
        )
        for i in range(30)
    ]
    append_rows(store, rows)
    full, index = read_ledger(store), read_ledger_index(store)
    assert list(index) == list(full)  # same objects, same order
    for url, row in full.items():
        kept = index[url]
        assert (kept.url, kept.etag, kept.status) == (row.url, row.etag, row.status)
        assert (kept.fields, kept.ranges, kept.digests) == (row.fields, row.ranges, row.digests)
        assert (kept.reason, kept.run, kept.checksum, kept.size) == ("", "", "", 0)  # not kept
    by_member: dict[int, LedgerRow] = {}
    for kept in index.values():  # rows of one cell share their fields, equal digests one dict
        first = by_member.setdefault(kept.fields["member"], kept)
        assert kept.fields is first.fields
    digests = {id(r.digests) for r in index.values() if r.digests}
    assert len(digests) == 1


def test_a_ledger_row_survives_its_json() -> None:
    row = LedgerRow(
        "s3://bucket/a b.nc",
        '"9b2cf535f27731c974343645a3985328"',
        INGESTED,
        size=12,
        fields={"member": 3, "tag": "x"},
        ranges={"time": [4, 8]},
        digests={"lat": "abc"},
        refs=8,
    )
    assert LedgerRow.from_json(row.to_json()) == row


def _samples(n: int, layouts: int) -> list[SpotSample]:
    return [SpotSample(Placement(f"u{i}", (i,), ()), "hdf5", f"layout{i % layouts}") for i in range(n)]


def test_samples_come_from_one_pass_with_every_layout() -> None:
    candidates = [*_samples(1000, 3), SpotSample(Placement("odd", (0,), ()), "fits", "rare")]
    picked = choose_samples(iter(candidates), 10, seed=1)  # an iterator: it is read once
    assert len(picked) == 10
    assert len({p.placement.url for p in picked}) == 10
    assert {p.layout_key for p in picked} == {"layout0", "layout1", "layout2", "rare"}
    again = choose_samples(iter(candidates), 10, seed=1)
    assert [p.placement.url for p in again] == [p.placement.url for p in picked]
    other = choose_samples(iter(candidates), 10, seed=2)
    assert [p.placement.url for p in other] != [p.placement.url for p in picked]


def test_few_candidates_are_all_checked() -> None:
    few = _samples(4, 2)
    assert choose_samples(iter(few), 10) == few
    assert choose_samples(iter(_samples(50, 2)), "all") == _samples(50, 2)


def _entry(url: str) -> FileEntry:
    return FileEntry(
        url=url,
        etag="e",
        size=1,
        checksum="e",
        fields=(),
        format="hdf5",
        parser="fast",
        schema_key="s",
        layout_key="l",
        concat={},
        shared={},
        cell={},
        ref_count=4,
    )


def _ledger_row(entry: FileEntry, placement: Placement, epoch: int = 0) -> LedgerRow:
    """The row that records a placed file, made field by field (what the commits' texts must store)."""
    return LedgerRow(
        url=entry.url,
        etag=entry.etag,
        status=INGESTED,
        size=entry.size,
        fields=dict(entry.fields),
        ranges={d: [a, b] for d, a, b in placement.ranges},
        checksum=str(entry.checksum),
        parser=entry.parser,
        format=entry.format,
        refs=entry.ref_count,
        layout=entry.layout_key,
        digests=dict(entry.cell),
        run="r",
        at="t",
        chunking=[list(c) for c in entry.chunking],
        moves=epoch,
    )


def test_planned_files_store_each_file_s_ledger_row() -> None:
    when = dt.datetime(2026, 12, 2, 3, 4, 5, tzinfo=dt.UTC)
    entries = [
        _entry("s3://bucket/a.nc"),
        dataclasses.replace(
            _entry("file:///a/b c.nc"), etag="", checksum=when, fields=(("member", 3), ("tag", "x")), cell={"lat": "d1"}
        ),
        dataclasses.replace(_entry("file:///a/c.nc"), size=0, ref_count=0, chunking=(("time", "tas", 31),)),
    ]
    placements = [Placement(e.url, (i,), (("time", 4 * i, 4 * i + 4),), e.chunking) for i, e in enumerate(entries)]
    files = PlannedFiles.pack(list(zip(entries, placements, strict=True)))
    assert pickle.loads(pickle.dumps(files)) == files
    assert files.placements() == placements
    for epoch in (0, 2):
        texts = files.texts("r", "t", epoch)
        expected = [_ledger_row(e, p, epoch) for e, p in zip(entries, placements, strict=True)]
        assert [LedgerRow.from_json(t) for t in texts] == expected
        assert texts == [r.to_json() for r in expected]  # byte for byte what a LedgerRow stores


def test_a_spilled_plan_gives_back_each_batch(tmp_path: Path) -> None:
    urls = [f"file:///a/{i}.nc" for i in range(10)]
    batches = [urls[:4], [], urls[4:]]
    placements = {u: Placement(u, (), (("time", i, i + 1),)) for i, u in enumerate(urls)}
    plan = Plan(
        schema=None,
        axes=Axes(),
        fresh=True,
        placements=placements,
        entries={u: _entry(u) for u in urls},
        batches=batches,
        shared_source=urls[0],
    )
    before = [list(plan.planned_files(Spool(tmp_path), b)) for b in range(3)]
    with Spool(tmp_path) as spool:
        plan.spill(spool)
        assert plan.accepted == 10 and plan.placed_urls() == set(urls)
        assert list(plan.iter_placed()) == urls  # batch by batch, in order
        assert list(plan.entries) == [urls[0]]  # only the shared source's entry stays in memory
        assert [len(b) for b in plan.batches] == [4, 0, 6]
        assert not any(isinstance(b, list) for b in plan.batches)  # nor any URL: they wait in the spool
        after = [list(plan.planned_files(spool, b)) for b in range(3)]
    with pytest.raises(RuntimeError, match="closed"):
        next(plan.iter_placed())  # the spool is gone: a bug, never a silent zero
    assert after == before
    assert [[p for files in slices for p in files.placements()] for slices in after] == [
        [placements[u] for u in batch] for batch in batches
    ]
    assert [[t for files in slices for t in files.texts("r", "t", 0)] for slices in after] == [
        [_ledger_row(_entry(u), placements[u]).to_json() for u in batch] for batch in batches
    ]


def test_a_spooled_batch_reads_back_a_slice_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The assembly writes a batch's fragments as they are read, a slice at a time, never the whole batch."""
    monkeypatch.setattr("lib.spool.SLICE", 2)
    with Spool(tmp_path) as spool:
        spool.write(0, list(range(5)))
        spool.write(1, [])
        assert list(spool.slices(0)) == [[0, 1], [2, 3], [4]]
        assert spool.read(0) == [0, 1, 2, 3, 4]
        assert list(spool.slices(1)) == [] and spool.read(1) == []
        assert list(spool.slices(7)) == [] and spool.read(7, kind="plan") == []  # never written


def _fragment(url: str, chunks: int, rate: float) -> Fragment:
    """A write-ready fragment: refs of one variable over ``chunks`` chunks, and a native scalar."""
    offsets = np.arange(chunks, dtype=np.uint64).reshape(1, chunks) * 100 + int(rate) * 1000  # each file its own
    return Fragment(
        url=url,
        format="hdf5",
        parser="fast",
        arrays={
            "tas": ArrayFragment("tas", {}, offsets=offsets, lengths=np.full((1, chunks), 100, dtype=np.uint64)),
            "rate": ArrayFragment("rate", {}, values=np.asarray(rate)),
        },
    )


def test_a_spooled_slice_is_packed_by_variable_and_gives_back_each_file(tmp_path: Path) -> None:
    """Files whose variables are alike are kept as one array per variable (a few objects per slice,
    not a few per file); a file that differs keeps that variable on its own; every file comes back
    with exactly its own arrays."""
    alike = [_fragment(f"file:///a/f{i}.nc", 3, float(i)) for i in range(4)]
    odd = _fragment("file:///a/odd.nc", 5, 9.0)  # another chunk grid: its refs cannot stack with the others'
    with Spool(tmp_path) as spool:
        spool.write(0, [*alike, odd], pack=PackedSlice.pack)
        (packed,) = list(spool.slices(0))
    assert isinstance(packed, PackedSlice) and packed.urls == [f.url for f in [*alike, odd]]
    assert set(packed.stacked) == {"rate"} and packed.stacked["rate"].values.shape == (5,)
    assert [set(loose) for loose in packed.loose] == [{"tas"}] * 5
    same = PackedSlice.pack(alike)
    assert set(same.stacked) == {"tas", "rate"} and same.stacked["tas"].offsets.shape == (4, 1, 3)
    assert all(not loose for loose in same.loose)
    for slice_ in (packed, same):
        for want, got in zip([*alike, odd], slice_, strict=False):
            assert (got.url, got.format, got.parser) == (want.url, want.format, want.parser)
            assert set(got.arrays) == set(want.arrays)
            for path, array in want.arrays.items():
                for what in ("offsets", "lengths", "values"):
                    mine = getattr(array, what)
                    theirs = getattr(got.arrays[path], what)
                    assert (mine is None and theirs is None) or np.array_equal(mine, theirs), (got.url, path, what)
    assert packed.array("tas", 4, "offsets").shape == (1, 5) and packed.array("rate", 2, "values") == 2.0


def test_planning_holds_a_few_hundred_bytes_per_file(tmp_path: Path) -> None:
    """Files repeat their concat values, digests and checksums from cell to cell, and their entries
    share them, so planning 4,000 files holds a few hundred bytes per file (1.6 KB before they were
    shared). Each file still gets its own place."""
    source = write_nc4(tmp_path / "archive" / "tile.nc", dataset([0]))
    url = file_url(source)
    meta = obstore.head(LocalStore(str(source.parent)), source.name)
    obj = SourceObject(url, meta["e_tag"], meta["size"], meta["last_modified"], (("member", 0), ("region", 0)))
    pattern = {"member": "d", "region": "d"}
    parsed = summarize_objects(
        [obj], SourceConfig(file_url(source.parent) + "/", None), ParseOptions(("time",)), pattern
    )
    entry, _ = parsed.results[0]  # type: ignore[misc]
    wire = pickle.dumps(entry)  # as a parse worker sends it
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        batches, shared = [], {}
        for b in range(2):
            batch = ParsedBatch(batch=b, schemas=dict(parsed.schemas))
            for i in range(2000):
                k = b * 2000 + i
                e = pickle.loads(wire)
                e.url = f"file:///data/archive/member_{k // 400:03d}/region_{k // 100 % 4:02d}/step_{k % 100:04d}.nc"
                e.fields = (("member", k // 400), ("region", k // 100 % 4))
                e.concat["time"].raw = e.concat["time"].raw + k % 100
                _compact(e, shared)
                batch.entries.append(e)
            batches.append(batch)
        state = CubeState("build", "", "", resumed=False, fresh=True, schema=None, axes=None)
        plan = plan_update(state, pattern, ("time",), batches)
        per_file = (tracemalloc.get_traced_memory()[1] - base) / 4000
    finally:
        tracemalloc.stop()
    assert plan.accepted == 4000 and not plan.quarantined
    for e in batches[1].entries[::97]:
        k = int(e.url[-7:-3])
        placed = plan.placements[e.url]
        assert placed.ranges == (("time", k, k + 1),) and placed.cell == plan.axes.cell_of(e.fields)
        assert e.encoded["time"].tolist() == [plan.axes.concat["time"][k]]
    assert per_file < 800, f"planning held {per_file:.0f} bytes per file"


def test_parsing_holds_no_entry_and_its_workers_exit_before_planning(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writing run's entries wait in the spool until planning, and the parse workers exit before the
    entries come back: they would otherwise sit idle through planning, the commits and the checks (a
    third of a large build's peak memory)."""
    import multiprocessing

    from lib import runs
    from lib.pipeline import Step
    from tests.helpers import make_spec, run_until

    for day in range(3):
        write_nc4(workdir / "archive" / f"d{day}.nc", dataset(day))
    spec = make_spec(workdir, "d*.nc")
    spec = spec.model_copy(update={"execution": spec.execution.model_copy(update={"executor": "processes"})})
    seen: list[tuple[int, int]] = []

    def plan_update(state: CubeState, pattern: dict[str, str], concat: tuple[str, ...], parsed, *a, **k):  # type: ignore[no-untyped-def]
        seen.append((len(multiprocessing.active_children()), sum(len(b.entries) for b in parsed)))
        return runs_plan_update(state, pattern, concat, parsed, *a, **k)

    runs_plan_update = runs.plan_update
    monkeypatch.setattr(runs, "plan_update", plan_update)
    run = run_until(spec, Step.PARSE)
    try:
        assert multiprocessing.active_children(), "the parse step runs in worker processes"
        assert [(b.parsed, b.entries) for b in run.parsed] == [(3, [])], "parsed entries wait in the spool"
        run.plan()
        assert seen == [(0, 3)]  # planning got every entry back, with no worker left
        assert not multiprocessing.active_children()
        assert run.plan_ is not None and run.plan_.accepted == 3 and run.summary.parsed == 3
    finally:
        run.close()


def test_malloc_arenas_are_capped_unless_the_environment_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from lib import memory

    if memory._glibc() is None:
        pytest.skip("not glibc: icefloe leaves the allocator alone there")
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert memory.limit_arenas() is True
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memory.limit_arenas() is False
    memory.release()


@pytest.mark.parametrize("spared", [0, 1])
def test_a_new_cube_whose_checks_refuse_every_object_is_not_published(workdir: Path, spared: int) -> None:
    """The run asks whether any placed object is left, and counts what landed, from the plan's URL
    batches, without a set of every URL."""
    from lib.errors import PublishBlocked
    from lib.pipeline import Step
    from lib.quality import FILE, Finding
    from tests.helpers import make_spec, run_until

    for day in range(3):
        write_nc4(workdir / "archive" / f"d{day}.nc", dataset(day))
    run = run_until(make_spec(workdir, "d*.nc"), Step.CHECK)
    try:
        assert run.plan_ is not None
        urls = sorted(run.plan_.iter_placed())
        assert len(urls) == 3 and run.plan_.placed_urls() == set(urls)
        run.findings.append(Finding("spot-check", FILE, "values differ", urls[spared:]))
        if spared:
            run.publish()
            assert run.finish().ingested == 1
        else:
            with pytest.raises(PublishBlocked, match="quarantined every object of a new cube"):
                run.publish()
            assert run.finish().ingested == 0
    finally:
        run.close()
