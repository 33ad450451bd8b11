"""The event-driven pipeline on one machine, exactly as on AWS but on loopback: a Prefect server, a
SeaweedFS S3 whose filer webhook feeds ``icefloe bridge webhook``, and ``icefloe serve`` running the
cube's deployments. Used by ``icefloe demo --s3``, the end-to-end tests and the latency benchmark.

The Prefect server keeps its database in SQLite by default; :meth:`LocalStack.start_postgres` gives it a
PostgreSQL server of the stack's own instead (as a production server would have).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib.errors import StorageError
from lib.local.seaweedfs import LocalS3, start_local_s3

__all__ = ["LocalStack", "free_port", "wait_for", "wait_http"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StorageError(f"the process serving {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise StorageError(f"{url} did not answer within {timeout} s")


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120, poll: float = 0.25) -> float:
    """Wait until ``check()`` holds; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(poll)
    raise StorageError(f"timed out after {timeout} s waiting for {what}")


FLUSH_SETTING = "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL"


class LocalStack:
    """Processes of the local event path, started on demand and all stopped by :meth:`close`."""

    def __init__(self, directory: Path, prefect_api: str | None = None) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env: dict[str, str] = {
            **os.environ,
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "ICECHUNK_LOG": "error",
        }
        self.api = prefect_api
        if prefect_api:
            self.env["PREFECT_API_URL"] = prefect_api
        self.s3: LocalS3 | None = None
        self.database_url: str | None = None
        self.token = secrets.token_hex(16)
        self.bridge_port = free_port()
        self.env["ICEFLOE_WEBHOOK_TOKEN"] = self.token

    def _bin(self, name: str) -> str:
        found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
        if not found:
            raise StorageError(f"`{name}` is not installed in this environment")
        return found

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.directory / f"{name}.log", "ab")  # noqa: SIM115 (the process writes it for its life)
        proc = subprocess.Popen(
            cmd, env=env or self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.directory
        )
        log.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 20, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def start_postgres(self, timeout: float = 60) -> str:
        """A PostgreSQL server of this stack's own, its data in the stack's directory, for the Prefect
        server started after it (:meth:`start_prefect`). Returns its SQLAlchemy URL.

        PostgreSQL refuses to run as root: as root, the cluster belongs to the ``postgres`` user (or,
        failing that, ``nobody``) and the server runs as that user. It listens on loopback only and
        trusts local connections.
        """
        initdb, postgres = self._pg_bin("initdb"), self._pg_bin("postgres")
        data = self.directory / "postgres"
        data.mkdir(parents=True, exist_ok=True)
        user: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    owner = pwd.getpwnam(name)
                except KeyError:
                    continue
                user = name
                os.chown(data, owner.pw_uid, owner.pw_gid)
                break
            else:
                raise StorageError("PostgreSQL refuses to run as root and there is no `postgres` user to run it as")
        log_path = self.directory / "postgres.log"
        with open(log_path, "ab") as log:
            subprocess.run(
                [initdb, "-D", str(data / "db"), "-U", "prefect", "--auth=trust", "--no-locale", "-E", "UTF8"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=data,
                user=user,
                check=True,
            )
        port = free_port()
        log = open(log_path, "ab")  # noqa: SIM115 (the process writes it for its life)
        proc = subprocess.Popen(
            [postgres, "-D", str(data / "db"), "-p", str(port), "-h", "127.0.0.1", "-k", ""],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=data,
            user=user,
        )
        log.close()
        self.procs["postgres"] = proc
        deadline = time.monotonic() + timeout
        while b"ready to accept connections" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise StorageError(f"PostgreSQL did not start (see {log_path})")
            time.sleep(0.2)
        self.database_url = f"postgresql+asyncpg://prefect@127.0.0.1:{port}/postgres"
        return self.database_url

    def _pg_bin(self, name: str) -> str:
        packaged = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))  # Debian's, when not on PATH
        found = shutil.which(name) or (packaged[-1] if packaged else None)
        if not found:
            raise StorageError(f"`{name}` (PostgreSQL) is not installed")
        return found

    def start_prefect(self) -> str:
        """A Prefect server of this stack's own (its database in the stack's directory: SQLite, or the
        stack's PostgreSQL once :meth:`start_postgres` has started it)."""
        port = free_port()
        env = {
            **self.env,
            "PREFECT_HOME": str(self.directory / "prefect"),
            "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
        }
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        else:
            # SQLite takes one writer at a time: the server's event persister writing every 5 s (its
            # default) is what most often makes an automation's flow-run creation wait out a 2 s retry
            # (benchmarks/RESULTS.md, P6); every 30 s instead, unless the environment says otherwise
            env.setdefault(FLUSH_SETTING, "30")
        env.pop("PREFECT_API_URL", None)
        proc = self.start(
            "prefect", [self._bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env
        )
        self.api = f"http://127.0.0.1:{port}/api"
        wait_http(f"{self.api}/health", 120, proc)
        self.env["PREFECT_API_URL"] = self.api
        return self.api

    def start_s3(self, watch: str) -> LocalS3:
        """SeaweedFS, its filer webhook pointed at this stack's bridge for objects under ``watch``."""
        self.s3 = start_local_s3(
            self.directory / "s3",
            webhook_url=f"http://127.0.0.1:{self.bridge_port}/",
            webhook_token=self.token,
            watch_prefixes=(watch,),
        )
        self.env.update(self.s3.env())
        return self.s3

    def start_bridge(self) -> None:
        proc = self.start(
            "bridge",
            [
                self._bin("icefloe"),
                "bridge",
                "webhook",
                "--port",
                str(self.bridge_port),
                "--dead-letter",
                str(self.directory / "dead-letters.jsonl"),
            ],
        )
        wait_http(f"http://127.0.0.1:{self.bridge_port}/", 60, proc)

    def serve(self, spec_path: Path, *extra: str) -> None:
        self.start("serve", [self._bin("icefloe"), "serve", str(spec_path), *extra])

    def _client(self) -> Any:
        """A Prefect client of this stack's server, whatever this process's own settings say."""
        from contextlib import ExitStack

        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        stack = ExitStack()
        if self.api:
            stack.enter_context(temporary_settings(updates={PREFECT_API_URL: self.api}))
        client = stack.enter_context(get_client(sync_client=True))
        return stack, client

    def trigger_ready(self, flow: str, name: str) -> bool:
        """Whether the deployment exists *and* its event trigger does.

        ``prefect serve`` creates a deployment first and its automation a moment later; an event sent
        in between matches nothing, so wait for this before sending the events a test or demo counts on.
        """
        stack, client = self._client()
        with stack:
            try:
                dep = client.read_deployment_by_name(f"{flow}/{name}")
            except Exception:
                return False
            return bool(client.read_resource_related_automations(f"prefect.deployment.{dep.id}"))

    def flow_runs(self, flow: str, deployment: str) -> list[Any]:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        stack, client = self._client()
        with stack:
            dep = client.read_deployment_by_name(f"{flow}/{deployment}")
            return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))

    def icefloe(self, *args: str, timeout: float = 600, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self._bin("icefloe"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )

    def close(self) -> None:
        for name in ("serve", "bridge"):
            self.stop(name)
        if self.s3 is not None:
            self.s3.stop()
            self.s3 = None
        for name in [n for n in self.procs if n != "postgres"]:
            self.stop(name)
        self.stop("postgres", sig=signal.SIGINT)  # last, once its clients are gone; SIGINT: fast shutdown

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
