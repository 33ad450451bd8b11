"""The deployment infrastructure holds together: Terraform resources reference each other as intended,
the Lithops runtime config passes Lithops' own loading, and the Lambda image pins what uv.lock pins."""

from __future__ import annotations

import re
import string
import tomllib
from pathlib import Path
from typing import Any

import hcl2
import lithops.config
import pytest
import yaml

from lib.executors import lithops_config
from lib.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
AWS = ROOT / "infra" / "aws"
REF = re.compile(r"\b(data\.aws_[a-z0-9_]+\.[a-z0-9_]+|aws_[a-z0-9_]+\.[a-z0-9_]+|var\.[a-z0-9_]+)")


def _unquote(key: str) -> str:
    return key.strip('"')


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.fixture(scope="module")
def terraform() -> dict[str, Any]:
    """Each declared block (``aws_x.name``, ``data.aws_x.name``, ``var.name``, ``output.name``) → its body."""
    blocks: dict[str, Any] = {}
    for path in sorted(AWS.glob("*.tf")):
        doc = hcl2.loads(path.read_text())
        for item in doc.get("resource", []):
            for kind, named in item.items():
                for name, body in named.items():
                    blocks[f"{_unquote(kind)}.{_unquote(name)}"] = body
        for item in doc.get("data", []):
            for kind, named in item.items():
                for name, body in named.items():
                    blocks[f"data.{_unquote(kind)}.{_unquote(name)}"] = body
        for item in doc.get("variable", []):
            for name, body in item.items():
                blocks[f"var.{_unquote(name)}"] = body
        for item in doc.get("output", []):
            for name, body in item.items():
                blocks[f"output.{_unquote(name)}"] = body
    return blocks


def refs(body: Any) -> set[str]:
    """References in a block's values (descriptions are prose, not references)."""
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "description"}
    return {m for s in _strings(body) for m in REF.findall(s)}


def test_every_reference_resolves(terraform: dict[str, Any]) -> None:
    dangling = {(name, r) for name, body in terraform.items() for r in refs(body) if r not in terraform}
    assert not dangling, dangling


@pytest.mark.parametrize(
    ("block", "must_reference"),
    [
        (
            "aws_s3_bucket_notification.archive",
            {
                "aws_sqs_queue.notifications",
                "data.aws_s3_bucket.archive",
                "var.source_prefix",
                "var.use_eventbridge",
                "aws_sqs_queue_policy.notifications",
            },
        ),
        ("aws_sqs_queue.notifications", {"aws_sqs_queue.dead_letters"}),
        (
            "data.aws_iam_policy_document.queue",
            {"aws_sqs_queue.notifications", "data.aws_s3_bucket.archive", "aws_cloudwatch_event_rule.object_created"},
        ),
        ("aws_sqs_queue_policy.notifications", {"aws_sqs_queue.notifications", "data.aws_iam_policy_document.queue"}),
        ("aws_cloudwatch_event_rule.object_created", {"data.aws_s3_bucket.archive", "var.source_prefix"}),
        (
            "aws_cloudwatch_event_target.to_queue",
            {"aws_cloudwatch_event_rule.object_created", "aws_sqs_queue.notifications"},
        ),
        ("data.aws_iam_policy_document.bridge", {"aws_sqs_queue.notifications", "aws_sqs_queue.dead_letters"}),
        (
            "data.aws_iam_policy_document.flows",
            {"data.aws_s3_bucket.archive", "aws_s3_bucket.cubes", "aws_iam_role.lithops", "aws_s3_bucket.lithops"},
        ),
        ("aws_iam_role.lithops", {"data.aws_iam_policy_document.lambda_assume"}),
        ("aws_iam_role_policy.lithops", {"aws_iam_role.lithops", "data.aws_iam_policy_document.lithops"}),
        ("data.aws_iam_policy_document.lithops", {"data.aws_s3_bucket.archive", "aws_s3_bucket.lithops"}),
        ("output.queue_url", {"aws_sqs_queue.notifications"}),
        ("output.lithops_execution_role_arn", {"aws_iam_role.lithops"}),
        ("output.lithops_runtime_repository", {"aws_ecr_repository.lithops_runtime"}),
    ],
)
def test_resources_are_wired_together(terraform: dict[str, Any], block: str, must_reference: set[str]) -> None:
    assert must_reference <= refs(terraform[block]), refs(terraform[block])


def test_notifications_are_object_created_under_the_prefix(terraform: dict[str, Any]) -> None:
    (queue,) = terraform["aws_s3_bucket_notification.archive"]["dynamic"][0]['"queue"']["content"]
    assert queue["events"] == ['"s3:ObjectCreated:*"']
    rule = terraform["aws_cloudwatch_event_rule.object_created"]["event_pattern"]
    assert '"Object Created"' in rule and "aws.s3" in rule


def fill(template: str) -> dict[str, Any]:
    text = string.Template(template).substitute(
        AWS_REGION="eu-west-1",
        LITHOPS_STORAGE_BUCKET="icefloe-lithops",
        LITHOPS_EXECUTION_ROLE_ARN="arn:aws:iam::123456789012:role/lithops",
    )
    return yaml.safe_load(text)


def test_lithops_config_template_passes_lithops_own_loading() -> None:
    data = fill((ROOT / "infra" / "lithops" / "config.template.yaml").read_text())
    loaded = lithops.config.default_config(config_data=data)
    assert loaded["lithops"]["mode"] == "serverless" and loaded["aws_lambda"]["runtime"] == "icefloe-lambda-runtime"
    del data["aws_lambda"]["execution_role"]
    with pytest.raises(Exception, match="execution_role"):
        lithops.config.default_config(config_data=data)


def test_a_specs_lambda_executor_config_passes_lithops_own_loading() -> None:
    spec = load_spec(
        "name: x\nsource: {url: 's3://archive/oae/', pattern: '*.nc'}\nrepo: {url: 's3://cubes/x'}\n"
        "execution:\n  executor: lithops\n  lithops:\n    backend: aws_lambda\n    aws_lambda:\n"
        "      execution_role: arn:aws:iam::123456789012:role/lithops\n      region: eu-west-1\n"
        "      storage_bucket: icefloe-lithops\n"
    )
    loaded = lithops.config.default_config(config_data=lithops_config(spec.execution))
    assert loaded["aws_lambda"]["execution_role"].endswith("role/lithops")
    assert loaded["aws_s3"]["storage_bucket"] == "icefloe-lithops"
    local = load_spec(
        "name: x\nsource: {url: 'file:///a/', pattern: '*.nc'}\nrepo: {url: 'file:///b'}\n"
        "execution: {executor: lithops, workers: 3}\n"
    )
    assert (
        lithops.config.default_config(config_data=lithops_config(local.execution))["localhost"]["worker_processes"] == 3
    )


def test_lambda_runtime_pins_what_uv_lock_pins() -> None:
    lock = {p["name"]: p["version"] for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}
    pins = [
        line.split("==")
        for line in (ROOT / "infra" / "lithops" / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert pins and all(lock[name] == version for name, version in pins), [p for p in pins if lock[p[0]] != p[1]]
    dockerfile = (ROOT / "infra" / "lithops" / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+)", dockerfile, re.M):
        assert source == "lithops_lambda.zip" or (ROOT / source).exists(), source
