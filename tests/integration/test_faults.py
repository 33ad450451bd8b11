"""Object-store faults on the real path: the CLI, a real Prefect server and SeaweedFS, with a fault-injecting
proxy (tests/faultproxy.py) in between. Throttling and 5xx answers are retried to success; an outage
in the middle of parsing, committing or publishing fails the run cleanly with main untouched, and the
next run finishes the job with every object in the cube exactly once.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lib.ledger import read_rows
from lib.local.archive import DemoShape, step_path, write_demo_archive, write_step
from lib.spec import Spec, load_spec
from tests.faultproxy import FaultProxy, Match
from tests.helpers import open_repo
from tests.integration.test_s3 import PATTERN, assert_cube_equals, upload

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHAPE = DemoShape(polygons=2, months=1, steps=3)


@pytest.fixture
def proxy(local_s3: object) -> Iterator[FaultProxy]:
    p = FaultProxy(local_s3.endpoint).start()  # type: ignore[attr-defined]
    yield p
    p.stop()


def write_spec(tmp_path: Path, bucket: str, endpoint: str) -> tuple[Path, Spec]:
    storage = f"{{endpoint: {endpoint}, region: us-east-1, path_style: true}}"
    path = tmp_path / "cube.yaml"
    path.write_text(
        f'name: faults\nsource:\n  url: s3://{bucket}/archive/\n  pattern: "{PATTERN}"\n  storage: {storage}\n'
        f"concat: [time]\nrepo:\n  url: s3://{bucket}/cube\n  storage: {storage}\n"
        f"execution: {{executor: threads, workers: 2, batch_size: 2}}\n"
    )
    return path, load_spec(path)


def icefloe(cli: str, command: str, spec: Path, env: dict[str, str] | None = None) -> tuple[int, dict]:
    p = subprocess.run(
        [cli, command, str(spec), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "ICEFLOE_RETRY_DELAYS": "0.5,1", **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    assert p.stdout.count("\n") <= 1, p.stdout  # one JSON object on stdout, whatever happened
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    return p.returncode, json.loads(p.stdout)


def main_tip(spec: Spec) -> str:
    return open_repo(spec).lookup_branch("main")


def assert_exactly_once(spec: Spec, bucket: str, root: Path) -> None:
    session = open_repo(spec).readonly_session(branch="main")
    rows = read_rows(session.store)
    ingested = collections.Counter(r.url for r in rows if r.status == "ingested")
    expected = {f"s3://{bucket}/archive/{f.relative_to(root)}" for f in root.rglob("*.nc")}
    assert set(ingested) == expected and set(ingested.values()) == {1}
    assert set(session.all_virtual_chunk_locations()) == expected
    assert_cube_equals(spec, root)


def test_throttling_and_server_errors_are_retried_to_success(
    prefect_server: str, local_s3: object, s3_bucket: str, proxy: FaultProxy, icefloe_cli: str, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    upload(local_s3, s3_bucket, root, write_demo_archive(root, SHAPE))
    spec_path, spec = write_spec(tmp_path, s3_bucket, proxy.endpoint)
    rules = [
        proxy.fail(lambda m, p: m == "GET" and "/archive/" in p, status=503, times=4),  # SlowDown on reads
        proxy.fail(lambda m, p: "list-type=2" in p, status=503, times=2),  # ...on listings
        proxy.fail(lambda m, p: m == "PUT" and "/cube/manifests/" in p, status=500, times=2),
        proxy.fail(lambda m, p: m == "GET" and p.split("?")[0].endswith("/cube/repo"), status=503, times=2),
        proxy.fail(lambda m, p: m == "GET" and "/archive/" in p, status=200, times=2, delay=3.0),  # slow answers
    ]
    code, out = icefloe(icefloe_cli, "build", spec_path)
    assert code == 0, (out.get("quarantined"), out.get("findings"), out.get("error"))
    assert [r.hits for r in rules] == [r.times for r in rules]  # every fault was really served
    assert out["ingested"] == 6 and not out["quarantined"]
    assert_exactly_once(spec, s3_bucket, root)


def _after_checks() -> Match:
    """The first repository write after the spot check read the sources, i.e. the publish."""
    seen = {"commit": False, "check": False}

    def match(method: str, path: str) -> bool:
        if method == "PUT" and "/cube/manifests/" in path:
            seen["commit"] = True
        elif seen["commit"] and method == "GET" and "/archive/" in path:
            seen["check"] = True
        elif seen["check"] and method == "PUT" and "/cube/" in path:
            return True
        return False

    return match


def _reads_source(method: str, path: str) -> bool:
    return method in ("GET", "HEAD") and "/archive/" in path


def _writes_manifest(method: str, path: str) -> bool:
    return method == "PUT" and "/cube/manifests/" in path


# stage -> (what starts the outage, how long it lasts: None until the test lifts it)
OUTAGES: dict[str, Callable[[], tuple[Match, float | None]]] = {
    "parse": lambda: (_reads_source, None),
    "commit": lambda: (_writes_manifest, None),
    "publish": lambda: (_after_checks(), None),
    # a short outage in the middle of a commit is ridden out by the step's retries
    "commit-brief": lambda: (_writes_manifest, 3.0),
}


@pytest.mark.parametrize("stage", OUTAGES)
def test_outage_then_rerun_lands_everything_once(
    prefect_server: str,
    local_s3: object,
    s3_bucket: str,
    proxy: FaultProxy,
    icefloe_cli: str,
    tmp_path: Path,
    stage: str,
) -> None:
    root = tmp_path / "archive"
    upload(local_s3, s3_bucket, root, write_demo_archive(root, SHAPE))
    spec_path, spec = write_spec(tmp_path, s3_bucket, proxy.endpoint)
    assert icefloe(icefloe_cli, "build", spec_path)[0] == 0
    before = main_tip(spec)

    new = [write_step(step_path(root, p, 1, 3), p, 1, 3, SHAPE) for p in (0, 1)]
    new.append(write_step(step_path(root, 2, 1, 0), 2, 1, 0, SHAPE))
    upload(local_s3, s3_bucket, root, new)
    start, seconds = OUTAGES[stage]()
    outage = proxy.arm_outage(start, seconds)
    code, out = icefloe(icefloe_cli, "ingest", spec_path)
    assert outage.began is not None, "the outage never started: the trigger matched no request"
    proxy.restore()
    if seconds is not None:  # survived within the run
        assert code == 0 and out["ingested"] == 3, out
    else:
        assert code == 1 and "object store" in out["error"] and "\n" not in out["error"], out
        assert main_tip(spec) == before  # readers never saw a half-done ingest
        code, out = icefloe(icefloe_cli, "ingest", spec_path)
        assert code == 0 and out["ingested"] == 3 and not out["quarantined"], out
    assert main_tip(spec) != before
    code, out = icefloe(icefloe_cli, "ingest", spec_path)  # nothing left: a no-op
    assert code == 0 and out["ingested"] == 0 and out["unchanged"] == 9
    assert_exactly_once(spec, s3_bucket, root)


def test_store_refusals_exit_1_with_one_line(
    prefect_server: str, local_s3: object, s3_bucket: str, icefloe_cli: str, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    upload(local_s3, s3_bucket, root, write_demo_archive(root, DemoShape(polygons=1, months=1, steps=1)))
    endpoint = local_s3.endpoint  # type: ignore[attr-defined]
    spec_path, _ = write_spec(tmp_path, s3_bucket, endpoint)
    planted = "PLANTEDsecret" + "x" * 27
    refused = "check the bucket and the credentials"
    cases = {  # case: the spec's text, the environment, what the error must tell the user
        "missing bucket": (spec_path.read_text().replace(s3_bucket, "no-such-bucket-here"), {}, refused),
        "wrong credentials": (spec_path.read_text(), {"AWS_SECRET_ACCESS_KEY": planted}, refused),
        "no credentials": (
            spec_path.read_text(),
            {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ),
        "unreachable endpoint": (
            spec_path.read_text().replace(endpoint, "http://127.0.0.1:9"),
            {},
            "the object store failed",
        ),
    }
    for case, (text, env, advice) in cases.items():
        path = tmp_path / f"{case.replace(' ', '-')}.yaml"
        path.write_text(text)
        for command in ("plan", "build"):
            code, out = icefloe(icefloe_cli, command, path, env)
            assert code == 1, (case, command, out)
            assert out["error"] and "\n" not in out["error"] and "internal error" not in out["error"], (case, out)
            assert advice in out["error"], (case, command, out["error"])
            assert planted not in json.dumps(out)


def _prefect_records(api: str) -> str:
    """Everything the Prefect server holds about runs: flow runs (parameters), task runs, logs, artifacts."""
    import urllib.request

    texts = []
    for kind in ("flow_runs", "task_runs", "logs", "artifacts"):
        offset = 0
        while True:
            body = json.dumps({"limit": 200, "offset": offset}).encode()
            request = urllib.request.Request(
                f"{api}/{kind}/filter", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=30) as r:
                page = json.loads(r.read())
            texts.append(json.dumps(page))
            if len(page) < 200:
                break
            offset += 200
    return "\n".join(texts)


def test_credentials_never_leave_the_environment(
    prefect_server: str, local_s3: object, s3_bucket: str, icefloe_cli: str, tmp_path: Path
) -> None:
    """The secret key is planted in the environment only; grep everything a run leaves for it."""
    secret = local_s3.secret_key  # type: ignore[attr-defined]
    root = tmp_path / "archive"
    upload(local_s3, s3_bucket, root, write_demo_archive(root, SHAPE))
    spec_path, spec = write_spec(tmp_path, s3_bucket, local_s3.endpoint)  # type: ignore[attr-defined]
    outputs = []
    for command in ("plan", "build", "ingest", "log", "status", "verify"):
        p = subprocess.run(
            [icefloe_cli, command, str(spec_path), "--json"], capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        assert p.returncode == 0, (command, p.stdout, p.stderr[-2000:])
        outputs += [p.stdout, p.stderr]
    # a failing run too: errors must not quote the credentials either
    broken = tmp_path / "broken.yaml"
    broken.write_text(spec_path.read_text().replace("/archive/", "/nothing-here/"))
    p = subprocess.run([icefloe_cli, "build", str(broken), "--json"], capture_output=True, text=True)
    outputs += [p.stdout, p.stderr]
    assert secret not in "".join(outputs)
    assert secret not in _prefect_records(prefect_server)
    repo = open_repo(spec)
    history = [(s.message, s.metadata) for s in repo.ancestry(branch="main")]
    assert len(history) > 1 and secret not in json.dumps(history, default=str)
    assert secret not in str(repo.config) and secret not in spec_path.read_text()
    client = local_s3.client()  # type: ignore[attr-defined]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="cube/")["Contents"]]
    assert len(keys) > 5
    for key in keys:
        assert secret.encode() not in client.get_object(Bucket=s3_bucket, Key=key)["Body"].read(), key
