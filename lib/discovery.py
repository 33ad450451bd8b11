"""Discovery: list the source, match the pattern, and sort objects against the ledger.

Pattern grammar (relative to ``source.url``): ``*`` matches within one path segment, ``**`` any
number of whole segments, ``?`` one character; ``{field}`` captures a string and ``{field:d}`` an
integer, each within one segment. Fields become new dimensions of the cube, in pattern order.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import parse

from lib.errors import SpecError, store_error
from lib.listing import UNCHANGED, ObjectSpool, SpooledObjects

if TYPE_CHECKING:
    from obstore.store import ObjectStore

__all__ = [
    "HEAD_LIMIT",
    "Discovery",
    "Listing",
    "Pattern",
    "SourceObject",
    "check_named_urls",
    "check_source",
    "classify_objects",
    "compile_pattern",
    "head_sources",
    "list_sources",
]


@parse.with_pattern(r"[^/]*")
def _star(text: str) -> str:
    return text


@parse.with_pattern(r"[^/]")
def _one(text: str) -> str:
    return text


@parse.with_pattern(r"(?:[^/]+/)*")
def _deep(text: str) -> str:
    return text


@parse.with_pattern(r".*")
def _deep_tail(text: str) -> str:
    return text


@parse.with_pattern(r"[^/]+")
def _segment(text: str) -> str:
    return text


@parse.with_pattern(r"[0-9]+")
def _integer(text: str) -> int:
    return int(text)


_TYPES = {"Star": _star, "One": _one, "Deep": _deep, "DeepTail": _deep_tail, "Seg": _segment, "Int": _integer}
_FIELD = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class Pattern:
    """A compiled source pattern: its fields (name → "int" | "str") and a matcher for relative paths."""

    text: str
    fields: dict[str, str]
    prefix: str
    parser: Any = field(repr=False, compare=False)

    def match(self, path: str) -> dict[str, int | str] | None:
        """The field values of a path relative to the source URL, or None if it does not match."""
        found = self.parser.parse(path, evaluate_result=False)
        if found is None:
            return None
        # the regex has checked every field; converting them here rather than through parse's
        # evaluate_result (which runs each converter through its own machinery) is twice as quick, and
        # a listing of 500,000 objects matches every key
        groups = found.match.groupdict()
        return {name: int(groups[name]) if kind == "int" else groups[name] for name, kind in self.fields.items()}


@lru_cache(maxsize=64)
def compile_pattern(text: str) -> Pattern:
    """Compile a pattern into a parse-based matcher.

    Raises
    ------
    SpecError
        The pattern is empty, absolute, escapes the source, or has a malformed or duplicate field.
    """
    if not text or text.startswith("/") or ".." in text.split("/"):
        raise SpecError(
            f"pattern {text!r} must be a non-empty path relative to source.url, without '..'", key="source.pattern"
        )
    out: list[str] = []
    fields: dict[str, str] = {}
    i = 0
    while i < len(text):
        ch = text[i]
        if text.startswith("**/", i):
            out.append("{:Deep}")
            i += 3
        elif text.startswith("**", i):
            out.append("{:DeepTail}")
            i += 2
        elif ch == "*":
            out.append("{:Star}")
            i += 1
        elif ch == "?":
            out.append("{:One}")
            i += 1
        elif ch == "{":
            m = _FIELD.match(text, i)
            if not m:
                raise SpecError(f"pattern {text!r} has an unclosed '{{' at position {i}", key="source.pattern")
            name, _, kind = m.group(1).partition(":")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise SpecError(
                    f"pattern field {m.group(0)!r} needs a name like {{polygon}} or {{polygon:d}}", key="source.pattern"
                )
            if kind not in ("", "d"):
                raise SpecError(f"pattern field {m.group(0)!r}: the only type is ':d' (integer)", key="source.pattern")
            if name in fields:
                raise SpecError(f"pattern field {{{name}}} appears twice", key="source.pattern")
            fields[name] = "int" if kind == "d" else "str"
            out.append(f"{{{name}:{'Int' if kind == 'd' else 'Seg'}}}")
            i = m.end()
        elif ch == "}":
            raise SpecError(f"pattern {text!r} has an unmatched '}}' at position {i}", key="source.pattern")
        else:
            out.append(ch)
            i += 1
    parser = parse.compile("".join(out), extra_types=_TYPES, case_sensitive=True)
    literal = re.split(r"[*?{]", text, maxsplit=1)[0]
    prefix = literal.rsplit("/", 1)[0] + "/" if "/" in literal else ""
    return Pattern(text=text, fields=fields, prefix=prefix, parser=parser)


@dataclass(frozen=True, slots=True)
class SourceObject:
    """One object of the archive that matches the pattern."""

    url: str
    etag: str
    size: int
    last_modified: dt.datetime
    fields: tuple[tuple[str, int | str], ...] = ()

    @property
    def field_values(self) -> dict[str, int | str]:
        return dict(self.fields)


def _safe_key(path: str) -> bool:
    """Keys that could escape the source prefix are never ingested."""
    parts = path.split("/")
    return not path.startswith("/") and ".." not in parts and "." not in parts and "\x00" not in path


def _inside(root: str, path: str) -> bool:
    real = os.path.realpath(os.path.join(root, path))
    return real == root or real.startswith(root.rstrip("/") + "/")


def _source_object(url: str, meta: Any, values: dict[str, int | str]) -> SourceObject:
    """A listed or looked-up object, from obstore's metadata of it."""
    return SourceObject(
        url=url,
        etag=str(meta.get("e_tag") or ""),
        size=int(meta["size"]),
        last_modified=meta["last_modified"],
        fields=tuple(values.items()),
    )


