"""The objects a run found, kept on local disk instead of in memory.

A listing of 500,000 objects held as Python objects costs a few hundred MB, and a run needs them only
a batch at a time: to sort them against the ledger, then to parse each batch. :class:`ObjectSpool`
keeps them in a SQLite file in the run's spool directory (or in memory, for a handful), sorted the way
a run takes them -- by pattern field values, then URL -- and hands them back a batch at a time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from lib.discovery import SourceObject

__all__ = ["UNCHANGED", "ObjectSpool", "SpooledBatch", "SpooledObjects"]

_ROWS_PER_FETCH = 10_000


UNCHANGED = "unchanged"  # what the ledger says of nearly every listed object of a large cube


def _fields_key(fields: tuple[tuple[str, int | str], ...]) -> str:
    """A text that, followed by an object's URL, sorts (bytewise) as ``(field values..., url)`` sorts
    in Python: integers as fixed-width digits shifted to be non-negative, strings as they are."""
    parts = [f"{int(value) + 2**63:020d}" if isinstance(value, int) else str(value) for _, value in fields]
    return "".join(f"{p}\x00" for p in parts)


class ObjectSpool:
    """Objects of a run in a SQLite table: url, etag, size, modification time, pattern fields, the
    state the ledger gives them and, once batched, their batch.

    An object's state is ``unchanged`` (in the cube, at this ETag) unless sorting sets another: in a
    listing of a large cube that is nearly every object, and sorting writes only the others.
    """

    def __init__(self, directory: Path | None = None) -> None:
        # a file of its own: a discovery that is retried starts from an empty spool, whatever still
        # holds the one before (the failed attempt's traceback, say)
        self._file: Path | None = None
        if directory is not None:
            fd, name = tempfile.mkstemp(prefix="objects-", suffix=".sqlite", dir=directory)
            os.close(fd)
            self._file = Path(name)
        # a run's steps may run on different threads (Prefect's tasks), one after the other: never at once
        self._db = sqlite3.connect(str(self._file or ":memory:"), check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (url TEXT PRIMARY KEY, sort TEXT, etag TEXT, size INTEGER, "
            f"modified TEXT, fields TEXT, state TEXT DEFAULT '{UNCHANGED}', replacing INTEGER DEFAULT 1, "
            "batch INTEGER, shard INTEGER DEFAULT 0)"
        )
        # the index by state is made once the objects are sorted (:meth:`sorting`), not kept through every insert

    def add(self, objects: Iterable[SourceObject], shard: Any = None) -> None:
        """Add objects (a page of a listing, say); ``shard(url)`` files each under its ledger shard."""
        keys: dict[tuple[tuple[str, int | str], ...], tuple[str, str]] = {}  # objects of a cell share fields

        def encoded(fields: tuple[tuple[str, int | str], ...]) -> tuple[str, str]:
            if (found := keys.get(fields)) is None:
                found = keys[fields] = (_fields_key(fields), orjson.dumps(fields).decode())
            return found

        self._db.executemany(
            "INSERT OR REPLACE INTO objects (url, sort, etag, size, modified, fields, shard) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    o.url,
                    (key := encoded(o.fields))[0] + o.url,
                    o.etag,
                    o.size,
                    o.last_modified.isoformat(),
                    key[1],
                    shard(o.url) if shard is not None else 0,
                )
                for o in objects
            ),
        )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM objects").fetchone()[0])

    def __iter__(self) -> Iterator[SourceObject]:
        return self.objects()

    def objects(self, state: str | None = None) -> Iterator[SourceObject]:
        """The objects (in one state), in run order, read a few thousand at a time."""
        where, args = ("WHERE state = ?", (state,)) if state is not None else ("", ())
        cursor = self._db.execute(f"SELECT url, etag, size, modified, fields FROM objects {where} ORDER BY sort", args)
        while rows := cursor.fetchmany(_ROWS_PER_FETCH):
            yield from (_object(row) for row in rows)

    def count(self, state: str) -> int:
        return int(self._db.execute("SELECT count(*) FROM objects WHERE state = ?", (state,)).fetchone()[0])

    def get(self, url: str) -> SourceObject | None:
        row = self._db.execute("SELECT url, etag, size, modified, fields FROM objects WHERE url = ?", (url,)).fetchone()
        return _object(row) if row is not None else None

    def by_shard(self) -> Iterator[tuple[int, list[tuple[int, str, str]]]]:
        """(shard, [(key, url, etag), ...]) for every object, a ledger shard at a time; ``key`` is
        what :meth:`set_states` takes."""
        cursor = self._db.execute("SELECT shard, rowid, url, etag FROM objects ORDER BY shard")
        shard = -1
        group: list[tuple[int, str, str]] = []
        while rows := cursor.fetchmany(_ROWS_PER_FETCH):
            for s, key, url, etag in rows:
                if s != shard and group:
                    yield shard, group
                    group = []
                shard = int(s)
                group.append((key, url, etag))
        if group:
            yield shard, group

    @contextlib.contextmanager
    def sorting(self) -> Iterator[None]:
        """While objects are given their states: the index by state is made once afterwards, not
        kept up to date through every insert and update (half the time for a listing of 500,000)."""
        self._db.execute("DROP INDEX IF EXISTS by_state")
        try:
            yield
        finally:
            self._db.execute("CREATE INDEX IF NOT EXISTS by_state ON objects (state, sort)")

    def set_states(self, states: Iterable[tuple[str, bool, int]]) -> None:
        """Record the state of objects that are not unchanged: ``(state, replacing, key)``, the key
        from :meth:`by_shard`."""
        self._db.executemany("UPDATE objects SET state = ?, replacing = ? WHERE rowid = ?", states)

    def urls(self, state: str, replacing: bool | None = None) -> Iterator[str]:
        extra = "" if replacing is None else f" AND replacing = {int(replacing)}"
        cursor = self._db.execute(f"SELECT url FROM objects WHERE state = ?{extra} ORDER BY sort", (state,))
        while rows := cursor.fetchmany(_ROWS_PER_FETCH):
            yield from (u for (u,) in rows)

    def number_batches(self, state: str, size: int) -> list[int]:
        """Number the objects in ``state`` into batches of ``size`` in run order; returns each batch's size."""
        self._db.execute(
            "UPDATE objects SET batch = numbered.b FROM (SELECT url, (ROW_NUMBER() OVER (ORDER BY sort) - 1) / ? AS b "
            "FROM objects WHERE state = ?) AS numbered WHERE objects.url = numbered.url",
            (size, state),
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS by_batch ON objects (batch, sort)")
        rows = self._db.execute(
            "SELECT batch, count(*) FROM objects WHERE state = ? GROUP BY batch ORDER BY batch", (state,)
        )
        return [n for _, n in rows]

    def batch(self, number: int) -> list[SourceObject]:
        cursor = self._db.execute(
            "SELECT url, etag, size, modified, fields FROM objects WHERE batch = ? ORDER BY sort", (number,)
        )
        return [_object(row) for row in cursor]

    def close(self) -> None:
        self._db.close()
        if self._file is not None:
            self._file.unlink(missing_ok=True)

    def __del__(self) -> None:  # a spool nobody closed (a view dropped with its run): close its file
        if hasattr(self, "_db"):
            self.close()


def _object(row: tuple[Any, ...]) -> SourceObject:
    from lib.discovery import SourceObject

    url, etag, size, modified, fields = row
    return SourceObject(
        url=url,
        etag=etag,
        size=int(size),
        last_modified=dt.datetime.fromisoformat(modified),
        fields=tuple((str(k), v) for k, v in orjson.loads(fields)),
    )


class SpooledObjects:
    """The objects of one state in a spool: iterated (in run order) as objects, counted, and looked
    up by URL."""

    def __init__(self, spool: ObjectSpool, state: str) -> None:
        self.spool, self.state = spool, state

    def __iter__(self) -> Iterator[SourceObject]:
        return self.spool.objects(self.state)

    def __len__(self) -> int:
        return self.spool.count(self.state)

    def __bool__(self) -> bool:
        return len(self) > 0

    def get(self, url: str) -> SourceObject | None:
        row = self.spool._db.execute("SELECT state FROM objects WHERE url = ?", (url,)).fetchone()
        return self.spool.get(url) if row is not None and row[0] == self.state else None

    def urls(self, replacing: bool | None = None) -> Iterator[str]:
        return self.spool.urls(self.state, replacing)


class SpooledBatch:
    """One batch of a spool's objects: its size is known, its objects are read when iterated."""

    def __init__(self, spool: ObjectSpool, number: int, size: int) -> None:
        self.spool, self.number, self.size = spool, number, size

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[SourceObject]:
        return iter(self.spool.batch(self.number))
