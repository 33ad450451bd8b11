"""Notifications in every shape the bridge meets become object URLs; anything else is refused clearly."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from flows.services.bridge import poll_sqs, replay, serve_webhook
from lib.events import MAX_BODY_BYTES, MalformedNotification, ObjectEvent, parse_notification


def s3_record(key: str, name: str = "ObjectCreated:Put", bucket: str = "archive") -> dict[str, Any]:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-24T12:00:00.000Z",
        "eventName": name,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "10.0.0.1"},
        "responseElements": {
            "x-amz-request-id": "C3D13FE58DE4C810",
            "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "icefloe",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": {
                "key": key,
                "size": 1024,
                "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                "sequencer": "0055AED6DCD90281E5",
            },
        },
    }


def test_s3_notifications_put_and_multipart_with_encoded_keys() -> None:
    body = json.dumps(
        {
            "Records": [
                s3_record("oae/polygon_1/month_2/step+0001.nc"),
                s3_record("oae/caf%C3%A9/r%C3%BCn+a.nc", "ObjectCreated:CompleteMultipartUpload"),
                s3_record("oae/gone.nc", "ObjectRemoved:Delete"),
            ]
        }
    )
    events = parse_notification(body)
    assert [e.url for e in events] == [
        "s3://archive/oae/polygon_1/month_2/step 0001.nc",
        "s3://archive/oae/café/rün a.nc",
    ]
    assert events[0].size == 1024 and events[0].etag == "d41d8cd98f00b204e9800998ecf8427e"
    assert events[1].source == "s3:ObjectCreated:CompleteMultipartUpload"


def test_eventbridge_object_created() -> None:
    message = {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "111122223333",
        "time": "2021-11-12T00:00:00Z",
        "region": "ca-central-1",
        "resources": ["arn:aws:s3:::archive"],
        "detail": {
            "version": "0",
            "bucket": {"name": "archive"},
            "object": {
                "key": "oae/a+b.nc",
                "size": 5,
                "etag": "b1946ac92492d2347c6235b4d2611184",
                "sequencer": "617f08299329d189",
            },
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "reason": "PutObject",
        },
    }
    assert parse_notification(json.dumps(message)) == [
        ObjectEvent("s3://archive/oae/a b.nc", "b1946ac92492d2347c6235b4d2611184", 5, "eventbridge:Object Created")
    ]
    deleted = dict(message, **{"detail-type": "Object Deleted"})
    assert parse_notification(json.dumps(deleted)) == []


def test_test_events_sns_envelopes_and_seaweedfs_webhooks() -> None:
    test_event = {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2026-11-24T12:00:00.000Z",
        "Bucket": "archive",
        "RequestId": "5582815E1AEA5ADF",
        "HostId": "8cLeGAmw098X5cv4Zkw",
    }
    assert parse_notification(json.dumps(test_event)) == []
    sns = {
        "Type": "Notification",
        "MessageId": "x",
        "TopicArn": "arn:aws:sns:us-east-1:1:t",
        "Message": json.dumps({"Records": [s3_record("oae/x.nc")]}),
    }
    assert [e.url for e in parse_notification(json.dumps(sns))] == ["s3://archive/oae/x.nc"]
    weed = {
        "event_type": "create",
        "key": "/buckets/archive/oae/new file.nc",
        "message": {
            "new_entry": {
                "name": "new file.nc",
                "is_directory": False,
                "attributes": {"file_size": 4096, "mtime": 1764000000, "md5": "5d41402abc4b2a76b9719d911017c592"},
            }
        },
    }
    assert parse_notification(json.dumps(weed)) == [
        ObjectEvent("s3://archive/oae/new file.nc", '"5d41402abc4b2a76b9719d911017c592"', 4096, "seaweedfs:create")
    ]
    directory = {**weed, "message": {"new_entry": {"is_directory": True}}}
    assert parse_notification(json.dumps(directory)) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"hello": "world"}', "not an S3, EventBridge or SeaweedFS notification"),
        (b'{"Records": {"a": 1}}', "'Records' is not a list"),
        (json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {}}]}).encode(), "no bucket and key"),
        (b" " * (MAX_BODY_BYTES + 1), "too big"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(body: bytes, message: str) -> None:
    with pytest.raises(MalformedNotification, match=message):
        parse_notification(body)


@pytest.fixture
def webhook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("ICEFLOE_WEBHOOK_TOKEN", "t0ken-for-the-webhook-tests")
    received: list[ObjectEvent] = []
    started = threading.Event()
    holder: dict[str, Any] = {}

    def ready(server: Any) -> None:
        holder["server"] = server
        started.set()

    thread = threading.Thread(
        target=serve_webhook,
        daemon=True,
        kwargs={
            "port": 0,
            "dead_letter": tmp_path / "dead.jsonl",
            "ready": ready,
            "emit": lambda events: received.extend(events) or len(events),
        },
    )
    thread.start()
    assert started.wait(10)
    server = holder["server"]
    yield f"http://127.0.0.1:{server.server_address[1]}/", received, tmp_path / "dead.jsonl"
    server.shutdown()
    thread.join(10)


def post(url: str, body: bytes, token: str | None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def oversized(url: str, token: str) -> int:
    """Announce a body over the limit: refused from its Content-Length, before a byte is read."""
    import http.client
    from urllib.parse import urlparse

    where = urlparse(url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
    conn.putrequest("POST", "/")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


def test_webhook_needs_the_token_and_dead_letters_garbage(webhook: Any) -> None:
    url, received, dead = webhook
    body = json.dumps({"Records": [s3_record("oae/a.nc")]}).encode()
    assert post(url, body, None)[0] == 401
    assert post(url, body, "wrong")[0] == 401
    assert post(url, body, "t0ken-for-the-webhook-tests")[0] == 200
    assert [e.url for e in received] == ["s3://archive/oae/a.nc"]
    status, reply = post(url, b"garbage", "t0ken-for-the-webhook-tests")
    assert status == 400 and "not JSON" in reply["message"]
    assert json.loads(dead.read_text().splitlines()[0])["body"] == "garbage"
    assert oversized(url, "t0ken-for-the-webhook-tests") == 413
    assert len(received) == 1  # the bridge is still up and emitted nothing for the bad requests
    assert post(url, body, "t0ken-for-the-webhook-tests")[0] == 200


def test_webhook_refuses_to_start_without_a_real_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from lib.errors import SpecError

    monkeypatch.setenv("ICEFLOE_WEBHOOK_TOKEN", "short")
    with pytest.raises(SpecError, match="ICEFLOE_WEBHOOK_TOKEN"):
        serve_webhook(port=0)


def test_replay_file_of_records_with_a_bad_line(tmp_path: Path) -> None:
    lines = [json.dumps({"Records": [s3_record("oae/a.nc")]}), "{oops", json.dumps(s3_record("oae/b.nc"))]
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines) + "\n")
    got: list[ObjectEvent] = []
    counts = replay(str(source), tmp_path / "dead.jsonl", emit=lambda e: got.extend(e) or len(e))
    assert counts == {"events": 2, "dead_lettered": 1}
    assert [e.url for e in got] == ["s3://archive/oae/a.nc", "s3://archive/oae/b.nc"]


def test_sqs_deletes_only_after_emitting_and_dead_letters_garbage() -> None:
    import boto3
    from moto import mock_aws

    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        # a visibility timeout of 0: a message not deleted is back at once (AWS would wait 30 s)
        queue = sqs.create_queue(QueueName="notifications", Attributes={"VisibilityTimeout": "0"})["QueueUrl"]
        dlq = sqs.create_queue(QueueName="notifications-dlq")["QueueUrl"]
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"Records": [s3_record("oae/a.nc")]}))
        sqs.send_message(QueueUrl=queue, MessageBody="not a notification")

        def failing(events: list[ObjectEvent]) -> int:
            raise ConnectionError("Prefect is down")

        with pytest.raises(ConnectionError):
            poll_sqs(queue, dead_letter_queue=dlq, wait=0, once=True, client=sqs, emit=failing)
        got: list[ObjectEvent] = []
        for _ in range(3):  # the message that failed to emit is still queued, and now goes through
            poll_sqs(
                queue, dead_letter_queue=dlq, wait=0, once=True, client=sqs, emit=lambda e: got.extend(e) or len(e)
            )
        attrs = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
        dead = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10).get("Messages", [])
        assert [e.url for e in got] == ["s3://archive/oae/a.nc"]
        assert int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"]) == 0
        assert [m["Body"] for m in dead] == ["not a notification"]
