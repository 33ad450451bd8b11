"""The ledger's index: each object's current row, found by URL or by pattern cell without reading the log.

The ledger (:mod:`lib.ledger`) is an append-only log whose newest row per URL is the object's state.
Finding that state in the log costs the whole log -- seconds and hundreds of MB at 500,000 objects --
which an ingest of one new object must not pay. So the log is folded into two sharded tables beside
it, in the same group:

* ``index_urls``: shard ``crc32(url) % shards`` holds ``{url: current row}``, trimmed to what a run
  needs (etag, status, pattern fields, ranges with the moves epoch they were written at, chunking,
  waiting since);
* ``index_cells``: shard ``crc32(cell) % shards`` holds, for each pattern cell, the objects in the
  cube there with their ranges, and the digests of the cell's variables without a concat dim.

Each shard is one chunk of a one-dimensional string array, so a lookup reads one small chunk. The
group's ``index`` attribute says how many log rows are folded in; the rows after them (the *tail*: the
rows of a run still in progress, or a whole log written before the index existed) are read from the
log and take precedence. :func:`fold_index` runs in a run's last staging commit, so main's index always
matches main's log and is published with it; a cube without an index gets one the first time a run
publishes into it. The log stays the truth: an index that lags behind costs time, never correctness.
"""

from __future__ import annotations

import sqlite3
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from lib.ledger import (
    INGESTED,
    LedgerRow,
    _group,
    _iter_texts,
    ledger_size,
    moved,
    read_ledger_index,
)

if TYPE_CHECKING:
    from zarr.abc.store import Store

__all__ = ["CellRows", "LedgerIndex", "cell_key", "fold_index", "shards_for"]

URLS, CELLS = "index_urls", "index_cells"  # arrays in the ledger's group
MIN_SHARDS = 1024
OBJECTS_PER_SHARD = 2000  # beyond this on average the index is rebuilt with twice the shards
_KEPT = ("etag", "status", "fields", "ranges", "moves", "chunking", "since")


def shard_of(key: str, shards: int) -> int:
    """The shard a URL or cell key lives in (stable across processes and machines)."""
    return zlib.crc32(key.encode()) % shards


def shards_for(objects: int) -> int:
    """How many shards an index of ``objects`` objects gets: at least 1,024, at most ~2,000 objects each."""
    shards = MIN_SHARDS
    while objects > shards * OBJECTS_PER_SHARD:
        shards *= 2
    return shards


def cell_key(fields: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> str:
    """A pattern cell as text: its fields and values, in pattern order."""
    items = list(fields.items()) if isinstance(fields, Mapping) else list(fields)
    return orjson.dumps(items).decode()


@dataclass
class CellRows:
    """What the cube holds in one pattern cell: its objects' rows (ingested ones) and the digests of
    the cell's variables without a concat dim."""

    rows: dict[str, LedgerRow] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)


