"""The event path end to end, with real servers only: PUT to SeaweedFS → filer webhook → `icefloe bridge
webhook` → Prefect event → the served `-ingest` deployment (not a direct flow call) → main. Lost and
duplicated events are made right by the sweep and the ledger."""

from __future__ import annotations

import collections
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import xarray as xr

from flows.local.stack import LocalStack, wait_for
from lib.ledger import read_rows
from lib.local.archive import DemoShape, step_path, write_step
from lib.spec import Spec, load_spec
from tests.helpers import open_repo, read_cube

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "events"
SHAPE = DemoShape(polygons=1, months=1, steps=1)


class Cube:
    def __init__(self, stack: LocalStack, root: Path, name: str = NAME) -> None:
        self.stack, self.root, self.name = stack, root, name
        root.mkdir(parents=True, exist_ok=True)
        self.spec_path = root / "cube.yaml"
        assert stack.s3 is not None
        self.spec_path.write_text(
            f"name: {name}\nsource:\n  url: s3://archive/cube/\n"
            f'  pattern: "polygon_{{polygon:d}}/month_{{month:d}}/step_*.nc"\n'
            f"  storage: {stack.s3.storage_yaml()}\nconcat: [time]\nrepo:\n  url: s3://cubes/{name}\n"
            f"execution: {{executor: threads, workers: 2}}\n"
        )
        self.spec: Spec = load_spec(self.spec_path)

    def put(self, p: int, m: int, t: int) -> str:
        path = write_step(step_path(self.root / "local", p, m, t), p, m, t, SHAPE)
        key = f"cube/{path.relative_to(self.root / 'local')}"
        self.stack.s3.client().upload_file(str(path), "archive", key)  # type: ignore[union-attr]
        return f"s3://archive/{key}"

    def assert_matches_files(self, steps: range) -> None:
        """Main's data at each of ``steps`` (cell polygon 0, month 1) is the file's, value for value."""
        data = read_cube(self.spec).load()
        for t in steps:
            ref = xr.open_dataset(step_path(self.root / "local", 0, 1, t)).load()
            xr.testing.assert_identical(data.DIC.sel(polygon=0, month=1, drop=True).sel(time=ref.time), ref.DIC)

    def ingested(self) -> collections.Counter[str]:
        rows = read_rows(open_repo(self.spec).readonly_session(branch="main").store)
        return collections.Counter(r.url for r in rows if r.status == "ingested")


@pytest.fixture
def cube(prefect_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cube]:
    with LocalStack(tmp_path / "stack", prefect_api=prefect_server) as stack:
        stack.start_s3("/buckets/archive/cube/")
        for key, value in stack.s3.env().items():  # type: ignore[union-attr]
            monkeypatch.setenv(key, value)  # this test process reads the cube with the same credentials
        stack.start_bridge()
        yield Cube(stack, tmp_path)


def test_put_to_main_through_events_then_lost_and_duplicated_events(cube: Cube) -> None:
    stack = cube.stack
    first = [cube.put(0, 1, t) for t in range(2)]
    built = stack.icefloe("build", str(cube.spec_path), "--json")
    assert built.returncode == 0, built.stderr[-3000:]
    assert set(cube.ingested()) == set(first)

    stack.serve(cube.spec_path, "--sweep-cron", "0 0 1 1 *")
    wait_for("the ingest deployment's trigger", lambda: stack.trigger_ready("ingest_objects", f"{NAME}-ingest"))
    new = [cube.put(0, 1, t) for t in (2, 3)]  # the filer's webhook reaches the bridge, the bridge Prefect
    wait_for("the new objects on main", lambda: set(new) <= set(cube.ingested()), 180)
    runs = stack.flow_runs("ingest_objects", f"{NAME}-ingest")
    assert runs, "no flow run of the ingest deployment: main moved some other way"
    metas = [
        h.metadata["icefloe"]
        for h in open_repo(cube.spec).ancestry(branch="main")
        if h.metadata.get("icefloe", {}).get("operation") == "ingest"
    ]
    assert metas and metas[0]["flow_run"] in {str(r.id) for r in runs}  # the commit names the triggered run

    # duplicated events: replaying the same notifications starts runs that find nothing to do
    records = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": "archive"}, "object": {"key": u.split("archive/", 1)[1]}},
            }
            for u in new
        ]
    }
    replayed = stack.icefloe("bridge", "replay", "-", "--json", stdin=json.dumps(records))
    assert replayed.returncode == 0 and json.loads(replayed.stdout)["events"] == 2, replayed.stderr[-2000:]

    # lost events: the bridge is down while an object arrives; the sweep finds it
    stack.stop("bridge")
    lost = cube.put(0, 1, 4)
    from prefect.deployments import run_deployment

    sweep = run_deployment(f"ingest_objects/{NAME}-sweep", timeout=300)
    assert sweep.state.is_completed(), sweep.state
    counts = cube.ingested()
    assert set(counts) == {*first, *new, lost} and set(counts.values()) == {1}
    wait_for(
        "every triggered run to finish",
        lambda: all(r.state.is_final() for r in stack.flow_runs("ingest_objects", f"{NAME}-ingest")),
        240,
    )
    assert cube.ingested() == counts  # the duplicate runs changed nothing

    cube.assert_matches_files(range(5))


def test_the_bridge_refuses_requests_without_the_token(cube: Cube) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{cube.stack.bridge_port}/", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 401


def test_a_served_run_starts_on_its_creation_event_not_at_a_poll(cube: Cube) -> None:
    """With the runner's polls ten minutes apart, each new object still reaches main: its flow run
    starts on the event of its creation (``flows.services.wake``)."""
    stack = cube.stack
    cube = Cube(stack, cube.root / "wake", name="wake")  # deployments of its own on the shared server
    first = cube.put(0, 1, 0)
    built = stack.icefloe("build", str(cube.spec_path), "--json")
    assert built.returncode == 0, built.stderr[-3000:]

    stack.serve(cube.spec_path, "--sweep-cron", "0 0 1 1 *", "--poll", "600")
    wait_for("the ingest deployment's trigger", lambda: stack.trigger_ready("ingest_objects", f"{cube.name}-ingest"))
    # one at a time, each after the one before is on main: the runner's only poll was when it started
    arrived = [first]
    for t in (1, 2):
        arrived.append(cube.put(0, 1, t))
        wait_for(f"step {t} on main", lambda: set(arrived) <= set(cube.ingested()), 120)
    assert len(stack.flow_runs("ingest_objects", f"{cube.name}-ingest")) >= 2
    cube.assert_matches_files(range(3))
