"""Object-store failures become one-line icefloe errors: transient ones are retried, the rest say what to fix."""

from __future__ import annotations

import pytest

from lib.errors import IcefloeError, StorageError
from lib.repository import open_repository
from lib.spec import load_spec

UNREACHABLE = """name: x
source:
  url: s3://archive/files/
  pattern: "f_{n:d}.nc"
  storage: {endpoint: "http://127.0.0.1:9", region: us-east-1, path_style: true}
concat: [time]
repo:
  url: s3://cubes/x
  storage: {endpoint: "http://127.0.0.1:9", region: us-east-1, path_style: true}
"""


def test_missing_credentials_are_not_retried_and_say_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(IcefloeError) as error:
        open_repository(load_spec(UNREACHABLE))
    assert not isinstance(error.value, StorageError)  # retrying cannot fix it
    assert "no credentials for the object store" in str(error.value)
    assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in str(error.value) and "\n" not in str(error.value)


def test_an_unreachable_store_is_a_transient_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "something")
    with pytest.raises(StorageError) as error:
        open_repository(load_spec(UNREACHABLE))
    assert "cannot open the repository s3://cubes/x: the object store failed" in str(error.value)
    assert "Connection refused" in str(error.value) and "\n" not in str(error.value)


SLOW_DOWN_XML = (
    "Generic S3 error: Error performing HEAD http://127.0.0.1:1/b/k in 5ms, after 4 retries - Server returned "
    "non-2xx status code: 503 Service Unavailable: <Error><Code>SlowDown</Code></Error>"
)
NO_SUCH_BUCKET_XML = (
    "Generic S3 error: Error performing GET http://127.0.0.1:1/nobucket?list-type=2 in 4ms - Server returned "
    'non-2xx status code: 404 Not Found: <?xml version="1.0"?><Error><Code>NoSuchBucket</Code></Error>'
)
SDK = 'object store error service error: unhandled error ({0}): Error {{ code: "{0}", message: "..." }}'


def _icechunk_errors() -> dict[str, BaseException]:
    """Real Icechunk errors from a local repository: what a missing branch, an existing one and a
    stale compare-and-swap raise."""
    import tempfile

    import icechunk

    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(tempfile.mkdtemp()))
    out: dict[str, BaseException] = {}
    for name, attempt in {
        "missing branch": lambda: repo.lookup_branch("nope"),
        "existing branch": lambda: repo.create_branch("main", repo.lookup_branch("main")),
        "stale compare-and-swap": lambda: repo.reset_branch(
            "main", repo.lookup_branch("main"), from_snapshot_id="1" * 20
        ),
    }.items():
        try:
            attempt()
        except icechunk.IcechunkError as e:
            out[name] = e
    return out


def _caused(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


def test_one_classifier_sorts_every_store_failure_by_type_kind_and_code() -> None:
    import icechunk
    import obstore.exceptions as obstore_errors

    from lib.errors import Failure, SourceError, StoreRefused, classify_failure, is_transient

    real = _icechunk_errors()
    table: list[tuple[str, BaseException, Failure | None]] = [
        ("obstore 503 after retries", obstore_errors.GenericError(SLOW_DOWN_XML), Failure.OUTAGE),
        (
            "obstore connection refused",
            obstore_errors.GenericError("Generic S3 error: tcp connect error"),
            Failure.OUTAGE,
        ),
        ("obstore missing bucket", obstore_errors.GenericError(NO_SUCH_BUCKET_XML), Failure.REFUSED),
        ("obstore 403", obstore_errors.PermissionDeniedError("lacked the necessary privileges"), Failure.REFUSED),
        ("obstore 401", obstore_errors.UnauthenticatedError("not authenticated"), Failure.REFUSED),
        ("obstore range past the end", obstore_errors.GenericError("source: InvalidRange {"), None),
        ("obstore invalid path", obstore_errors.InvalidPathError("bad path"), None),
        ("a missing object", FileNotFoundError("Object at location k not found"), Failure.MISSING),
        ("icechunk throttled", icechunk.StorageError(SDK.format("SlowDown")), Failure.OUTAGE),
        ("icechunk wrong key", icechunk.StorageError(SDK.format("SignatureDoesNotMatch")), Failure.REFUSED),
        ("icechunk access denied", icechunk.StorageError(SDK.format("AccessDenied")), Failure.REFUSED),
        (
            "icechunk no credentials",
            icechunk.StorageError("dispatch failure: other: no providers in chain provided credentials"),
            Failure.NO_CREDENTIALS,
        ),
        *((f"icechunk {name}", error, None) for name, error in real.items()),
        ("connection reset", ConnectionResetError("reset by peer"), Failure.OUTAGE),
        ("a timeout", TimeoutError("timed out"), Failure.OUTAGE),
        ("a local file it may not read", PermissionError("denied"), Failure.REFUSED),
        (
            "h5py's error over an outage",
            _caused(OSError("Unable to read"), obstore_errors.GenericError(SLOW_DOWN_XML)),
            Failure.OUTAGE,
        ),
        ("a bad file, already judged", _caused(SourceError("truncated"), ConnectionError("x")), None),
        ("icefloe's retried error", StorageError("the object store failed"), Failure.OUTAGE),
        ("icefloe's refusal", StoreRefused("refused"), Failure.REFUSED),
        ("a bug", ValueError("x"), None),
    ]
    assert len(real) == 3
    for name, error, expected in table:
        assert classify_failure(error) == expected, name
        assert is_transient(error) == (expected == Failure.OUTAGE), name