class LedgerIndex(Mapping[str, LedgerRow]):
    """Each object's current row, read from the index shards a lookup needs, the log's tail on top.

    A mapping of URL to a trimmed :class:`~lib.ledger.LedgerRow` (url, etag, status, fields, ranges
    brought up to date with the moves since, chunking, since). Looking up one URL reads one shard;
    :meth:`cell` reads one shard of the cell table; iterating reads every shard.
    """

    def __init__(self, store: Store | None = None) -> None:
        group = _group(store) if store is not None else None
        attrs = group.attrs if group is not None else {}
        meta = dict(attrs.get("index", {}))
        self.folded = int(meta.get("rows", 0))
        self.shards = int(meta.get("shards", 0))
        self.objects = int(meta.get("objects", 0))
        self.moves: list[dict[str, Any]] = list(attrs.get("moves", []))
        self.size = int(group["ledger"].shape[0]) if group is not None and "ledger" in group else 0
        self.tail: dict[str, LedgerRow] = {}
        if store is not None and self.size > self.folded:
            self.tail = read_ledger_index(store, self.folded)
        self._group = group
        self._url_shards: dict[int, dict[str, Any]] = {}
        self._cell_shards: dict[int, dict[str, Any]] = {}
        self._arrays: dict[str, Any] = {}  # the index's arrays, looked up once

    @classmethod
    def empty(cls) -> LedgerIndex:
        """The index of a cube with nothing in it yet."""
        return cls(None)

    # -- lookups by URL -------------------------------------------------------------------------

    def get(self, url: str, default: Any = None) -> Any:
        row = self.tail.get(url)
        if row is not None:
            return row
        data = self._url_shard(shard_of(url, self.shards)).get(url) if self.shards else None
        return self._row(url, data) if data is not None else default

    def state(self, url: str) -> tuple[str, str] | None:
        """``(etag, status)`` of an object's current row, without making the row (sorting a listing
        of the whole archive asks this of every object)."""
        row = self.tail.get(url)
        if row is not None:
            return row.etag, row.status
        data = self._url_shard(shard_of(url, self.shards)).get(url) if self.shards else None
        return (data.get("etag", ""), data.get("status", "")) if data is not None else None

    def __getitem__(self, url: str) -> LedgerRow:
        row = self.get(url)
        if row is None:
            raise KeyError(url)
        return row

    def __contains__(self, url: object) -> bool:
        return isinstance(url, str) and self.get(url) is not None

    def __iter__(self) -> Iterator[str]:
        for shard in range(self.shards):
            yield from (url for url in self._url_shard(shard) if url not in self.tail)
        yield from self.tail

    def __len__(self) -> int:
        if not self.shards:
            return len(self.tail)
        new = sum(1 for url in self.tail if url not in self._url_shard(shard_of(url, self.shards)))
        return self.objects + new

    def shard(self, url: str) -> int:
        """The URL shard a URL is in (0 while the cube has no index)."""
        return shard_of(url, self.shards) if self.shards else 0

    def read_shards(self, shards: Iterable[int]) -> None:
        """Read these URL shards in one go (their chunks fetched together), for a caller about to
        look up objects in all of them: a listing of the whole archive is sorted ~16 shards at a time."""
        wanted = sorted({s for s in shards if s not in self._url_shards})
        if not wanted or not self.shards:
            return
        array = self._array(URLS)
        texts = array.get_orthogonal_selection((wanted,)) if array is not None else [""] * len(wanted)
        for shard, text in zip(wanted, texts, strict=True):
            self._url_shards[shard] = _shard_table(text)

    def forget(self) -> None:
        """Drop the shards read so far (a caller going through the objects a shard at a time)."""
        self._url_shards.clear()
        self._cell_shards.clear()

    def rows(self) -> Iterator[LedgerRow]:
        """Every object's current row, a shard at a time (a shard's rows are dropped once yielded)."""
        for shard in range(self.shards):
            data = self._read(URLS, shard)
            yield from (self._row(url, v) for url, v in data.items() if url not in self.tail)
        yield from self.tail.values()

    # -- lookups by cell ------------------------------------------------------------------------

    def cell(self, fields: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> CellRows:
        """The ingested objects of one pattern cell and the cell's digests."""
        key = cell_key(fields)
        out = CellRows()
        entry = self._cell_shard(shard_of(key, self.shards)).get(key) if self.shards else None
        if entry is not None:
            out.digests = dict(entry.get("digests", {}))
            for url, data in entry.get("objects", {}).items():
                if url not in self.tail:
                    out.rows[url] = self._row(url, {**data, "fields": dict(orjson.loads(key)), "status": INGESTED})
        for url, row in self.tail.items():
            if row.status == INGESTED and cell_key(row.fields) == key:
                out.rows[url] = row
                out.digests = row.digests or out.digests
        return out

    # -- reading shards -------------------------------------------------------------------------

    def _row(self, url: str, data: Mapping[str, Any]) -> LedgerRow:
        ranges = data.get("ranges") or {}
        epoch = int(data.get("moves", 0))
        if ranges and epoch < len(self.moves):
            ranges = moved(ranges, epoch, self.moves)
        return LedgerRow(
            url=url,
            etag=data.get("etag", ""),
            status=data.get("status", ""),
            fields=data.get("fields", {}),
            ranges=ranges,
            chunking=data.get("chunking", []),
            since=data.get("since", ""),
            moves=len(self.moves),
        )

    def _url_shard(self, shard: int) -> dict[str, Any]:
        if shard not in self._url_shards:
            self._url_shards[shard] = self._read(URLS, shard)
        return self._url_shards[shard]

    def _cell_shard(self, shard: int) -> dict[str, Any]:
        if shard not in self._cell_shards:
            self._cell_shards[shard] = self._read(CELLS, shard)
        return self._cell_shards[shard]

    def _array(self, name: str) -> Any:
        if name not in self._arrays:
            self._arrays[name] = self._group[name] if self._group is not None and name in self._group else None
        return self._arrays[name]

    def _read(self, name: str, shard: int) -> dict[str, Any]:
        array = self._array(name)
        return _read_shard(array, shard) if array is not None else {}


def fold_index(store: Store) -> int:
    """Fold the log's rows since the last fold into the index, in the session behind ``store``;
    returns how many rows were folded.

    Only the shards the new rows touch are rewritten. The rows pass through a temporary SQLite file
    (newest per URL), so folding a whole build's ledger holds one shard at a time, not the archive.
    The index is rebuilt from the whole log when it has none yet or needs more shards.
    """
    group = _group(store, create=True)
    meta = dict(group.attrs.get("index", {}))
    size = ledger_size(store)
    start, shards, objects = int(meta.get("rows", 0)), int(meta.get("shards", 0)), int(meta.get("objects", 0))
    if start >= size:
        return 0
    rebuild = not shards or shards_for(objects + size - start) > shards
    if rebuild:
        start, objects, shards = 0, 0, shards_for(size)
        for name in (URLS, CELLS):
            if name in group:
                del group[name]
    arrays = {
        name: group[name]
        if name in group
        else group.create_array(name, shape=(shards,), chunks=(1,), dtype=str, fill_value="")
        for name in (URLS, CELLS)
    }
    with tempfile.TemporaryDirectory(prefix="icefloe-index-") as tmp:
        db = sqlite3.connect(f"{tmp}/rows.sqlite")
        db.execute("CREATE TABLE rows (url TEXT PRIMARY KEY, url_shard INT, cell_shard INT, cell TEXT, row BLOB)")
        db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?)", _tail(store, start, shards))
        db.execute("CREATE INDEX by_url_shard ON rows (url_shard)")
        db.execute("CREATE INDEX by_cell_shard ON rows (cell_shard)")
        for (shard,) in db.execute("SELECT DISTINCT url_shard FROM rows ORDER BY url_shard").fetchall():
            table = _read_shard(arrays[URLS], shard)
            for url, row in db.execute("SELECT url, row FROM rows WHERE url_shard = ?", (shard,)):
                objects += url not in table
                table[url] = orjson.loads(row)
            arrays[URLS][shard] = orjson.dumps(table).decode()
        for (shard,) in db.execute("SELECT DISTINCT cell_shard FROM rows ORDER BY cell_shard").fetchall():
            table = _read_shard(arrays[CELLS], shard)
            for url, cell, row in db.execute("SELECT url, cell, row FROM rows WHERE cell_shard = ?", (shard,)):
                _place_in_cell(table, url, cell, orjson.loads(row))
            arrays[CELLS][shard] = orjson.dumps(table).decode()
        db.close()
    group.update_attributes({"index": {"rows": size, "shards": shards, "objects": objects}})
    return size - start


