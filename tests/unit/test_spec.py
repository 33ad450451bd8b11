"""The spec is validated strictly: typos and missing keys are errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib.errors import SpecError
from lib.spec import load_spec

MINIMAL = """
name: oae
source:
  url: file:///data/oae
  pattern: "polygon_{polygon:d}/month_{month:d}/*.nc"
repo:
  url: file:///data/cubes/oae
"""


def test_minimal_spec_gets_documented_defaults() -> None:
    spec = load_spec(MINIMAL)
    assert spec.source.url == "file:///data/oae/"
    assert spec.concat == ()
    assert spec.repo.branch == "main" and spec.repo.staging == "ingest"
    assert spec.execution.executor == "processes" and spec.execution.workers >= 1
    assert spec.execution.batch_size == 500
    assert spec.checks.monotonic == ("time",) and spec.checks.regular == ("time",)
    assert spec.checks.spot_check.files == 100 and spec.checks.spot_check.chunks_per_variable == 1
    assert spec.variables.native == "auto"


def test_spec_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "cube.yaml"
    path.write_text(MINIMAL)
    assert load_spec(path).name == "oae"


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("sourse: typo\n", "sourse"),
        ("concat: [time]\nchecks:\n  spot_chek: {files: 3}\n", "checks.spot_chek"),
        ("execution:\n  executor: spark\n", "execution.executor"),
        ("execution:\n  workers: 0\n", "execution.workers"),
        ("repo2: {}\n", "repo2"),
    ],
)
def test_unknown_or_bad_keys_are_named(extra: str, key: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(MINIMAL + extra)
    assert key in str(err.value)
    assert err.value.key == key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("name: x\nsource: {url: file:///a/}\nrepo: {url: file:///b}\n", "source.pattern"),
        ("name: x\nsource: {url: file:///a/, pattern: '*.nc'}\n", "repo"),
        ("source: {url: file:///a/, pattern: '*.nc'}\nrepo: {url: file:///b}\n", "name"),
    ],
)
def test_missing_required_keys_are_named(text: str, key: str) -> None:
    with pytest.raises(SpecError, match=f"missing required key '{key}'"):
        load_spec(text)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/data/", "file:// or s3://"),
        ("file://relative/path/", "absolute path"),
        ("s3://Bad_Bucket/x/", "bucket name"),
        ("file:///data/../etc/", "'..'"),
    ],
)
def test_bad_source_urls(url: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(MINIMAL.replace("file:///data/oae", url))


def test_bad_patterns_are_spec_errors() -> None:
    for pattern, message in [
        ("{polygon:x}/*.nc", "only type is ':d'"),
        ("{a}/{a}.nc", "appears twice"),
        ("/abs/*.nc", "relative"),
        ("{unclosed/*.nc", "unclosed"),
    ]:
        with pytest.raises(SpecError, match=message):
            load_spec(MINIMAL.replace("polygon_{polygon:d}/month_{month:d}/*.nc", pattern))


def test_pattern_fields_cannot_be_concat_dims() -> None:
    with pytest.raises(SpecError, match="also listed in concat"):
        load_spec(MINIMAL + "concat: [polygon]\n")


def test_yaml_errors_say_where() -> None:
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_spec("name: x\nsource: [unclosed\n")


def test_storage_options_and_lambda_config() -> None:
    spec = load_spec(
        MINIMAL.replace("file:///data/oae", "s3://archive/oae")
        + (
            "execution:\n  executor: lithops\n  lithops:\n    backend: aws_lambda\n"
            "    aws_lambda: {execution_role: 'arn:aws:iam::1:role/x', region: eu-west-1}\n"
        )
    )
    assert spec.source.url == "s3://archive/oae/"
    assert spec.execution.lithops.aws_lambda is not None
    with pytest.raises(SpecError, match="aws_lambda"):
        load_spec(MINIMAL + "execution:\n  lithops: {backend: aws_lambda}\n")
    with pytest.raises(SpecError, match="endpoint"):
        load_spec(MINIMAL + "  storage: {endpoint: 127.0.0.1:8333}\n")
