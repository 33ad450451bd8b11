"""The command line as users and scripts use it: exit codes, one JSON object on stdout, flows on a real
Prefect server."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import xarray as xr

from lib.local.archive import DemoShape, demo_spec, write_bad_file, write_demo_archive
from lib.spec import load_spec
from tests.helpers import file_url, locations, read_cube

pytestmark = pytest.mark.integration


def icefloe(cli: str, *args: str, cwd: Path | None = None) -> tuple[int, dict | None, str]:
    p = subprocess.run([cli, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600, cwd=cwd)
    try:
        out = json.loads(p.stdout) if p.stdout.strip() else None
    except json.JSONDecodeError:
        raise AssertionError(f"stdout is not one JSON object: {p.stdout!r}") from None
    return p.returncode, out, p.stderr


def flow_run_ids() -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {str(r.id) for r in client.read_flow_runs()}


def run_artifacts(flow_run: str) -> dict[str, str]:
    """The artifacts of one flow run on the session's Prefect server, by key, as text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run]))
        )
    return {a.key: str(a.data) for a in found if a.key}


@pytest.fixture
def demo_archive(workdir: Path) -> Path:
    shape = DemoShape(polygons=2, months=2, steps=2)
    write_demo_archive(workdir / "archive", shape)
    write_bad_file(workdir / "archive", shape)
    spec = workdir / "cube.yaml"
    spec.write_text(demo_spec(workdir / "archive", workdir / "cube"))
    return spec


def test_plan_build_log_through_the_cli(prefect_server: str, icefloe_cli: str, demo_archive: Path) -> None:
    code, plan, err = icefloe(icefloe_cli, "plan", str(demo_archive), "--json")
    assert code == 0, err
    assert plan["discovered"] == 9 and len(plan["pending"]) == 9 and len(plan["would_ingest"]) == 8
    assert plan["dims"] == {"polygon": 2, "month": 2, "time": 2, "depth": 5, "lat": 16, "lon": 16}
    assert not (demo_archive.parent / "cube").exists()  # a dry run writes nothing

    code, out, err = icefloe(icefloe_cli, "build", str(demo_archive), "--json")
    assert code == 3, err
    assert out["discovered"] == out["ingested"] + out["unchanged"] + len(out["changed"]) + len(out["quarantined"])
    assert out["ingested"] == 8 and out["quarantined"][0]["url"].endswith("step_0002.nc")
    assert "has chunks" in out["quarantined"][0]["reason"]
    spec = load_spec(demo_archive)
    assert out["snapshot"] == __import__("tests.helpers").helpers.open_repo(spec).lookup_branch("main")
    assert out["fast_path_share"] == 1.0

    code, history, err = icefloe(icefloe_cli, "log", str(demo_archive), "--json")
    assert code == 0, err
    meta = history["snapshots"][0]["metadata"]["icefloe"]
    assert meta["operation"] == "build" and meta["flow_run"]  # each commit names its flow run
    code, _, err = icefloe(icefloe_cli, "log", str(demo_archive))
    assert code == 0 and "history of main" in err

    # what the Prefect UI shows for the build: the summary, the quarantined objects, the coverage map
    build_artifacts = run_artifacts(meta["flow_run"])
    assert {"demo-summary", "demo-quarantined", "demo-coverage"} <= set(build_artifacts)
    assert "step_0002.nc" in build_artifacts["demo-summary"] and "has chunks" in build_artifacts["demo-quarantined"]
    assert "data:image/png;base64," in build_artifacts["demo-coverage"]
    before = flow_run_ids()
    code, out, err = icefloe(icefloe_cli, "ingest", str(demo_archive), "--json")
    assert code == 0 and out["ingested"] == 0 and not out["published"], err
    (noop,) = flow_run_ids() - before
    noop_artifacts = run_artifacts(noop)
    assert "nothing to publish" in noop_artifacts["demo-summary"]
    assert "demo-coverage" not in noop_artifacts  # main did not move: the build's map still stands

    good = sorted(p for p in (demo_archive.parent / "archive").rglob("*.nc") if p.name != "step_0002.nc")
    assert locations(spec) == {file_url(p) for p in good}
    cube = read_cube(spec)
    one = xr.open_dataset(good[0]).load()
    xr.testing.assert_identical(cube.DIC.sel(polygon=0, month=1, time=one.time, drop=True).load(), one.DIC)


