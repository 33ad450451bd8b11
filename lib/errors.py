"""The icefloe exception tree, grouped by what a caller does about each error.

::

    IcefloeError
    ├── SpecError              bad spec or usage: exit 2, caught before any I/O
    ├── SourceError            bad or unsupported input: quarantine the object, never retry
    ├── StorageError           an object store or repository failed: transient, retry
    ├── StoreRefused           the store refused (credentials, missing bucket): say what to fix, never retry
    ├── ConflictError          another writer moved a branch first: re-plan from the new tip
    └── PublishBlocked         a cube-wide check failed: main does not move; carries the report

Messages name the object, the variable and both sides of a mismatch, e.g.
``variable 'tas' in 's3://archive/2003/0911.nc' has chunks (1, 720, 1440); the cube has (1, 1800, 3600)``.

Failures of the libraries underneath (obstore, Icechunk, the network) are sorted by one classifier,
:func:`classify_failure`, keyed on their exception types and Icechunk's :class:`icechunk.ErrorKind`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Any, Literal


class IcefloeError(Exception):
    """Root of every error icefloe raises on purpose."""


class SpecError(IcefloeError):
    """The spec or the command line is wrong; nothing was read or written.

    ``key`` is the dotted spec key at fault (``source.pattern``) when there is one.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class SourceError(IcefloeError):
    """An object cannot become part of the cube: it is quarantined with this reason, never retried.

    ``url`` is the object, ``variable`` the variable at fault when there is one.
    """

    def __init__(self, message: str, url: str | None = None, variable: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.variable = variable


class StorageError(IcefloeError):
    """An object store or the repository failed in a way that may pass: retry with backoff."""


class StoreRefused(IcefloeError):
    """The object store refused the request (credentials, permissions, a missing bucket): retrying
    cannot help, the message says what to check."""


class ConflictError(IcefloeError):
    """Another writer moved a branch since this run read it; the run re-plans from the new tip."""


class PublishBlocked(IcefloeError):
    """A cube-wide check failed on the staging snapshot, so main was not moved.

    ``summary`` is the run's summary (the ``--json`` object), findings included.
    """

    def __init__(self, message: str, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.summary = summary or {}


def first_line(error: BaseException) -> str:
    """An error's message without the multi-line context Icechunk and obstore append."""
    return next((ln.strip() for ln in str(error).splitlines() if ln.strip()), type(error).__name__)


class Failure(StrEnum):
    """What a failure of the store underneath means for the caller."""

    OUTAGE = "outage"  # network, throttling, 5xx, timeouts: retry
    REFUSED = "refused"  # 401/403, a missing bucket, a misconfigured store: say what to fix
    NO_CREDENTIALS = "no-credentials"  # no credentials anywhere in the chain: say what to set
    MISSING = "missing"  # the object (or key) is not there
    CHANGED = "changed"  # a referenced source's bytes changed since ingest (its checksum differs)


# S3's documented error codes (and HTTP statuses) that no retry can fix.
REFUSAL_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "Forbidden",
        "InvalidAccessKeyId",
        "InvalidBucketName",
        "InvalidToken",
        "NoSuchBucket",
        "SignatureDoesNotMatch",
        "401",
        "403",
    }
)
# Codes that describe the request's bytes, not the store: a range past the end of an object.
BYTES_CODES = frozenset({"InvalidRange", "416"})
MISSING_CODES = frozenset({"NoSuchKey", "404"})

# obstore and the AWS SDK give the service's error code in a structured part of the message: S3's XML
# body (<Code>…</Code>), the SDK's error struct (code: "…"), the HTTP status, or the variant of the
# store's error ("source: InvalidRange {").
_CODE = re.compile(r'<Code>(\w+)</Code>|code: "(\w+)"|status(?: code)?: (\d{3})|source: (\w+) \{')
# The AWS SDK reports an empty credential chain only in words, with no code.
_NO_CREDENTIALS = re.compile(r"no providers in chain provided credentials|credential provider was not enabled")


def service_codes(error: BaseException) -> set[str]:
    """The error codes the store itself gave (``NoSuchBucket``, ``SlowDown``, ``403``...)."""
    return {next(g for g in m.groups() if g) for m in _CODE.finditer(str(error))}


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


OTHER: Literal["other"] = "other"  # a failure that is not the store's: stop looking at its causes


def _by_codes(error: BaseException) -> Failure | Literal["other"]:
    """A store error's meaning from the codes it carries; an outage when it carries none we know."""
    if _NO_CREDENTIALS.search(str(error)):
        return Failure.NO_CREDENTIALS
    codes = service_codes(error)
    if codes & REFUSAL_CODES:
        return Failure.REFUSED
    if codes & BYTES_CODES:
        return OTHER
    if codes & MISSING_CODES:
        return Failure.MISSING
    return Failure.OUTAGE


