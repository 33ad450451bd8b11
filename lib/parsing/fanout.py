"""Parsing fans out: batches of objects go to the executor's workers, come back as small entries.

Each worker parses its objects (:func:`lib.parsing.parse_urls`), checks that they did not change while
it read them, and reduces each fragment to the small :class:`~lib.validation.FileEntry` planning
needs, sending the full schema once per distinct kind of file. The references wait in the spool. A
call whose worker died is retried one object at a time, so the object that kills a parser is
quarantined and the others still land; an object that hangs its parser is stopped.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lib.errors import Failure, IcefloeError, StorageError, classify_failure
from lib.parsing.fragment import Fragment, PackedSlice
from lib.validation import CubeSchema, FileEntry

if TYPE_CHECKING:
    from lib.discovery import SourceObject
    from lib.executors import Executor
    from lib.parsing import ParseFailure, ParseOptions, SourceConfig
    from lib.spool import Spool

__all__ = ["ParsedBatch", "SummarizedBatch", "parse_objects", "summarize_objects"]


@dataclass
class ParsedBatch:
    """What parsing one batch yields: an entry per parsed object, the schemas, the failures.

    A writing run spills the entries to the spool as soon as the batch is parsed (:meth:`spill`) and
    loads them back for planning (:meth:`load`), so parsing holds nothing per object however large
    the archive, and the parse workers are gone before planning needs the memory.
    """

    batch: int
    entries: list[FileEntry] = field(default_factory=list)
    schemas: dict[str, CubeSchema] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    transient: dict[str, str] = field(default_factory=dict)
    spilled: int | None = None  # how many entries wait in the spool

    @property
    def parsed(self) -> int:
        return len(self.entries) if self.spilled is None else self.spilled

    def spill(self, spool: Spool) -> None:
        """Move the entries to the spool (``kind="entries"``)."""
        if self.spilled is None:
            spool.write(self.batch, self.entries, kind="entries")
            self.spilled, self.entries = len(self.entries), []

    def load(self, spool: Spool, shared: dict[Any, Any]) -> None:
        """Bring spilled entries back, sharing what they repeat with the other batches' (see :func:`_compact`)."""
        if self.spilled is not None:
            self.entries = spool.read(self.batch, kind="entries")
            for entry in self.entries:
                _compact(entry, shared)
            self.spilled = None


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    size = max(1, -(-len(items) // max(parts, 1)))
    return [items[i : i + size] for i in range(0, len(items), size)]


# A parse call that runs longer than this (seconds) is stopped and its objects tried one by one; an
# object that alone overruns is quarantined, so no input can hang a run.
PARSE_SECONDS_PER_CALL = 60.0
PARSE_SECONDS_PER_OBJECT = 5.0


@dataclass
class SummarizedBatch:
    """What a parse worker sends back: per object an entry and its references (or the failure), and
    the full schema once per distinct schema key -- not a metadata document per file."""

    results: list[tuple[FileEntry, Fragment] | ParseFailure] = field(default_factory=list)
    schemas: dict[str, CubeSchema] = field(default_factory=dict)


def changed_since_listing(obj: SourceObject, source: SourceConfig) -> str | None:
    """Why an object's bytes are not the ones listed (it changed or vanished while being parsed), or None.

    Its refs will carry the listed checksum, so a change would only fail loudly on read; refusing it
    now says why, and the next run takes the new version (its etag differs from the refused one).
    """
    import obstore

    from lib.parsing import read_failure, registry_for

    store, path = registry_for(source).resolve(obj.url)
    try:
        now = obstore.head(store, path)
    except Exception as e:
        if classify_failure(e) == Failure.MISSING:
            return f"'{obj.url}' disappeared while it was being parsed; the next run will look again"
        raise read_failure(obj.url, e) from e
    if str(now.get("e_tag") or "") != obj.etag:
        return (
            f"'{obj.url}' changed while it was being parsed (etag {obj.etag} became {now.get('e_tag')}); "
            f"the next run takes the new version"
        )
    return None


def summarize_objects(
    objects: list[SourceObject], source: SourceConfig, options: ParseOptions, pattern: dict[str, str]
) -> SummarizedBatch:
    """Parse and summarize objects; runs in the executor's workers (plain, picklable arguments)."""
    from lib.parsing import ParseFailure, parse_urls
    from lib.storage import checksum_for
    from lib.validation import summarize_fragment

    out = SummarizedBatch()
    for obj, result in zip(objects, parse_urls([o.url for o in objects], source, options), strict=True):
        if isinstance(result, ParseFailure):
            out.results.append(result)
            continue
        try:
            changed = changed_since_listing(obj, source)
        except IcefloeError as e:
            out.results.append(ParseFailure(obj.url, str(e), transient=isinstance(e, StorageError)))
            continue
        if changed is not None:
            out.results.append(ParseFailure(obj.url, changed))
            continue
        checksum = checksum_for(obj.url, obj.etag, obj.last_modified)
        entry, schema = summarize_fragment(result, obj, checksum, pattern, options.concat, options.rectilinear)
        out.schemas.setdefault(entry.schema_key, schema)
        out.results.append((entry, result.references_only()))
    return out


def _compact(entry: FileEntry, shared: dict[Any, Any]) -> None:
    """Share what files have in common (digests, keys, decoding attributes, concat values, checksums)
    instead of a copy per file: the run keeps an entry per file, so its size is the run's memory per
    file. Shared values are never changed in place."""
    entry.schema_key = sys.intern(entry.schema_key)
    entry.layout_key = sys.intern(entry.layout_key)
    entry.format, entry.parser = sys.intern(entry.format), sys.intern(entry.parser)
    # files of one cube mostly carry the same digests: one dict for all of them
    entry.shared = shared.setdefault(("shared", *sorted(entry.shared.items())), entry.shared)
    entry.cell = shared.setdefault(("cell", *sorted(entry.cell.items())), entry.cell)
    entry.fields = shared.setdefault(("fields", entry.fields), entry.fields)  # one tuple per pattern cell
    if entry.checksum == entry.etag:  # S3: the checksum is the ETag
        entry.checksum = entry.etag
    else:  # local files: modification times, shared by the files of one second
        entry.checksum = shared.setdefault(("checksum", entry.checksum), entry.checksum)
    for coord in entry.concat.values():
        key = repr(sorted(coord.attrs.items()))
        coord.attrs = shared.setdefault(key, coord.attrs)
    # an archive repeats its concat values across cells (the same steps in every polygon)
    values = tuple((d, id(c.attrs), c.raw.dtype.str, c.raw.shape, c.raw.tobytes()) for d, c in entry.concat.items())
    entry.concat = shared.setdefault(("concat", values), entry.concat)
    if not entry.encoded:  # filled in planning, with a new dict (shared by files with the same values)
        entry.encoded = shared.setdefault("encoded", entry.encoded)


def parse_objects(
    objects: list[SourceObject],
    batch: int,
    source: SourceConfig,
    options: ParseOptions,
    executor: Executor,
    spool: Spool,
    pattern: dict[str, str],
) -> ParsedBatch:
    """Parse a batch of objects over the executor, spool their references, keep their entries.

    A call whose worker died is retried one object at a time, so the object that kills a parser is
    quarantined and the others still land.
    """
    from lib.executors import CallFailed
    from lib.parsing import ParseFailure

    chunks = _split(objects, max(1, executor.workers) * 2)
    out = ParsedBatch(batch=batch)
    spooled: list[Fragment] = []
    shared: dict[Any, Any] = {}

    def absorb(summary: SummarizedBatch) -> None:
        for key, schema in summary.schemas.items():
            out.schemas.setdefault(key, schema)
        for result in summary.results:
            if isinstance(result, ParseFailure):
                (out.transient if result.transient else out.failed)[result.url] = result.reason
                continue
            entry, refs = result
            _compact(entry, shared)
            entry.spool = batch
            out.entries.append(entry)
            spooled.append(refs)

    crashed: list[tuple[list[SourceObject], CallFailed]] = []
    worked = False  # did any call come back? then the workers are sound and a crash is an object's doing
    calls = [(chunk, source, options, pattern) for chunk in chunks]
    timeout = PARSE_SECONDS_PER_CALL + PARSE_SECONDS_PER_OBJECT * max((len(c) for c in chunks), default=1)
    for chunk, result in zip(chunks, executor.imap(summarize_objects, calls, timeout), strict=True):
        if isinstance(result, CallFailed) and result.crashed:
            crashed.append((chunk, result))
        elif isinstance(result, CallFailed):
            absorb(SummarizedBatch([ParseFailure(o.url, result.error, transient=True) for o in chunk]))
        else:
            worked = True
            absorb(result)
    suspects: list[tuple[SourceObject, CallFailed]] = []
    for chunk, _ in crashed:  # one object at a time, so the one that kills a parser is found
        for obj in chunk:  # one call at a time: a call that must be stopped takes no other object with it
            single = executor.map(
                summarize_objects,
                [([obj], source, options, pattern)],
                PARSE_SECONDS_PER_CALL + PARSE_SECONDS_PER_OBJECT,
            )[0]
            if isinstance(single, CallFailed) and single.crashed:
                suspects.append((obj, single))
            elif isinstance(single, CallFailed):
                absorb(SummarizedBatch([ParseFailure(obj.url, single.error, transient=True)]))
            else:
                worked = True
                absorb(single)
    if suspects and not worked:
        # every call died, alone or not: the workers are broken, not the objects
        raise StorageError(f"parser workers keep dying ({suspects[0][1].error}); no object was quarantined")
    for obj, failure in suspects:
        absorb(SummarizedBatch([ParseFailure(obj.url, f"'{obj.url}' crashed the parser process ({failure.error})")]))
    spool.write(batch, spooled, pack=PackedSlice.pack)
    return out
