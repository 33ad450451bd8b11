"""The ledger: which object is in the cube, at which etag and where, or why it was refused.

It lives inside the repository, in the group ``_icefloe/``, and is written in the same commit as the
references it describes, so "ingested" and "in the cube" cannot disagree. It is an append-only
array of JSON rows, one per event (ingested, quarantined, deferred, removed); the newest row of a URL
is its state. Appending a batch touches only the array's last chunks, so an ingest costs what its
batch costs, however large the archive. The cube's schema is kept beside it, in the group's attributes.

Positions move when room is opened inside an axis (a late file, a back-fill): the group's ``moves``
attribute logs each move, and a row records how many moves the log held when it was written, so its
positions are brought up to date when it is read. No old row is ever rewritten.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from lib.validation import CubeSchema

if TYPE_CHECKING:
    from zarr.abc.store import Store

__all__ = [
    "LedgerRow",
    "Status",
    "append_moves",
    "append_rows",
    "append_run",
    "append_texts",
    "iter_current",
    "iter_rows",
    "moves_epoch",
    "read_ledger",
    "read_ledger_index",
    "read_moves",
    "read_rows",
    "read_runs",
    "read_schema",
    "row_texts",
    "write_schema",
]

META_GROUP = "_icefloe"
LEDGER_ARRAY = f"{META_GROUP}/ledger"
LEDGER_CHUNK = 8192


class Status(StrEnum):
    """Where an object stands: in the cube, refused (with the reason), waiting for a gap on its axis
    to fill, or taken out again."""

    INGESTED = "ingested"
    QUARANTINED = "quarantined"
    DEFERRED = "deferred"
    REMOVED = "removed"


INGESTED, QUARANTINED, DEFERRED, REMOVED = Status.INGESTED, Status.QUARANTINED, Status.DEFERRED, Status.REMOVED


@dataclass(slots=True)
class LedgerRow:
    """One event in an object's life in the cube."""

    url: str
    etag: str
    status: str
    size: int = 0
    reason: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    ranges: dict[str, list[int]] = field(default_factory=dict)
    checksum: str = ""
    parser: str = ""
    format: str = ""
    refs: int = 0
    layout: str = ""
    digests: dict[str, str] = field(default_factory=dict)
    run: str = ""
    at: str = ""
    since: str = ""  # deferred: waiting since
    values: dict[str, list[Any]] = field(default_factory=dict)  # refused or deferred: concat values (encoded)
    chunking: list[list[Any]] = field(default_factory=list)  # [dim, variable, chunk] along rectilinear dims
    moves: int = 0  # the moves the log held when the row was written (its positions are as of then)

    def to_json(self) -> str:
        # a row per object on the build's hot path: the fields in one attrgetter call (dataclasses.asdict
        # deep copies, ~40 µs a row), empty ones left out (they read back as the defaults), and orjson
        # (~3x the standard library's speed)
        values = {k: v for k, v in zip(_ROW_FIELDS, _row_values(self), strict=True) if v or k in _ALWAYS}
        return orjson.dumps(values, default=str).decode()

    @classmethod
    def from_json(cls, text: str) -> LedgerRow:
        data = orjson.loads(text)
        data.setdefault("etag", "")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


_ROW_FIELDS = tuple(LedgerRow.__dataclass_fields__)
_row_values = operator.attrgetter(*_ROW_FIELDS)
_ALWAYS = ("url", "status")


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _group(store: Store, create: bool = False) -> Any:
    import zarr
    from zarr.errors import GroupNotFoundError

    try:
        root = zarr.open_group(store, mode="r+" if create else "r", zarr_format=3)
    except GroupNotFoundError:
        if not create:
            return None
        root = zarr.open_group(store, mode="a", zarr_format=3)
    if META_GROUP in root:
        return root[META_GROUP]
    if not create:
        return None
    return root.create_group(META_GROUP, attributes={"description": "icefloe's ledger and cube schema"})


def read_moves(store: Store) -> list[dict[str, Any]]:
    """The log of moves (``{dim, at, by}``) that opened room inside the axes, oldest first."""
    group = _group(store)
    return list(group.attrs.get("moves", [])) if group is not None else []


def append_moves(store: Store, moves: list[dict[str, Any]]) -> None:
    """Log moves, in the same session that moves the chunks."""
    if moves:
        group = _group(store, create=True)
        group.update_attributes({"moves": [*read_moves(store), *moves]})


