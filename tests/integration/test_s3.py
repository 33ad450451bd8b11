"""The core build and incremental ingest against a real S3 server (SeaweedFS): S3 sources, S3 repo."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest
import xarray as xr

from lib.local.archive import DemoShape, step_path, write_demo_archive, write_step
from lib.maintenance import verify_sources
from lib.spec import Spec, load_spec
from tests.helpers import open_repo, read_cube, run_cube

pytestmark = pytest.mark.integration

PATTERN = "polygon_{polygon:d}/month_{month:d}/step_*.nc"


def upload(server: object, bucket: str, root: Path, files: list[Path], prefix: str = "archive/") -> list[str]:
    client = server.client()  # type: ignore[attr-defined]
    keys = []
    for f in files:
        key = prefix + str(f.relative_to(root))
        client.upload_file(str(f), bucket, key)
        keys.append(f"s3://{bucket}/{key}")
    return keys


def s3_spec(server: object, bucket: str, executor: str = "threads", extra: str = "") -> Spec:
    storage = server.storage_yaml()  # type: ignore[attr-defined]
    return load_spec(
        f'name: s3cube\nsource:\n  url: s3://{bucket}/archive/\n  pattern: "{PATTERN}"\n'
        f"  storage: {storage}\nconcat: [time]\nrepo:\n  url: s3://{bucket}/cube\n"
        f"execution: {{executor: {executor}, workers: 2, batch_size: 5}}\n{extra}"
    )


def assert_cube_equals(spec: Spec, root: Path) -> None:
    cube = read_cube(spec).load()
    for p_dir in sorted(root.glob("polygon_*")):
        for m_dir in sorted(p_dir.glob("month_*")):
            files = sorted(m_dir.glob("*.nc"))
            ref = xr.concat([xr.open_dataset(f).load() for f in files], dim="time", data_vars="minimal")
            got = cube.sel(polygon=int(p_dir.name[8:]), month=int(m_dir.name[6:]), drop=True).sel(time=ref.time)
            for name in ("DIC", "ALK", "injection_rate"):
                xr.testing.assert_identical(got[name], ref[name])


def test_build_and_ingest_on_s3(local_s3: object, s3_bucket: str, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    shape = DemoShape(polygons=2, months=2, steps=2)
    files = write_demo_archive(root, shape)
    urls = upload(local_s3, s3_bucket, root, files)
    spec = s3_spec(local_s3, s3_bucket)
    summary = run_cube(spec)
    assert summary.exit_code == 0 and summary.ingested == 8 and summary.fast_path == 8
    assert set(open_repo(spec).readonly_session(branch="main").all_virtual_chunk_locations()) == set(urls)
    assert_cube_equals(spec, root)

    new = [write_step(step_path(root, p, m, 2), p, m, 2, shape) for p in (0, 1) for m in (1, 2)]
    new += [write_step(step_path(root, 2, m, t), 2, m, t, shape) for m in (1, 2) for t in range(3)]
    upload(local_s3, s3_bucket, root, new)
    summary = run_cube(spec, "ingest")
    assert (summary.exit_code, summary.ingested, summary.dims["polygon"], summary.dims["time"]) == (0, 10, 3, 3)
    assert_cube_equals(spec, root)
    assert verify_sources(open_repo(spec), spec).clean


def test_s3_refs_carry_the_etag(local_s3: object, s3_bucket: str, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    files = write_demo_archive(root, DemoShape(polygons=1, months=1, steps=2))
    upload(local_s3, s3_bucket, root, files)
    spec = s3_spec(local_s3, s3_bucket)
    assert run_cube(spec).exit_code == 0
    # the same bytes uploaded again still read; other bytes under the same key fail loudly
    upload(local_s3, s3_bucket, root, files[:1])
    read_cube(spec).DIC.load()
    with h5py.File(files[0], "r+") as f:  # new values, same layout: the cube's refs are now stale
        f["DIC"][...] = f["DIC"][...] + 1
    upload(local_s3, s3_bucket, root, files[:1])
    with pytest.raises(Exception, match="checksum"):
        read_cube(spec).DIC.isel(time=0).load()
    drift = verify_sources(open_repo(spec), spec)
    assert [c["url"] for c in drift.changed] == [f"s3://{s3_bucket}/archive/polygon_000/month_01/step_0000.nc"]
    summary = run_cube(spec, "ingest")
    assert summary.ingested == 1, summary
    assert_cube_equals(spec, root)


@pytest.mark.parametrize("executor", ["processes", "lithops"])
def test_a_native_copy_on_s3_over_worker_processes(
    local_s3: object, s3_bucket: str, tmp_path: Path, executor: str
) -> None:
    """Forks of an S3 repository go to worker processes (or Lithops' localhost workers), read the
    virtual data from S3 there and come back to be merged."""
    import uuid

    from lib.rechunk import rechunk_cube

    root = tmp_path / "archive"
    shape = DemoShape(polygons=2, months=2, steps=2)
    upload(local_s3, s3_bucket, root, write_demo_archive(root, shape))
    spec = s3_spec(
        local_s3,
        s3_bucket,
        executor=executor,
        extra="native_copies: [{name: series, variables: [DIC, ALK], chunks: {time: 8, lat: 16, lon: 16}}]\n",
    )
    assert run_cube(spec).exit_code == 0
    done = rechunk_cube(spec, str(uuid.uuid4()), task_bytes=1)  # one unit per call: 8 calls
    [made] = done["copies"]
    assert (made["units"], made["problems"]) == (8, []) and done["published"]  # 2 x 2 cells x 2 variables
    copy = xr.open_zarr(open_repo(spec).readonly_session(branch="main").store, group="series", consolidated=False)
    cube = read_cube(spec)
    for name in ("DIC", "ALK"):
        xr.testing.assert_identical(copy[name].load(), cube[name].load())
    assert_cube_equals(spec, root)
