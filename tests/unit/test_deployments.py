"""deployments/prefect.yaml is the same set of deployments `icefloe serve` builds in code."""

from __future__ import annotations

from pathlib import Path

import yaml

from flows.deployments import cube_deployments, deployment_plans
from lib.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
SPEC = "deployments/oae-efficiency.yaml"


def test_prefect_yaml_matches_the_deployments_serve_builds() -> None:
    spec = load_spec(ROOT / SPEC)
    plans = {p.name: p for p in deployment_plans(spec, SPEC)}
    document = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    listed = {d["name"]: d for d in document["deployments"]}
    assert set(listed) == set(plans) == {f"{spec.name}-{k}" for k in ("build", "ingest", "sweep", "maintain")}
    for name, plan in plans.items():
        d = listed[name]
        assert d["entrypoint"] == plan.entrypoint
        assert d["parameters"] == plan.parameters
        assert d["description"] == plan.description
        assert d["concurrency_limit"] == {"limit": plan.concurrency, "collision_strategy": "ENQUEUE"}
        assert [s["cron"] for s in d.get("schedules", [])] == ([plan.cron] if plan.cron else [])
        if plan.trigger is None:
            assert "triggers" not in d
        else:
            (trigger,) = d["triggers"]
            assert trigger["expect"] == plan.trigger["expect"]
            assert trigger["match"] == plan.trigger["match"]
            assert (trigger["threshold"], trigger["within"]) == (plan.trigger["threshold"], plan.trigger["within"])
        assert (ROOT / d["entrypoint"].split(":")[0]).is_file()


def test_code_deployments_carry_triggers_schedules_and_limits() -> None:
    spec = load_spec(ROOT / SPEC)
    deployments = {d.name: d for d in cube_deployments(deployment_plans(spec, SPEC))}
    ingest = deployments["oae-efficiency-ingest"]
    (trigger,) = ingest.triggers
    assert trigger.expect == {"icefloe.object.created"}
    assert trigger.match.model_dump()["prefect.resource.id"] == "s3://archive/oae/*"
    assert ingest.parameters == {"spec": SPEC}  # the trigger passes no URLs: each run drains what is pending
    for d in deployments.values():
        assert d.concurrency_limit == 1 and d.concurrency_options.collision_strategy.value == "ENQUEUE"
    sweep = deployments["oae-efficiency-sweep"]
    assert sweep.schedules[0].schedule.cron == "*/15 * * * *"
    assert sweep.parameters == {"spec": SPEC, "coverage": True}  # the sweep draws the coverage map
    assert not deployments["oae-efficiency-build"].schedules


def test_the_warm_fork_server_imports_no_icechunk() -> None:
    """A process forked after ``import icechunk`` hangs on its first repository call: the fork server's
    imports must leave it out (each flow run imports it itself)."""
    import subprocess
    import sys

    code = (
        "import importlib, sys\n"
        "from flows.services.warm import EXPECTATIONS, PRELOAD\n"
        "for name in PRELOAD + EXPECTATIONS: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'icechunk'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