def _tail(store: Store, start: int, shards: int) -> Iterator[tuple[str, int, int, str, bytes]]:
    """(url, url shard, cell shard, cell, trimmed row) for each log row from ``start`` on, oldest first."""
    for text in _iter_texts(store, start):
        data = orjson.loads(text)
        url = data["url"]
        cell = cell_key(data.get("fields", {}))
        kept = {k: data[k] for k in _KEPT if k in data}
        if data.get("digests"):
            kept["digests"] = data["digests"]
        yield url, shard_of(url, shards), shard_of(cell, shards), cell, orjson.dumps(kept)


def _read_shard(array: Any, shard: int) -> dict[str, Any]:
    return _shard_table(array[shard])


def _shard_table(text: Any) -> dict[str, Any]:
    """A shard's table from its chunk's text (empty: a shard nothing was written to)."""
    text = str(text)
    return orjson.loads(text) if text else {}


def _place_in_cell(table: dict[str, Any], url: str, cell: str, row: dict[str, Any]) -> None:
    """Record an object's newest row in its cell's entry: in the cube there, or not any more."""
    digests = row.pop("digests", None)
    if row.get("status") == INGESTED:
        entry = table.setdefault(cell, {"digests": {}, "objects": {}})
        entry["objects"][url] = {k: row[k] for k in ("ranges", "moves", "chunking", "etag") if k in row}
        if digests:
            entry["digests"] = digests
        return
    entry = table.get(cell)
    if entry is not None:
        entry["objects"].pop(url, None)
        if not entry["objects"]:
            del table[cell]