class Listing(NamedTuple):
    """What a listing found: the matching objects (in a spool, iterated sorted by field values then
    URL), the matching URLs that cannot be used (unsafe keys), and how many objects were listed in all
    (matching or not)."""

    objects: ObjectSpool
    unsafe: list[str]
    listed: int


def list_sources(
    source_url: str, store: ObjectStore, pattern: Pattern, spool: ObjectSpool | None = None, shard: Any = None
) -> Listing:
    """List the objects under ``source_url`` that match ``pattern`` into ``spool`` (a new one in
    memory by default), a page at a time: the listing's memory does not grow with the source.
    ``shard(url)`` files each object under its ledger shard, for :func:`classify_objects`.

    Raises
    ------
    StorageError
        The listing failed (unreachable endpoint, missing bucket or directory, no access).
    """
    import obstore

    spool = spool if spool is not None else ObjectSpool()
    unsafe: list[str] = []
    listed = 0
    # a local source: a symlink must not lead outside it
    root = os.path.realpath(source_url.removeprefix("file://")) if source_url.startswith("file://") else None
    try:
        for batch in obstore.list(store, prefix=pattern.prefix or None, chunk_size=10_000):
            listed += len(batch)
            found = []
            for meta in batch:
                path = meta["path"]
                values = pattern.match(path)
                if values is None:
                    continue
                url = source_url + path
                if not _safe_key(path) or (root is not None and not _inside(root, path)):
                    unsafe.append(url)
                    continue
                found.append(_source_object(url, meta, values))
            spool.add(found, shard)
    except FileNotFoundError as e:
        raise SpecError(f"{source_url} does not exist: check source.url", key="source.url") from e
    except Exception as e:  # obstore raises its own error types for network and permission failures
        raise store_error(f"cannot list {source_url}", e, f"{type(e).__name__}: {e}") from e
    return Listing(spool, unsafe, listed)


def check_source(source_url: str) -> None:
    """Refuse a local source that does not exist, before anything else is done (S3 says so on listing).

    Raises
    ------
    SpecError
        ``source.url`` names a local directory that does not exist.
    """
    if source_url.startswith("file://") and not os.path.isdir(source_url.removeprefix("file://")):
        raise SpecError(f"{source_url} does not exist (no such directory): check source.url", key="source.url")


def check_named_urls(source_url: str, pattern: Pattern, urls: Iterable[str]) -> None:
    """Refuse named objects that cannot be part of the source, before any I/O.

    Raises
    ------
    SpecError
        A name is not a URL (a plain path gets the ``file://`` spelling as a hint), lies outside
        the source URL, or does not match the pattern.
    """
    for url in urls:
        if not url.startswith(("file://", "s3://")):
            hint = f"file://{os.path.abspath(url)}" if not re.match(r"^[a-z][a-z0-9+.-]*://", url) else None
            raise SpecError(
                f"{url!r} is not a file:// or s3:// URL" + (f": did you mean {hint}?" if hint else ""), key="urls"
            )
        if not url.startswith(source_url):
            raise SpecError(f"{url} is not under the source {source_url}", key="urls")
        if pattern.match(url.removeprefix(source_url)) is None:
            raise SpecError(f"{url} does not match the source pattern {pattern.text!r}", key="urls")


# Named objects are looked up one request each, up to this many; more are cheaper to find by listing.
HEAD_LIMIT = 256


