"""Store failures in the middle of a step are the store's, never a file's: against a real S3 server
(SeaweedFS) behind the fault-injecting proxy, a failure is raised for the step's retry and nothing is
quarantined or created in its place."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lib.errors import Failure, StorageError, classify_failure
from lib.local.archive import DemoShape, write_demo_archive
from lib.pipeline import Step, run_steps
from lib.repository import branch_state, open_repository
from lib.runs import CubeRun
from lib.spec import Spec, load_spec
from tests.faultproxy import FaultProxy
from tests.helpers import open_repo, run_cube
from tests.integration.test_s3 import PATTERN, assert_cube_equals, upload

pytestmark = pytest.mark.integration

STORE_TRIES = 5  # the tries Icechunk makes per request (lib.repository._storage_settings)


@pytest.fixture
def proxy(local_s3: object) -> Iterator[FaultProxy]:
    p = FaultProxy(local_s3.endpoint).start()  # type: ignore[attr-defined]
    yield p
    p.stop()


def spec_through(bucket: str, source_endpoint: str, repo_endpoint: str) -> Spec:
    def storage(endpoint: str) -> str:
        return f"{{endpoint: {endpoint}, region: us-east-1, path_style: true}}"

    return load_spec(
        f'name: failures\nsource:\n  url: s3://{bucket}/archive/\n  pattern: "{PATTERN}"\n'
        f"  storage: {storage(source_endpoint)}\nconcat: [time]\n"
        f"repo:\n  url: s3://{bucket}/cube\n  storage: {storage(repo_endpoint)}\n"
        f"execution: {{executor: threads, workers: 2, batch_size: 4}}\n"
        f"checks:\n  spot_check: {{files: all}}\n"
    )


def chunk_read(headers: object) -> bool:
    """A ranged GET that starts past an object's first byte: reading a chunk through its reference
    (the source side of the spot check reads from the start, a block at a time)."""
    value = headers.get("Range") or ""  # type: ignore[attr-defined]
    return value.startswith("bytes=") and not value.startswith("bytes=0-")


def test_an_outage_reading_through_the_cube_is_raised_not_blamed_on_the_file(
    local_s3: object, s3_bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    upload(local_s3, s3_bucket, root, write_demo_archive(root, DemoShape(polygons=1, months=1, steps=3)))
    spec = spec_through(s3_bucket, proxy.endpoint, local_s3.endpoint)  # type: ignore[attr-defined]
    run = CubeRun(spec, "build", str(uuid.uuid4()))
    try:
        run_steps(run, until=Step.COMMIT)
        staged = run.repo.lookup_branch(spec.repo.staging)  # type: ignore[union-attr]
        rule = proxy.fail(lambda method, path: method == "GET", status=503, times=10_000, headers=chunk_read)
        with pytest.raises(StorageError, match="the object store failed"):
            run.check()  # for the step's retry: no file is taken out
        assert rule.hits > 0, "no chunk was read through the cube"
        assert run.repo.lookup_branch(spec.repo.staging) == staged  # type: ignore[union-attr]
        proxy.restore()
        assert run.check() == []  # the retry, once the store is back: every file checks out
        run.publish()
    finally:
        run.close()
    assert_cube_equals(spec, root)


def test_a_store_failure_reading_the_staging_branch_is_raised_not_a_new_branch(
    local_s3: object, s3_bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    upload(local_s3, s3_bucket, root, write_demo_archive(root, DemoShape(polygons=1, months=1, steps=2)))
    direct = spec_through(s3_bucket, local_s3.endpoint, local_s3.endpoint)  # type: ignore[attr-defined]
    assert run_cube(direct).exit_code == 0
    staging = open_repo(direct).lookup_branch(direct.repo.staging)
    spec = spec_through(s3_bucket, local_s3.endpoint, proxy.endpoint)  # type: ignore[attr-defined]
    repo = open_repository(spec)
    assert repo is not None
    # Icechunk reads the branches from the repository's info object, once per lookup: main's lookup
    # goes through, staging's fails as often as Icechunk tries (then the store would answer again)
    rule = proxy.fail(
        lambda method, path: method == "GET" and path.split("?")[0].endswith("/cube/repo"), skip=1, times=STORE_TRIES
    )
    with pytest.raises(Exception) as error:
        branch_state(repo, spec)
    assert rule.hits == STORE_TRIES, proxy.log[-10:]
    assert classify_failure(error.value) == Failure.OUTAGE, error.value  # for the step's retry
    proxy.restore()
    assert open_repo(direct).lookup_branch(direct.repo.staging) == staging
    assert run_cube(spec, "ingest").exit_code == 0  # the next attempt goes on as usual


def test_an_object_the_store_refuses_is_quarantined_and_the_rest_land(
    local_s3: object, s3_bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    root = tmp_path / "archive"
    files = write_demo_archive(root, DemoShape(polygons=1, months=1, steps=3))
    urls = upload(local_s3, s3_bucket, root, files)
    spec = spec_through(s3_bucket, proxy.endpoint, local_s3.endpoint)  # type: ignore[attr-defined]
    denied = urls[-1].removeprefix(f"s3://{s3_bucket}")  # the last step: no gap is left on the axis
    rule = proxy.fail(lambda method, path: path.split("?")[0].endswith(denied), status=403, times=10_000)
    summary = run_cube(spec)
    assert rule.hits > 0
    assert [q["url"] for q in summary.quarantined] == [urls[-1]], summary.quarantined
    reason = summary.quarantined[0]["reason"]
    assert "the object store refused to read" in reason and "PermissionDenied" in reason, reason
    assert summary.exit_code == 3 and summary.ingested == 2
    # refused once, not retried by the parser: a 403 is not an outage
    assert rule.hits <= 3, rule.hits
    proxy.restore()
    files[-1].unlink()  # compare with what landed
    assert_cube_equals(spec, root)
