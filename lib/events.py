"""Object-store notifications, whatever their shape, turned into object URLs.

Understood: AWS S3 event notifications (``{"Records": [...]}`` with ``ObjectCreated:*`` events, as
SQS or SNS deliver them), S3 events delivered by EventBridge (``detail-type: "Object Created"``),
``s3:TestEvent`` (ignored), and SeaweedFS filer webhook bodies. Each created object becomes an
:class:`ObjectEvent` whose URL is ``s3://{bucket}/{URL-decoded key}`` -- exactly the form discovery
gives that object, so an event's resource id matches the cube's source prefix.

Anything else is a :class:`MalformedNotification`: the bridge logs and dead-letters it, and goes on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

__all__ = ["CREATED_EVENT", "MalformedNotification", "ObjectEvent", "parse_notification", "parse_records"]

CREATED_EVENT = "icefloe.object.created"
MAX_BODY_BYTES = 1 << 20  # a notification is a few kB; anything this big is not one


class MalformedNotification(ValueError):
    """A message that is not a notification icefloe understands."""


@dataclass(frozen=True)
class ObjectEvent:
    """An object that was created (or overwritten) in a bucket."""

    url: str
    etag: str | None = None
    size: int | None = None
    source: str = ""

    @property
    def bucket(self) -> str:
        return self.url.removeprefix("s3://").split("/", 1)[0]

    def payload(self) -> dict[str, Any]:
        return {"url": self.url, "etag": self.etag, "size": self.size, "source": self.source}


def _s3_url(bucket: Any, key: Any) -> str:
    if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
        raise MalformedNotification(f"no bucket and key in the notification (bucket={bucket!r}, key={key!r})")
    return f"s3://{bucket}/{key}"


def _size(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _from_record(record: Any) -> ObjectEvent | None:
    """One record of an S3 event notification; None for events other than object creation."""
    if not isinstance(record, dict):
        raise MalformedNotification("an S3 event record is not an object")
    name = record.get("eventName")
    if not isinstance(name, str):
        raise MalformedNotification("an S3 event record has no eventName")
    if not name.startswith("ObjectCreated:"):
        return None
    s3 = record.get("s3") or {}
    obj = s3.get("object") or {}
    # S3 URL-encodes keys in notifications (a space arrives as "+")
    key = unquote_plus(obj["key"]) if isinstance(obj.get("key"), str) else None
    return ObjectEvent(
        _s3_url((s3.get("bucket") or {}).get("name"), key), obj.get("eTag"), _size(obj.get("size")), f"s3:{name}"
    )


def _from_eventbridge(message: dict[str, Any]) -> list[ObjectEvent]:
    if message.get("detail-type") != "Object Created":
        return []
    detail = message.get("detail") or {}
    obj = detail.get("object") or {}
    key = unquote_plus(obj["key"]) if isinstance(obj.get("key"), str) else None
    return [
        ObjectEvent(
            _s3_url((detail.get("bucket") or {}).get("name"), key),
            obj.get("etag"),
            _size(obj.get("size")),
            "eventbridge:Object Created",
        )
    ]


def _from_seaweedfs(message: dict[str, Any]) -> list[ObjectEvent]:
    """A SeaweedFS filer webhook body: ``{"event_type": "create", "key": "/buckets/b/k", ...}``."""
    if message.get("event_type") not in ("create", "update"):
        return []
    entry = (message.get("message") or {}).get("new_entry") or {}
    if entry.get("is_directory"):
        return []
    path = message.get("key")
    if not isinstance(path, str) or not path.startswith("/buckets/"):
        raise MalformedNotification(f"a SeaweedFS notification for {path!r}, which is not an object in a bucket")
    bucket, _, key = path.removeprefix("/buckets/").partition("/")
    attributes = entry.get("attributes") or {}
    md5 = attributes.get("md5")
    etag = f'"{md5}"' if isinstance(md5, str) and md5 else None
    return [
        ObjectEvent(
            _s3_url(bucket, key), etag, _size(attributes.get("file_size")), f"seaweedfs:{message['event_type']}"
        )
    ]


def parse_records(message: Any) -> list[ObjectEvent]:
    """The created objects in one decoded notification message (any supported shape)."""
    if not isinstance(message, dict):
        if isinstance(message, list):  # a file of records, or of messages
            return [e for item in message for e in parse_records(item)]
        raise MalformedNotification(f"a notification must be a JSON object, not {type(message).__name__}")
    if isinstance(message.get("Message"), str) and message.get("Type") == "Notification":
        return parse_notification(message["Message"])  # delivered through SNS
    if message.get("Event") == "s3:TestEvent":
        return []
    if "Records" in message:
        records = message["Records"]
        if not isinstance(records, list):
            raise MalformedNotification("'Records' is not a list")
        return [e for r in records if (e := _from_record(r)) is not None]
    if "eventName" in message and "s3" in message:
        event = _from_record(message)
        return [event] if event else []
    if message.get("source") == "aws.s3" and "detail" in message:
        return _from_eventbridge(message)
    if "event_type" in message and "key" in message:
        return _from_seaweedfs(message)
    raise MalformedNotification(f"not an S3, EventBridge or SeaweedFS notification (keys: {sorted(message)[:8]})")


def parse_notification(body: bytes | str) -> list[ObjectEvent]:
    """Decode a notification body (JSON, or JSON lines) into the objects it announces.

    Raises
    ------
    MalformedNotification
        The body is too big, not JSON, or not a notification icefloe understands.
    """
    raw = body.encode() if isinstance(body, str) else body
    if len(raw) > MAX_BODY_BYTES:
        raise MalformedNotification(f"a {len(raw)}-byte body is too big for a notification")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedNotification(f"the body is not UTF-8 ({e})") from None
    try:
        return parse_records(json.loads(text))
    except json.JSONDecodeError:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > 1:
            try:
                return [e for line in lines for e in parse_records(json.loads(line))]
            except json.JSONDecodeError:
                pass
        raise MalformedNotification("the body is not JSON") from None


def matching(events: Iterable[ObjectEvent], prefix: str) -> list[ObjectEvent]:
    """The events for objects under a source prefix."""
    return [e for e in events if e.url.startswith(prefix)]
