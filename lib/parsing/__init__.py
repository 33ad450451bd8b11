"""Parsing: one object in, one fragment out, whatever its format.

The format is detected from the object's first bytes. HDF5 / netCDF-4 goes through the fast h5py
parser (:mod:`lib.parsing.hdf5`) and falls back to VirtualiZarr's parser if the fast one fails;
netCDF3 and FITS go through VirtualiZarr's parsers (:mod:`lib.parsing.reference`). Failures are
sorted into transient ones (the store failed: retry) and permanent ones (the object is bad:
quarantine), so a network blip never quarantines a good file.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from lib.errors import Failure, IcefloeError, SourceError, StorageError, classify_failure, first_line, is_transient
from lib.parsing.formats import HEAD_BYTES, describe_head, detect_format
from lib.parsing.fragment import ArrayFragment, Fragment, name_phony_dims
from lib.parsing.policy import ParseOptions
from lib.parsing.readable import refuse_past_the_end, refuse_unreadable
from lib.parsing.readers import read_head

if TYPE_CHECKING:
    from obspec_utils.registry import ObjectStoreRegistry

    from lib.spec import StorageOptions

__all__ = ["ArrayFragment", "Fragment", "ParseFailure", "ParseOptions", "SourceConfig", "parse_source", "parse_urls"]


@dataclass(frozen=True)
class SourceConfig:
    """How a worker reaches the source: the URL prefix and storage options (no credentials)."""

    url: str
    storage: StorageOptions | None = None


@dataclass
class ParseFailure:
    """An object that did not parse: ``transient`` failures are retried, the others quarantined."""

    url: str
    reason: str
    transient: bool = False
    variable: str | None = None


_IMPORTING = threading.Lock()


def _import_parsers() -> None:
    """Import the parser libraries once, under a lock.

    Parse calls run in threads with the ``threads`` executor; two threads importing VirtualiZarr's
    modules at once can see one half-initialised ("cannot import name 'HDFParser'"), and the fast
    parser would fall back for no reason.
    """
    with _IMPORTING:
        import virtualizarr.parsers
        import virtualizarr.parsers.hdf.filters
        import virtualizarr.parsers.hdf.hdf  # noqa: F401


@lru_cache(maxsize=8)
def registry_for(config: SourceConfig) -> ObjectStoreRegistry:
    from lib.storage import source_registry

    return source_registry(config.url, config.storage)


def parse_source(url: str, registry: ObjectStoreRegistry, options: ParseOptions) -> Fragment:
    """Parse one object into a fragment.

    Raises
    ------
    SourceError
        The object is empty, of an unknown or unsupported format, or corrupt.
    StorageError
        The store failed while reading it; retrying may succeed.
    """
    try:
        head, size = read_head(url, registry, HEAD_BYTES)
    except Exception as e:
        raise read_failure(url, e) from e
    fmt = detect_format(head)
    if fmt is None:
        raise SourceError(f"'{url}' is not a supported format: {describe_head(head)}", url=url)
    if fmt == "netcdf3":
        check_netcdf3_records(url, head, size)
    errors: list[str] = []
    if fmt == "hdf5" and options.fast:
        from lib.parsing.hdf5 import parse_hdf5

        try:
            fragment = parse_hdf5(url, registry, options)
            name_phony_dims(fragment)
            refuse_past_the_end(fragment, size)
            refuse_unreadable(fragment, options.concat)
            return fragment
        except SourceError:
            raise  # a refusal, not a failure: the reference parser would only do worse
        except Exception as e:
            if is_transient(e):
                raise StorageError(f"reading '{url}' failed: {type(e).__name__}: {first_line(e)}") from e
            errors.append(f"fast parser: {_short(e)}")
    from lib.parsing.reference import parse_with_virtualizarr

    try:
        fragment = parse_with_virtualizarr(url, fmt, registry, options)
    except SourceError:
        raise
    except Exception as e:
        if is_transient(e):
            raise StorageError(f"reading '{url}' failed: {type(e).__name__}: {first_line(e)}") from e
        errors.append(f"VirtualiZarr: {_short(e)}")
        raise SourceError(f"'{url}' cannot be parsed as {fmt}: {'; '.join(errors)}", url=url) from e
    if errors:
        fragment.notes.append(f"fell back to VirtualiZarr after the {errors[0]}")
    name_phony_dims(fragment)
    refuse_past_the_end(fragment, size)
    refuse_unreadable(fragment, options.concat)
    return fragment


def read_failure(url: str, error: BaseException) -> IcefloeError:
    """What a failure to read an object means: an outage is retried; a missing or refused object is
    the object's problem (quarantined with the reason), so it does not fail every run."""
    kind = classify_failure(error)
    line = f"{type(error).__name__}: {first_line(error)}"
    if kind == Failure.MISSING:
        return SourceError(f"'{url}' disappeared before it could be parsed", url=url)
    if kind in (Failure.REFUSED, Failure.NO_CREDENTIALS):
        return SourceError(
            f"the object store refused to read '{url}' ({line}): check its permissions; icefloe tries it "
            f"again when the object changes",
            url=url,
        )
    return StorageError(f"cannot read '{url}': {line}")


def check_netcdf3_records(url: str, head: bytes, size: int) -> None:
    """Refuse a netCDF3 header whose record count the object cannot hold (each record takes a byte at least).

    A corrupt count would otherwise make the parser build (and then fail to read) millions of references.
    """
    wide = head[3:4] == b"\x05"  # CDF-5 counts records in 8 bytes
    numrecs = int.from_bytes(head[4:12] if wide else head[4:8], "big", signed=False)
    if numrecs not in (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF) and numrecs > size:  # all ones: still being written
        raise SourceError(
            f"'{url}' declares {numrecs:,} records in its netCDF3 header but holds only {size:,} bytes", url=url
        )


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def parse_urls(
    urls: list[str], source: SourceConfig, options: ParseOptions, retries: int = 3, backoff: float = 0.5
) -> list[Fragment | ParseFailure]:
    """Parse a batch of objects, isolating failures per object.

    This is what every executor runs in its workers: it takes plain values, builds its own store
    registry, and returns one result per URL in order. Transient failures are retried with backoff
    here; those that persist come back as transient ``ParseFailure`` so the caller can retry later.
    """
    from lib.local.faults import hang_if_asked

    _import_parsers()
    registry = registry_for(source)
    results: list[Fragment | ParseFailure] = []
    for url in urls:
        hang_if_asked(url)
        for attempt in range(retries + 1):
            try:
                results.append(parse_source(url, registry, options))
                break
            except SourceError as e:
                results.append(ParseFailure(url, str(e), variable=e.variable))
                break
            except StorageError as e:
                if attempt == retries:
                    results.append(ParseFailure(url, str(e), transient=True))
                else:
                    time.sleep(backoff * 2**attempt)
            except MemoryError:
                results.append(ParseFailure(url, f"'{url}' needs more memory to parse than this worker has"))
                break
    return results
