"""The ledger's index answers what the log answers, reading only the shards a lookup needs."""

from __future__ import annotations

import random
from pathlib import Path

import icechunk
import pytest

from lib import ledger, ledger_index
from lib.ledger import (
    DEFERRED,
    INGESTED,
    QUARANTINED,
    REMOVED,
    LedgerRow,
    append_moves,
    append_rows,
    read_ledger_index,
)
from lib.ledger_index import LedgerIndex, cell_key, fold_index


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> icechunk.IcechunkStore:
    monkeypatch.setattr(ledger, "LEDGER_CHUNK", 7)
    monkeypatch.setattr(ledger_index, "MIN_SHARDS", 4)  # few shards, so they fill and the index is rebuilt
    monkeypatch.setattr(ledger_index, "OBJECTS_PER_SHARD", 5)
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    return repo.writable_session("main").store


def _row(rng: random.Random, i: int) -> LedgerRow:
    member, n = rng.randrange(3), rng.randrange(40)
    status = rng.choice([INGESTED, INGESTED, INGESTED, QUARANTINED, DEFERRED, REMOVED])
    return LedgerRow(
        url=f"s3://archive/member_{member}/f{n:03d}.nc",
        etag=f"e{i}",
        status=status,
        fields={"member": member},
        ranges={"time": [n, n + 1]} if status == INGESTED else {},
        digests={"lat": f"d{member}"} if status == INGESTED else {},
        chunking=[["time", "v", 1]] if status == INGESTED and n % 2 else [],
        since="2026-12-01T00:00:00Z" if status == DEFERRED else "",
        reason="bad" if status == QUARANTINED else "",
        run=f"r{i}",
    )


def _same(index: LedgerIndex, store: icechunk.IcechunkStore) -> None:
    truth = read_ledger_index(store)
    assert set(index) == set(truth) and len(index) == len(truth)
    for url, row in truth.items():
        got = index[url]
        assert (got.etag, got.status, got.fields, got.ranges, got.since) == (
            row.etag,
            row.status,
            row.fields,
            row.ranges,
            row.since,
        ), url
        assert [list(c) for c in got.chunking] == [list(c) for c in row.chunking]
    assert index.get("s3://archive/nowhere.nc") is None and "s3://archive/nowhere.nc" not in index
    for member in range(3):
        cell = index.cell({"member": member})
        ingested = {u: r for u, r in truth.items() if r.status == INGESTED and r.fields == {"member": member}}
        assert set(cell.rows) == set(ingested)
        assert {u: r.ranges for u, r in cell.rows.items()} == {u: r.ranges for u, r in ingested.items()}
        assert cell.digests == ({"lat": f"d{member}"} if ingested else {})


@pytest.mark.parametrize("seed", range(6))
def test_index_lookups_match_the_log_through_appends_folds_and_moves(store: icechunk.IcechunkStore, seed: int) -> None:
    rng = random.Random(seed)
    i = 0
    for step in range(12):
        rows = [_row(rng, i + k) for k in range(rng.randrange(1, 25))]
        i += len(rows)
        append_rows(store, rows)
        if rng.random() < 0.3:  # room opened inside the time axis: positions from 10 on move by 2
            append_moves(store, [{"dim": "time", "at": 10, "by": 2}])
        _same(LedgerIndex(store), store)  # the unfolded rows are the tail
        if step % 3 != 2:
            fold_index(store)
            index = LedgerIndex(store)
            assert not index.tail  # everything folded
            _same(index, store)


def test_a_lookup_reads_one_shard_of_each_table(store: icechunk.IcechunkStore, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    append_rows(store, [_row(rng, i) for i in range(60)])
    fold_index(store)
    index = LedgerIndex(store)
    assert index.shards > 4  # 60 rows in shards of at most 5 objects: the index was rebuilt wider
    reads: list[tuple[str, int]] = []
    real = LedgerIndex._read

    def counting(self: LedgerIndex, name: str, shard: int) -> dict:
        reads.append((name, shard))
        return real(self, name, shard)

    monkeypatch.setattr(LedgerIndex, "_read", counting)
    url = next(iter(read_ledger_index(store)))
    assert index.get(url) is not None
    index.cell({"member": 1})
    assert [name for name, _ in reads] == [ledger_index.URLS, ledger_index.CELLS]


def test_a_cube_written_before_the_index_gets_one_at_its_next_fold(store: icechunk.IcechunkStore) -> None:
    rng = random.Random(3)
    append_rows(store, [_row(rng, i) for i in range(50)])
    before = LedgerIndex(store)  # no index yet: every row is tail, read from the log
    assert before.shards == 0 and len(before.tail) == len(read_ledger_index(store))
    _same(before, store)
    assert fold_index(store) == 50
    after = LedgerIndex(store)
    assert after.shards and not after.tail
    _same(after, store)
    assert fold_index(store) == 0  # nothing new to fold


def test_cell_keys_keep_pattern_order() -> None:
    assert cell_key({"polygon": 1, "month": 2}) == cell_key([("polygon", 1), ("month", 2)])
    assert cell_key({"polygon": 1, "month": 2}) != cell_key({"month": 2, "polygon": 1})


def test_a_listing_is_sorted_against_the_index_a_few_shards_at_a_time(
    store: icechunk.IcechunkStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep over a large source holds a few shards of the index at a time (read together), and
    sorts as the log says."""
    import datetime as dt

    from lib import discovery
    from lib.discovery import SourceObject, classify_objects
    from lib.listing import ObjectSpool

    rng = random.Random(11)
    append_rows(store, [_row(rng, i) for i in range(80)])
    fold_index(store)
    index = LedgerIndex(store)
    truth = read_ledger_index(store)
    when = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    objects = [
        SourceObject(url, row.etag if k % 3 else "new-etag", 1, when, tuple(row.fields.items()))
        for k, (url, row) in enumerate(sorted(truth.items()))
    ] + [SourceObject(f"s3://archive/member_0/n{k}.nc", "e", 1, when, (("member", 0),)) for k in range(5)]
    held: list[int] = []
    real_state = LedgerIndex.state

    def watching(self: LedgerIndex, url: str) -> object:
        found = real_state(self, url)
        held.append(len(self._url_shards))
        return found

    monkeypatch.setattr(LedgerIndex, "state", watching)
    monkeypatch.setattr(discovery, "SHARDS_AT_ONCE", 3)
    spool = ObjectSpool()
    spool.add(objects, index.shard)
    streamed = classify_objects(spool, index)
    # 85 objects in more distinct shards than are read at once: never more than that many in memory
    assert len({index.shard(o.url) for o in objects}) > discovery.SHARDS_AT_ONCE
    assert len(held) == len(objects) and max(held) == discovery.SHARDS_AT_ONCE
    monkeypatch.setattr(LedgerIndex, "state", real_state)
    in_memory = classify_objects(objects, truth)  # the same objects against the log's rows, all in memory
    for group in ("pending", "unchanged", "changed", "known_bad"):
        assert [o.url for o in getattr(streamed, group)] == [o.url for o in getattr(in_memory, group)], group
    assert streamed.discovered == len(objects)
    assert [o.url for o in spool] == sorted(o.url for o in objects)  # run order: fields, then URL