def test_rechunk_status_and_log_through_the_cli(prefect_server: str, icefloe_cli: str, demo_archive: Path) -> None:
    """A native copy made through the flow on the Prefect server, shown by status and log, kept by ingests."""
    code, _, err = icefloe(icefloe_cli, "build", str(demo_archive), "--json")
    assert code == 3, err
    code, out, _ = icefloe(icefloe_cli, "rechunk", str(demo_archive), "--json")
    assert code == 2 and out["key"] == "native_copies" and "lists no native_copies" in out["error"]
    demo_archive.write_text(
        demo_archive.read_text()
        + "native_copies:\n  - {name: dic_ts, variables: [DIC], chunks: {time: 4, lat: 16, lon: 16}, codecs: zstd:5}\n"
    )
    code, out, _ = icefloe(icefloe_cli, "rechunk", str(demo_archive), "nosuch", "--json")
    assert code == 2 and "no native copy 'nosuch'" in out["error"]

    code, out, err = icefloe(icefloe_cli, "rechunk", str(demo_archive), "--json")
    assert code == 0 and out["published"], err
    [made] = out["copies"]
    assert (made["name"], made["units"], made["total_units"], made["problems"]) == ("dic_ts", 4, 4, [])
    spec = load_spec(demo_archive)
    repo = __import__("tests.helpers").helpers.open_repo(spec)
    store = repo.readonly_session(branch="main").store
    copy = xr.open_zarr(store, group="dic_ts", consolidated=False, chunks=None)
    xr.testing.assert_identical(copy.DIC, read_cube(spec).DIC.load())  # quarantined file's place: fill in both

    code, status, err = icefloe(icefloe_cli, "status", str(demo_archive), "--json")
    assert code == 0, err
    [shown] = status["copies"]
    assert shown["made"] and shown["coverage"] == 1.0 and shown["current_to"] and shown["codecs"] == "zstd:5"
    code, _, err = icefloe(icefloe_cli, "status", str(demo_archive))
    assert "native copy dic_ts (DIC): 100.0% of its chunks current" in err
    code, history, err = icefloe(icefloe_cli, "log", str(demo_archive), "--json")
    assert code == 0 and history["runs"][0]["operation"] == "rechunk", err
    artifacts = run_artifacts(history["runs"][0]["flow_run"])
    assert "dic_ts" in artifacts["demo-rechunk"]  # the table of copies in the Prefect UI


