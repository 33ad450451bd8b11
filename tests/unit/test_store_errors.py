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