def moved(ranges: dict[str, list[int]], epoch: int, moves: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Positions written when the log held ``epoch`` moves, as they are after every move since."""
    if epoch >= len(moves) or not ranges:
        return ranges
    out = {d: list(r) for d, r in ranges.items()}
    for move in moves[epoch:]:
        span = out.get(move["dim"])
        if span is not None and span[0] >= move["at"]:
            span[0] += move["by"]
            span[1] += move["by"]
    return out


def _iter_texts(store: Store, start: int = 0) -> Iterator[str]:
    group = _group(store)
    if group is None or "ledger" not in group:
        return
    array = group["ledger"]
    size = int(array.shape[0])
    for lo in range(start, size, LEDGER_CHUNK):
        for text in array[lo : min(size, lo + LEDGER_CHUNK)]:
            yield str(text)


def iter_rows(store: Store, start: int = 0) -> Iterator[LedgerRow]:
    """Ledger rows from position ``start`` on, oldest first, decoded a chunk at a time, their positions
    up to date."""
    moves = read_moves(store)
    for text in _iter_texts(store, start):
        row = LedgerRow.from_json(text)
        if row.moves < len(moves):
            row.ranges = moved(row.ranges, row.moves, moves)
        yield row


def read_rows(store: Store, start: int = 0) -> list[LedgerRow]:
    """Ledger rows from position ``start`` on, oldest first."""
    return list(iter_rows(store, start))


def iter_current(store: Store, start: int = 0) -> Iterator[LedgerRow]:
    """Each object's newest row among the rows from ``start`` on.

    Two passes over the rows, holding in between only a 128-bit digest of each row's URL (16 bytes a
    row, in one array): reading a large ledger this way costs neither a decoded row nor a URL per
    object.
    """
    digests = bytearray()
    for text in _iter_texts(store, start):  # the URL alone: no row is made, no range moved
        digests += hashlib.blake2b(orjson.loads(text)["url"].encode(), digest_size=16).digest()
    keys = np.frombuffer(bytes(digests), dtype=[("high", "<u8"), ("low", "<u8")])
    newest = np.zeros(keys.size, dtype=bool)
    if keys.size:  # the last row of each URL: the first of each in the reversed rows
        _, first = np.unique(keys[::-1], return_index=True)
        newest[keys.size - 1 - first] = True
    del digests, keys
    for i, row in enumerate(iter_rows(store, start)):
        if i < newest.size and newest[i]:
            yield row


def ledger_size(store: Store) -> int:
    group = _group(store)
    if group is None or "ledger" not in group:
        return 0
    return int(group["ledger"].shape[0])


def read_ledger(store: Store) -> dict[str, LedgerRow]:
    """Each object's current state: its newest row."""
    return {row.url: row for row in iter_rows(store)}


def read_ledger_index(store: Store, start: int = 0) -> dict[str, LedgerRow]:
    """Each object's current state (among the rows from ``start`` on), with only what planning an
    update needs.

    The rows keep url, etag, status, fields, ranges, chunking, digests and since; the rest (reason,
    run, checksum...) is left empty. Rows of one cell share one ``fields`` dict and equal digests one ``digests`` dict
    (none of them is ever changed). An ingest into a large cube holds this for every object in it,
    so it is kept small: see ``benchmarks/RESULTS.md`` (P5) for the measured size per object.
    """
    shared: dict[tuple[Any, ...], Any] = {}
    statuses = {s.value: s for s in Status}
    index: dict[str, LedgerRow] = {}
    moves = read_moves(store)
    for text in _iter_texts(store, start):
        data = orjson.loads(text)
        fields, ranges, digests = data.get("fields", {}), data.get("ranges"), data.get("digests", {})
        if ranges and data.get("moves", 0) < len(moves):
            ranges = moved(ranges, data.get("moves", 0), moves)
        index[data["url"]] = LedgerRow(
            url=data["url"],
            etag=data.get("etag", ""),
            status=statuses.get(data["status"], data["status"]),
            fields=shared.setdefault(("fields", *fields.items()), fields),
            ranges=ranges or _EMPTY,
            digests=shared.setdefault(("digests", *sorted(digests.items())), digests),
            since=data.get("since", ""),
            chunking=data.get("chunking") or _NONE,
        )
    return index


_EMPTY: dict[str, Any] = {}  # shared by index rows without ranges; never changed
_NONE: list[Any] = []  # shared by index rows without chunking; never changed


def _append(store: Store, name: str, texts: list[str]) -> int:
    """Append JSON texts to one of the group's append-only arrays; returns its new length."""
    group = _group(store, create=True)
    if name not in group:
        group.create_array(name, shape=(0,), chunks=(LEDGER_CHUNK,), dtype=str, fill_value="")
    array = group[name]
    n = array.shape[0]
    array.resize((n + len(texts),))
    array[n:] = np.array(texts, dtype=np.dtypes.StringDType())
    return n + len(texts)


def append_rows(store: Store, rows: Iterable[LedgerRow]) -> int:
    """Append rows in the session behind ``store``; returns the ledger's new length.

    Each row is turned into its stored text as it comes, so a generator of rows is never held whole.
    """
    return append_texts(store, row_texts(rows, moves_epoch(store)))


def moves_epoch(store: Store) -> int:
    """How many moves the log holds: rows written now carry it (their positions are as of then)."""
    return len(read_moves(store))


def row_texts(rows: Iterable[LedgerRow], epoch: int) -> list[str]:
    """Rows' stored texts, each stamped with the moves epoch it was written in."""
    texts = []
    for row in rows:
        row.moves = epoch
        texts.append(row.to_json())
    return texts


def append_texts(store: Store, texts: list[str]) -> int:
    """Append rows' stored texts (:func:`row_texts`); returns the ledger's new length."""
    if not texts:
        return ledger_size(store)
    return _append(store, "ledger", texts)


RUNS = "runs"  # the group's log of the runs that published: it outlives the snapshots maintain expires


def append_run(store: Store, record: dict[str, Any]) -> None:
    """Record a run that is about to publish, in the session that holds its last changes."""
    _append(store, RUNS, [orjson.dumps(record, default=str).decode()])


def read_runs(store: Store) -> list[dict[str, Any]]:
    """The runs that published, oldest first."""
    group = _group(store)
    if group is None or RUNS not in group:
        return []
    return [orjson.loads(str(text)) for text in group[RUNS][...]]


def write_schema(store: Store, schema: CubeSchema, extra: dict[str, Any] | None = None) -> None:
    group = _group(store, create=True)
    group.update_attributes({"schema": schema.to_json(), **(extra or {})})


def read_schema(store: Store) -> CubeSchema | None:
    group = _group(store)
    if group is None or "schema" not in group.attrs:
        return None
    return CubeSchema.from_json(dict(group.attrs["schema"]))
