"""A fault-injecting HTTP proxy for tests: sits on a loopback port in front of a real S3 server.

Every request is forwarded unchanged (the Host header too, so SigV4 signatures still verify) unless a
rule says otherwise. Rules answer matching requests with an error status (503 SlowDown, 500), delay
them, or drop the connection as a dead server would; an *outage* drops everything until it is lifted,
and can be armed to begin at the first request that matches a predicate ("the first manifest write").
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

Match = Callable[[str, str], bool]  # (method, path) -> applies?

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def anything(method: str, path: str) -> bool:
    return True


@dataclass
class Rule:
    match: Match
    status: int = 503  # 0: drop the connection without answering
    times: int = 1  # how many matching requests it applies to
    delay: float = 0.0
    hits: int = 0
    headers: Callable[[Message], bool] | None = None  # and only requests whose headers it accepts
    skip: int = 0  # let this many matching requests through first
    seen: int = 0


@dataclass
class Outage:
    """Drops every request while active; armed outages begin at the first request matching ``start``."""

    start: Match | None = None
    seconds: float | None = None  # lifted by itself after this long, else by FaultProxy.restore()
    began: float | None = None

    def active(self, method: str, path: str) -> bool:
        now = time.monotonic()
        if self.began is None and self.start is not None and self.start(method, path):
            self.began = now
        if self.began is None:
            return False
        return self.seconds is None or now - self.began < self.seconds


@dataclass
class FaultProxy:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    outage: Outage | None = None
    log: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                proxy._forward(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def fail(
        self,
        match: Match = anything,
        status: int = 503,
        times: int = 1,
        delay: float = 0.0,
        headers: Callable[[Message], bool] | None = None,
        skip: int = 0,
    ) -> Rule:
        rule = Rule(match, status, times, delay, headers=headers, skip=skip)
        with self.lock:
            self.rules.append(rule)
        return rule

    def arm_outage(self, start: Match, seconds: float | None = None) -> Outage:
        with self.lock:
            self.outage = Outage(start, seconds)
        return self.outage

    def restore(self) -> None:
        with self.lock:
            self.outage = None
            self.rules.clear()

    def _decide(self, method: str, path: str, headers: Message) -> tuple[int | None, float]:
        """(status to answer with instead of forwarding, or None; delay first)."""
        with self.lock:
            if self.outage is not None and self.outage.active(method, path):
                return 0, 0.0
            for rule in self.rules:
                if (
                    rule.hits < rule.times
                    and rule.match(method, path)
                    and (rule.headers is None or rule.headers(headers))
                ):
                    rule.seen += 1
                    if rule.seen <= rule.skip:
                        continue
                    rule.hits += 1
                    return (None if rule.status == 200 else rule.status), rule.delay
        return None, 0.0

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        body = _read_body(h)
        status, delay = self._decide(h.command, h.path, h.headers)
        if delay:
            time.sleep(delay)
        if status == 0:
            self.log.append((h.command, h.path, 0))
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        if status is not None:
            self.log.append((h.command, h.path, status))
            h.send_response(status)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(SLOW_DOWN)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(SLOW_DOWN)
            return
        up = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
        try:
            conn.putrequest(h.command, h.path, skip_host=True, skip_accept_encoding=True)
            for key, value in h.headers.items():
                if key.lower() != "transfer-encoding":
                    conn.putheader(key, value)
            if body and "content-length" not in {k.lower() for k in h.headers}:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            self.log.append((h.command, h.path, resp.status))
            h.send_response_only(resp.status, resp.reason)
            skip = (
                ("transfer-encoding", "connection")
                if h.command == "HEAD"
                else ("transfer-encoding", "connection", "content-length")
            )
            for key, value in resp.getheaders():
                if key.lower() not in skip:
                    h.send_header(key, value)
            if h.command != "HEAD":
                h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
        finally:
            conn.close()


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(h.rfile.read(size))
            h.rfile.readline()
    length = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(length) if length else b""
