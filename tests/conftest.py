"""Shared fixtures: quiet, offline library settings, a real Prefect server per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.local.stack import free_port, wait_http

os.environ.setdefault("ICECHUNK_LOG", "error")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# a CLI process that crashes in native code (a signal, not an exception) prints every thread's stack
# to its stderr, which the failing test shows
os.environ.setdefault("PYTHONFAULTHANDLER", "1")

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session", autouse=True)
def great_expectations_imported() -> None:
    """Import Great Expectations once, under pytest's warning filters, before any run starts its
    background import (lib.expectations.preload): pytest re-applies its filters around every test, and a
    thread importing GE at that moment met them half applied and failed on GE's deprecated
    ``sre_constants`` import (seen in about 1 run in 7 of the quick codec tests)."""
    import great_expectations  # noqa: F401


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server on a loopback port; yields its API URL (also exported to subprocesses)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
    }
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")  # noqa: SIM115 (open for the server's lifetime)
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_http(f"{api}/health", 120, proc)
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = api
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api}):
            yield api
            _drain_prefect_workers()  # flows run in this process: send their logs and events while the server is up
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _drain_prefect_workers() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real S3 server (SeaweedFS) on loopback ports for the whole session; its credentials are in
    the environment, the only place icefloe reads them from."""
    from lib.local.seaweedfs import start_local_s3

    server = start_local_s3(tmp_path_factory.mktemp("seaweedfs"))
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture
def s3_bucket(local_s3: object, request: pytest.FixtureRequest) -> str:
    """A fresh bucket for one test."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:6]
    local_s3.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return name


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "archive").mkdir()
    return tmp_path


@pytest.fixture
def icefloe_cli() -> str:
    path = shutil.which("icefloe", path=str(BIN))
    assert path, "the icefloe command is not installed in this environment"
    return path