def _classify_one(error: BaseException) -> Failure | Literal["other"] | None:
    """One exception's meaning; None when its type says nothing (look at its cause)."""
    import icechunk
    import obstore.exceptions as obstore_errors

    if isinstance(error, StorageError):
        return Failure.OUTAGE
    if isinstance(error, StoreRefused):
        return Failure.REFUSED
    if isinstance(error, IcefloeError):
        return OTHER  # already decided by icefloe
    if isinstance(error, icechunk.IcechunkError):
        kind = getattr(error, "kind", None)
        if kind == icechunk.ErrorKind.VIRTUAL_CHUNK_MODIFIED:
            return Failure.CHANGED
        if kind == icechunk.ErrorKind.OBJECT_NOT_FOUND:
            return Failure.MISSING
        if kind in (icechunk.ErrorKind.STORAGE_CONFIG, icechunk.ErrorKind.CANNOT_PARSE_URL):
            return Failure.REFUSED
        if kind == icechunk.ErrorKind.INVALID_CREDENTIALS:
            return Failure.NO_CREDENTIALS
        if isinstance(error, icechunk.StorageError):
            return _by_codes(error)
        return OTHER  # conflicts, missing refs, bad input: the caller's business
    if isinstance(error, (obstore_errors.PermissionDeniedError, obstore_errors.UnauthenticatedError)):
        return Failure.REFUSED
    if isinstance(error, FileNotFoundError):  # obstore's NotFoundError is one too
        return Failure.MISSING
    if isinstance(error, obstore_errors.GenericError):
        return _by_codes(error)
    if isinstance(error, obstore_errors.BaseError):
        return OTHER  # invalid paths, unsupported operations: bugs or configuration, not the store
    if isinstance(error, (ConnectionError, TimeoutError)):
        return Failure.OUTAGE
    if isinstance(error, PermissionError):  # a local file the process may not read
        return Failure.REFUSED
    return None


def classify_failure(error: BaseException) -> Failure | None:
    """What a failure of the store underneath means, or None if it is not the store's.

    The exception and its causes are looked at in turn, by type: icefloe's own errors, Icechunk's
    exception tree and :class:`icechunk.ErrorKind`, obstore's exception types, and the builtin
    connection errors. Within Icechunk's ``StorageError`` and obstore's ``GenericError`` (which cover
    every S3 failure alike) the store's own error code decides: a refusal (``AccessDenied``,
    ``NoSuchBucket``, 403...) is not an outage.
    """
    for current in _chain(error):
        found = _classify_one(current)
        if found == OTHER:
            return None
        if isinstance(found, Failure):
            return found
    return None


def is_transient(error: BaseException) -> bool:
    """Whether retrying may help: the store had an outage or throttled the request."""
    return classify_failure(error) == Failure.OUTAGE


def store_failure(error: BaseException) -> IcefloeError | None:
    """The icefloe error for a failure of the object store itself, or None if it is something else.

    Icechunk's and obstore's errors carry a long multi-line context; the message keeps its first line.
    An outage becomes a (retried) :class:`StorageError`; refused or missing credentials a
    :class:`StoreRefused` that says what to check, since retrying cannot fix them.
    """
    kind = classify_failure(error)
    if kind is None or isinstance(error, IcefloeError):
        return None
    line = first_line(error)
    if kind == Failure.NO_CREDENTIALS:
        return StoreRefused(
            f"no credentials for the object store: {line} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or `anonymous: true` under the spec's storage for a public bucket)"
        )
    if kind == Failure.REFUSED:
        return StoreRefused(f"the object store refused the request: {line} (check the bucket and the credentials)")
    if kind == Failure.OUTAGE:
        return StorageError(f"the object store failed: {line}")
    return None  # a missing object or a changed source: the caller decides what it means


def store_error(context: str, error: BaseException, fallback: str) -> IcefloeError:
    """``error`` as an icefloe error prefixed with what was being done (``"cannot list s3://..."``).

    A store failure keeps the kind :func:`store_failure` gives it (retried or not); anything else
    becomes a :class:`StorageError` saying ``fallback``.
    """
    failure = store_failure(error) or StorageError(fallback)
    return type(failure)(f"{context}: {failure}")


def storage_step[**P, R](step: Callable[P, R]) -> Callable[P, R]:
    """Decorate a pipeline step so store failures surface as icefloe errors with one-line messages."""

    @functools.wraps(step)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return step(*args, **kwargs)
        except Exception as e:
            mapped = store_failure(e)
            if mapped is None:
                raise
            raise mapped from e

    return wrapper