def head_sources(
    source_url: str, store: ObjectStore, pattern: Pattern, urls: Iterable[str]
) -> tuple[list[SourceObject], list[str], list[str]]:
    """Look up named objects one by one instead of listing the whole source (an ingest of a few new objects).

    Returns what :func:`list_sources` returns for those URLs, sorted the same way, plus the URLs that are
    not in the source (call :func:`check_named_urls` first: names outside the pattern are missing too).

    Raises
    ------
    StorageError
        A lookup failed for another reason than a missing object (unreachable endpoint, no access).
    """
    import obstore

    found: list[SourceObject] = []
    unsafe: list[str] = []
    missing: list[str] = []
    root = os.path.realpath(source_url.removeprefix("file://")) if source_url.startswith("file://") else None
    for url in sorted(set(urls)):
        path = url.removeprefix(source_url) if url.startswith(source_url) else None
        values = pattern.match(path) if path else None
        if path is None or values is None:
            missing.append(url)
            continue
        if not _safe_key(path) or (root is not None and not _inside(root, path)):
            unsafe.append(url)
            continue
        try:
            meta = obstore.head(store, path)
        except FileNotFoundError:
            missing.append(url)
            continue
        except Exception as e:  # obstore raises its own error types for network and permission failures
            raise store_error(f"cannot look up {url}", e, f"{type(e).__name__}: {e}") from e
        found.append(_source_object(url, meta, values))
    found.sort(key=lambda o: (tuple(v for _, v in o.fields), o.url))
    return found, unsafe, missing


@dataclass
class Discovery:
    """Objects sorted against the ledger: what a run has to do. Each group is a view of the run's
    spool of objects (iterated in run order, counted with ``len``), except the unsafe URLs."""

    pending: SpooledObjects
    unchanged: SpooledObjects
    changed: SpooledObjects
    known_bad: SpooledObjects
    unsafe: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, spool: ObjectSpool) -> Discovery:
        def view(state: str) -> SpooledObjects:
            return SpooledObjects(spool, state)

        return cls(view(PENDING), view(UNCHANGED), view(CHANGED), view(KNOWN_BAD))

    @classmethod
    def empty(cls) -> Discovery:
        return cls.of(ObjectSpool())

    @property
    def discovered(self) -> int:
        return len(self.pending) + len(self.unchanged) + len(self.changed) + len(self.known_bad) + len(self.unsafe)


PENDING, CHANGED, KNOWN_BAD, IGNORED = "pending", "changed", "known_bad", "ignored"
SHARDS_AT_ONCE = 16  # ledger index shards read together (in one call) while a listing is sorted


def classify_objects(
    objects: Iterable[SourceObject] | ObjectSpool,
    ledger: Mapping[str, Any],
    *,
    replace: bool = False,
    only: set[str] | None = None,
) -> Discovery:
    """Sort objects against the ledger's current rows (url → row with etag and status).

    Objects in the cube at the same etag are unchanged; at another etag they are changed (pending
    only with ``replace``). Objects quarantined at the same etag are not retried. With ``only``,
    objects outside that set of URLs are left out entirely. A spool filled with its objects' ledger
    shards is sorted :data:`SHARDS_AT_ONCE` shards at a time, so only those of a large ledger are held
    at once; only objects that are not unchanged are written back.
    """
    if isinstance(objects, ObjectSpool):
        spool = objects
    else:
        spool = ObjectSpool()
        spool.add(objects)
    forget = getattr(ledger, "forget", None)
    with spool.sorting():
        _sort_against(spool, ledger, replace, only, forget)
    return Discovery.of(spool)


def _sort_against(
    spool: ObjectSpool, ledger: Mapping[str, Any], replace: bool, only: set[str] | None, forget: Any
) -> None:
    def lookup(url: str) -> tuple[str, str] | None:
        row = ledger.get(url)
        return (row.etag, row.status) if row is not None else None

    known = getattr(ledger, "state", lookup)  # the ledger index answers without making rows
    read_shards = getattr(ledger, "read_shards", None)
    for block in itertools.batched(spool.by_shard(), SHARDS_AT_ONCE):
        if read_shards is not None:
            read_shards(shard for shard, _ in block)
        states = []
        for _, group in block:
            for key, url, etag in group:
                found = known(url)
                if only is not None and url not in only:
                    state = IGNORED
                elif found is None or found[1] in ("removed", "deferred"):  # deferred: tried by every run
                    state = PENDING
                elif found[0] != etag:
                    state = PENDING if replace or found[1] == "quarantined" else CHANGED
                elif found[1] == "quarantined":
                    state = KNOWN_BAD
                else:
                    continue  # the spool's default state
                states.append((state, found is not None, key))
        spool.set_states(states)
        if forget is not None:
            forget()  # the next shards' rows replace these