def test_spec_and_usage_errors_exit_2_with_json(icefloe_cli: str, demo_archive: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(demo_archive.read_text() + "sourse: typo\n")
    code, out, _ = icefloe(icefloe_cli, "build", str(bad), "--json")
    assert code == 2 and "sourse" in out["error"] and out["key"] == "sourse"
    code, out, _ = icefloe(icefloe_cli, "build", str(tmp_path / "missing.yaml"), "--json")
    assert code == 2 and "does not exist" in out["error"]
    code, out, _ = icefloe(icefloe_cli, "build", "--json")
    assert code == 2 and "error" in out
    code, out, err = icefloe(icefloe_cli, "build", str(bad))
    assert code == 2 and out is None and "unknown key 'sourse'" in err


def test_a_missing_local_source_exits_2_with_one_line(icefloe_cli: str, tmp_path: Path) -> None:
    spec = tmp_path / "cube.yaml"
    spec.write_text(demo_spec(tmp_path / "nowhere", tmp_path / "cube"))
    code, out, err = icefloe(icefloe_cli, "plan", str(spec), "--json")
    assert code == 2 and "nowhere/ does not exist (no such directory): check source.url" in out["error"]
    assert out["key"] == "source.url" and "Traceback" not in err


def test_help_explains_every_command(icefloe_cli: str) -> None:
    p = subprocess.run([icefloe_cli, "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for command in ("build", "ingest", "plan", "log", "demo", "rechunk"):
        assert command in p.stdout
    p = subprocess.run([icefloe_cli, "build", "--help"], capture_output=True, text=True)
    assert "--json" in p.stdout and "spec" in p.stdout.lower()


def test_demo_runs_end_to_end(prefect_server: str, icefloe_cli: str, tmp_path: Path) -> None:
    code, out, err = icefloe(icefloe_cli, "demo", "--dir", str(tmp_path / "demo"), "--json")
    assert code == 0, err
    build = out["build"]
    assert build["ingested"] == 24 and len(build["quarantined"]) == 1
    assert build["dims"] == {"polygon": 2, "month": 3, "time": 4, "depth": 5, "lat": 16, "lon": 16}
    ingest = out["ingest"]  # one new step per cell, the bad tile's slot with a corrected file
    assert (ingest["ingested"], ingest["quarantined"], ingest["dims"]["time"]) == (6, [], 5)
    namespace: dict = {}
    exec(out["open"], namespace)  # the snippet the demo prints really opens the cube
    assert namespace["cube"].DIC.shape == (2, 3, 5, 5, 16, 16)
    months = out["months"]  # monthly files of unequal length, on a rectilinear time axis
    assert (months["build"]["ingested"], months["build"]["quarantined"]) == (6, [])
    exec(months["open"], namespace)
    assert namespace["cube"].DIC.shape == (2, 31 + 29 + 31, 16, 16)
    assert namespace["cube"].DIC.encoding["chunks"][1] == (31, 29, 31)
    copy = out["copy"]  # a time-series copy of DIC, made after the build and kept along by the ingest
    assert [c["problems"] for c in copy["rechunk"]["copies"]] == [[]]
    assert any(n.startswith("native copy dic_ts: ") for n in ingest["notes"])
    series = copy["point_series"]  # equal values (the demo compares them), one chunk instead of one per file
    assert (series["values"], series["virtual_chunks"], series["native_chunks"]) == (15, 15, 1)


@pytest.mark.slow
def test_s3_demo_runs_the_event_path(icefloe_cli: str, tmp_path: Path) -> None:
    env_free = subprocess.run(
        [icefloe_cli, "demo", "--s3", "--dir", str(tmp_path / "demo"), "--json"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,
        env={k: v for k, v in __import__("os").environ.items() if k != "PREFECT_API_URL"},
    )
    assert env_free.returncode == 0, env_free.stderr[-3000:]
    out = json.loads(env_free.stdout)
    assert out["build"]["ingested"] == 24 and len(out["new_objects"]) == 6
    assert out["triggered_runs"], "the new objects must reach main through the triggered deployment"


def test_usage_mistakes_are_one_line_exit_2_fast_and_leave_nothing_behind(
    prefect_server: str, demo_archive: Path, workdir: Path
) -> None:
    """No retries, no repository: a bad URL, a missing source, a pattern that matches nothing."""
    from tests.helpers import icefloe_json

    source = (workdir / "archive").resolve()
    named = f"file://{source}/polygon_000/month_01/step_0000.nc"
    cases = {  # name: (command line, what the one line must say)
        "a named object that does not exist": (
            ["ingest", str(demo_archive), f"file://{source}/polygon_000/month_01/missing.nc"],
            r"does not match the source pattern|not in the source",
        ),
        "a named object missing from a matching place": (
            ["ingest", str(demo_archive), f"file://{source}/polygon_009/month_01/step_0000.nc"],
            r"1 named object\(s\) are not in the source .*polygon_009/month_01/step_0000\.nc",
        ),
        "a plain path": (
            ["ingest", str(demo_archive), str(source / "polygon_000/month_01/step_0000.nc")],
            rf"is not a file:// or s3:// URL: did you mean {re.escape(named)}\?",
        ),
        "an object outside the source": (
            ["ingest", str(demo_archive), f"file://{workdir}/elsewhere.nc"],
            r"is not under the source",
        ),
    }
    missing = workdir / "missing.yaml"
    missing.write_text(demo_archive.read_text().replace(str(source), str(source) + "-gone"))
    cases["a source that does not exist"] = (
        ["build", str(missing)],
        r"archive-gone/ does not exist .*check source.url",
    )
    nothing = workdir / "nothing.yaml"
    nothing.write_text(demo_archive.read_text().replace("step_*.nc", "step_*.grib"))
    cases["a pattern that matches nothing"] = (
        ["build", str(nothing)],
        r"the pattern 'polygon_\{polygon:d\}/month_\{month:d\}/step_\*\.grib' matches none of the 9 object\(s\) listed",
    )
    for name, (args, message) in cases.items():
        code, out = icefloe_json(*args)
        assert code == 2, (name, out)
        assert re.search(message, out["error"]) and "\n" not in out["error"], (name, out["error"])
        assert not (workdir / "cube").exists(), name
    code, out = icefloe_json("ingest", str(nothing))  # a sweep over nothing is not an error: it says so
    assert code == 0 and out["discovered"] == 0 and any("matches none of the 9" in n for n in out["notes"]), out
    assert icefloe_json("build", str(demo_archive))[0] == 3
    code, out = icefloe_json("nativize", str(demo_archive), "-v", "nosuchvar")
    assert code == 2 and "variable 'nosuchvar' is not in the cube" in out["error"], out
