"""The icefloe exception tree, grouped by what a caller does about each error.

::

    IcefloeError
    ├── SpecError              bad spec or usage: exit 2, caught before any I/O
    ├── SourceError            bad or unsupported input: quarantine the object, never retry
    │   └── SchemaMismatch     the object parses but does not fit the cube
    ├── StorageError           an object store or repository failed: transient, retry
    ├── ConflictError          another writer moved a branch first: re-plan from the new tip
    └── PublishBlocked         a cube-wide check failed: main does not move; carries the report

Messages name the object, the variable and both sides of a mismatch, e.g.
``variable 'tas' in 's3://archive/2003/0911.nc' has chunks (1, 720, 1440); the cube has (1, 1800, 3600)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


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


class SchemaMismatch(SourceError):
    """An object parses, but its schema or coordinates do not fit the cube's."""


class StorageError(IcefloeError):
    """An object store or the repository failed in a way that may pass: retry with backoff."""


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


_REFUSALS = ("nosuchbucket", "accessdenied", "forbidden", "invalidaccesskeyid", "signaturedoesnotmatch")
_NOT_TRANSIENT = ("NotFoundError", "PermissionDeniedError", "UnauthenticatedError", "InvalidPathError")
_NO_CREDENTIALS = ("no providers in chain provided credentials", "credential provider was not enabled")


def store_failure(error: BaseException) -> IcefloeError | None:
    """The icefloe error for a failure of the object store itself, or None if it is something else.

    Icechunk's and obstore's errors carry a long multi-line context; the message keeps its first line.
    Outages and throttling become a (retried) :class:`StorageError`; a missing bucket or refused
    credentials become a plain :class:`IcefloeError`, since retrying cannot fix them.
    """
    if isinstance(error, IcefloeError):
        return None
    kind = type(error)
    module = kind.__module__ or ""
    if not (module.startswith(("icechunk", "obstore")) or isinstance(error, (ConnectionError, TimeoutError))):
        return None
    line = first_line(error)
    text = str(error).lower()
    if any(words in text for words in _NO_CREDENTIALS):
        return IcefloeError(
            f"no credentials for the object store: {line} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or `anonymous: true` under the spec's storage for a public bucket)"
        )
    if kind.__name__ in _NOT_TRANSIENT or any(word in text for word in _REFUSALS):
        return IcefloeError(f"the object store refused the request: {line} (check the bucket and the credentials)")
    if module.startswith("icechunk") and kind.__name__ != "StorageError":
        return None  # conflicts and bad usage are not the store's fault
    return StorageError(f"the object store failed: {line}")


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
