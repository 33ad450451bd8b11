"""``icefloe bridge``: object-store notifications in, Prefect events ``icefloe.object.created`` out.

Three sources, one parser (:mod:`lib.events`):

* ``webhook`` -- an HTTP endpoint (loopback by default) for the SeaweedFS filer's webhook, or anything
  that POSTs notifications; requests need ``Authorization: Bearer $ICEFLOE_WEBHOOK_TOKEN``
  (compared in constant time), bodies are size-limited.
* ``sqs QUEUE_URL`` -- AWS S3 event notifications read from SQS by long polling (also S3 events
  routed through EventBridge or SNS); a message is deleted only after its events were emitted.
* ``replay FILE|-`` -- a JSON (or JSON lines) file, or stdin, of notifications.

A message that is not a notification is logged and dead-lettered (a JSON-lines file, or for SQS the
dead-letter queue), and the bridge goes on. Events carry the object URL as their resource id and no
instruction: the ingest deployment they trigger drains everything pending, so a lost, late or
duplicated event does no harm.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lib.errors import IcefloeError, SpecError
from lib.events import CREATED_EVENT, MAX_BODY_BYTES, MalformedNotification, ObjectEvent, parse_notification

__all__ = ["DeadLetters", "emit_events", "poll_sqs", "replay", "serve_webhook"]

log = logging.getLogger("icefloe.bridge")
TOKEN_ENV = "ICEFLOE_WEBHOOK_TOKEN"


def prefect_event(e: ObjectEvent) -> Any:
    from prefect.events import Event
    from prefect.events.schemas.events import Resource

    return Event(
        event=CREATED_EVENT,
        resource=Resource(
            root={
                "prefect.resource.id": e.url,
                "prefect.resource.name": e.url.rsplit("/", 1)[-1],
                "icefloe.bucket": e.bucket,
            }
        ),
        payload=e.payload(),
    )


def emit_events(events: Iterable[ObjectEvent]) -> int:
    """Send the events to Prefect and wait until they are sent; returns how many."""
    from prefect.events.clients import get_events_client

    batch = [prefect_event(e) for e in events]
    if not batch:
        return 0

    async def send() -> None:
        async with get_events_client() as client:
            for event in batch:
                await client.emit(event)

    asyncio.run(send())
    return len(batch)


class DeadLetters:
    """Messages the bridge could not understand, kept as JSON lines for a person to look at."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.count = 0
        self._lock = threading.Lock()

    def add(self, body: bytes | str, reason: str, origin: str) -> None:
        self.count += 1
        log.warning("dead-lettered a message from %s: %s", origin, reason)
        if self.path is None:
            return
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"at": time.time(), "origin": origin, "reason": reason, "body": text[:65536]}) + "\n")


def _token() -> str:
    token = os.environ.get(TOKEN_ENV, "")
    if len(token) < 16:
        raise SpecError(
            f"set {TOKEN_ENV} to a secret of at least 16 characters: the webhook refuses requests without it",
            key=TOKEN_ENV,
        )
    return token


def make_handler(token: str, dead: DeadLetters, emit: Callable[[list[ObjectEvent]], int]) -> type:
    expected = f"Bearer {token}".encode()

    class Handler(BaseHTTPRequestHandler):
        server_version = "icefloe-bridge"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.client_address[0], *args)

        def _reply(self, status: HTTPStatus, message: str) -> None:
            body = json.dumps({"status": status.value, "message": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._reply(HTTPStatus.OK, "icefloe bridge: POST notifications here")

        def do_POST(self) -> None:
            given = (self.headers.get("Authorization") or "").encode()
            if not hmac.compare_digest(given, expected):
                self._reply(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")
                return
            try:
                length = int(self.headers.get("Content-Length") or "0")
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY_BYTES:
                self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"bodies are limited to {MAX_BODY_BYTES} bytes")
                self.close_connection = True
                return
            body = self.rfile.read(length)
            try:
                events = parse_notification(body)
            except MalformedNotification as e:
                dead.add(body, str(e), f"webhook {self.client_address[0]}")
                self._reply(HTTPStatus.BAD_REQUEST, str(e))
                return
            try:
                sent = emit(events)
            except Exception as e:  # Prefect unreachable: the sender may retry, the sweep will catch up
                log.error("could not emit %d event(s): %s", len(events), e)
                self._reply(HTTPStatus.SERVICE_UNAVAILABLE, "could not emit events to Prefect")
                return
            log.info("emitted %d event(s): %s", sent, ", ".join(e.url for e in events[:5]))
            self._reply(HTTPStatus.OK, f"{sent} event(s) emitted")

    return Handler


def serve_webhook(
    host: str = "127.0.0.1",
    port: int = 8765,
    dead_letter: Path | None = None,
    ready: Callable[[ThreadingHTTPServer], None] | None = None,
    emit: Callable[[list[ObjectEvent]], int] = emit_events,
) -> None:
    """Serve the webhook until SIGTERM/SIGINT. Binds loopback unless told otherwise."""
    token = _token()
    dead = DeadLetters(dead_letter)
    server = ThreadingHTTPServer((host, port), make_handler(token, dead, emit))
    server.daemon_threads = True
    log.info("bridge listening on http://%s:%d", *server.server_address[:2])
    if ready is not None:
        ready(server)

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


def poll_sqs(
    queue_url: str,
    *,
    dead_letter_queue: str | None = None,
    region: str | None = None,
    endpoint: str | None = None,
    wait: int = 20,
    once: bool = False,
    client: Any = None,
    emit: Callable[[list[ObjectEvent]], int] = emit_events,
    dead_letter: Path | None = None,
) -> dict[str, int]:
    """Long-poll an SQS queue of S3 notifications; returns counts when stopped (or after one poll with ``once``).

    A message is deleted only after its events were emitted. A message that is not a notification
    is sent to ``dead_letter_queue`` and deleted; without one it is left for the queue's redrive
    policy to move to its dead-letter queue.
    """
    import boto3

    sqs = client or boto3.client("sqs", region_name=region, endpoint_url=endpoint)
    dead = DeadLetters(dead_letter)
    counts = {"messages": 0, "events": 0, "dead_lettered": 0}
    stopping = threading.Event()
    if threading.current_thread() is threading.main_thread() and not once:
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    while not stopping.is_set():
        reply = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait, AttributeNames=["ApproximateReceiveCount"]
        )
        for message in reply.get("Messages", []):
            counts["messages"] += 1
            body = message.get("Body", "")
            try:
                events = parse_notification(body)
            except MalformedNotification as e:
                counts["dead_lettered"] += 1
                dead.add(body, str(e), f"sqs {queue_url}")
                if dead_letter_queue:
                    sqs.send_message(QueueUrl=dead_letter_queue, MessageBody=body)
                    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                continue
            counts["events"] += emit(events)  # raises if Prefect is unreachable: the message stays queued
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        if once:
            break
    return counts


def replay(
    source: str, dead_letter: Path | None = None, emit: Callable[[list[ObjectEvent]], int] = emit_events
) -> dict[str, int]:
    """Emit the events of a file (or ``-`` for stdin) of notifications: one JSON document or JSON lines."""
    import sys

    if source == "-":
        text = sys.stdin.read()
    else:
        path = Path(source)
        if not path.is_file():
            raise IcefloeError(f"{source} is not a file")
        text = path.read_text(encoding="utf-8")
    dead = DeadLetters(dead_letter)
    try:
        events = parse_notification(text)
    except MalformedNotification:
        events = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                events.extend(parse_notification(line))
            except MalformedNotification as e:
                dead.add(line, f"line {number}: {e}", source)
    return {"events": emit(events), "dead_lettered": dead.count}
