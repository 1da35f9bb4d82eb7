"""S3Store against a real S3 API server (moto on loopback, presigned links checked)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.auth
import httpx
import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse, HTTPHeaders
from structlog.testing import capture_logs

from app.adapters.storage import content_disposition, open_store, output_key
from app.adapters.storage.s3 import S3Store, backoff_s
from app.core.config import Settings
from app.core.errors import StorageUnavailable, UploadFailed
from tests.support.s3_server import SECRET_ACCESS_KEY, S3Server


class _RawBody:
    """Just enough of urllib3's response for botocore to read an injected answer."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_kwargs: object) -> Iterator[bytes]:
        yield self._body


def _fail_first(store: S3Store, operation: str, times: int, status: int = 503) -> list[int]:
    """Make the next `times` calls of `operation` get an S3 error answer; count all calls."""
    calls: list[int] = []
    body = (
        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
        b"<Message>Please reduce your request rate.</Message></Error>"
        if status == 503
        else b"<Error><Code>InternalError</Code><Message>boom</Message></Error>"
    )

    # Returns an AWSResponse (which stands in for the send) or None; botocore's stubs type
    # every event handler as returning None, hence Any.
    def before_send(request: AWSPreparedRequest, **_kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= times:
            return AWSResponse(request.url, status, HTTPHeaders(), _RawBody(body))
        return None

    store.client.meta.events.register(f"before-send.s3.{operation}", before_send)
    return calls


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_open_store_builds_an_s3_store(s3_settings: Settings) -> None:
    store = open_store(s3_settings)

    assert isinstance(store, S3Store)
    assert store.bucket == s3_settings.s3_bucket
    assert store.max_attempts == s3_settings.upload_max_attempts
    # botocore's Config sets its options as attributes at run time; its stubs do not list them.
    assert store.client.meta.config.s3 == {"addressing_style": "path"}  # type: ignore[attr-defined]
    assert store.client.meta.config.signature_version == "s3v4"  # type: ignore[attr-defined]


def test_put_file_and_bytes_store_objects_with_their_type(
    s3_store: S3Store, tmp_path: Path
) -> None:
    # Given a file and some bytes
    source = tmp_path / "render.png"
    source.write_bytes(b"\x89PNG fake image" * 100)
    file_key = output_key("t1", "u1", "job1", 0, "render.png")
    bytes_key = output_key("t1", "u1", "job1", 1, "meta.json")

    # When both are stored
    file_size = s3_store.put_file(file_key, source, "image/png")
    bytes_size = s3_store.put_bytes(bytes_key, b'{"a":1}', "application/json")

    # Then the bucket holds exactly those bytes with those types
    assert file_size == source.stat().st_size
    assert bytes_size == 7
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key=file_key)
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == file_size
    got = s3_store.client.get_object(Bucket=s3_store.bucket, Key=bytes_key)
    assert got["Body"].read() == b'{"a":1}'
    assert s3_store.exists(file_key) and s3_store.exists(bytes_key)
    assert not s3_store.exists(output_key("t1", "u1", "job1", 2, "other.png"))


def test_presigned_get_downloads_with_signed_type_and_disposition(s3_store: S3Store) -> None:
    # Given an object stored with a generic type
    key = output_key("t1", "u1", "job2", 0, "out.png")
    s3_store.put_bytes(key, b"image bytes", "application/octet-stream")

    # When a link is signed for it, with a filename that needs quoting
    filename = 'my "best" rendü.png'
    url = s3_store.url(key, filename=filename, content_type="image/png", expires_s=300)
    response = httpx.get(url, timeout=10)

    # Then plain HTTP gets the bytes, the signed type and an attachment disposition
    assert response.status_code == 200, response.text
    assert response.content == b"image bytes"
    assert response.headers["content-type"] == "image/png"
    disposition = response.headers["content-disposition"]
    assert disposition == content_disposition(filename)
    assert disposition.startswith('attachment; filename="my _best_ rend_.png"')
    assert "filename*=UTF-8''my%20%22best%22%20rend%C3%BC.png" in disposition
    assert "X-Amz-Expires=300" in url


def test_tampering_with_a_presigned_link_is_refused(s3_store: S3Store, s3_server: S3Server) -> None:
    key = output_key("t1", "u1", "job3", 0, "out.png")
    s3_store.put_bytes(key, b"secret bytes", "image/png")
    url = s3_store.url(key, filename="out.png", content_type="image/png", expires_s=300)
    other = output_key("t1", "u2", "job3", 0, "out.png")
    s3_store.put_bytes(other, b"other user's bytes", "image/png")

    tampered = [
        url.replace("attachment", "inline"),
        url.replace("image%2Fpng", "text%2Fhtml"),
        url.replace("/u1/", "/u2/"),
        url.replace("X-Amz-Expires=300", "X-Amz-Expires=600"),
    ]
    for bad in tampered:
        assert bad != url
        response = httpx.get(bad, timeout=10)
        assert response.status_code == 403, bad
        assert b"SignatureDoesNotMatch" in response.content
    assert httpx.get(url, timeout=10).status_code == 200


def test_expired_presigned_link_is_refused(s3_store: S3Store, s3_server: S3Server) -> None:
    # Given a link valid for 60 s
    key = output_key("t1", "u1", "job4", 0, "out.png")
    s3_store.put_bytes(key, b"bytes", "image/png")
    url = s3_store.url(key, filename="out.png", content_type="image/png", expires_s=60)

    # When the server's clock is 50 s later, it still works
    s3_server.gate.clock_offset_s = 50
    assert httpx.get(url, timeout=10).status_code == 200

    # Then 61 s later it is refused as expired
    s3_server.gate.clock_offset_s = 61
    response = httpx.get(url, timeout=10)
    assert response.status_code == 403
    assert b"Request has expired" in response.content


def test_each_url_call_signs_a_new_link_and_both_work(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = output_key("t1", "u1", "job5", 0, "out.png")
    s3_store.put_bytes(key, b"bytes", "image/png")
    signing_time = [datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=30)]
    # botocore signs with its own clock; step it so two calls fall in different seconds.
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: signing_time[0])

    first = s3_store.url(key, filename="out.png", content_type="image/png", expires_s=300)
    signing_time[0] += timedelta(seconds=1)
    second = s3_store.url(key, filename="out.png", content_type="image/png", expires_s=300)

    assert first != second
    for url in (first, second):
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200
        assert response.content == b"bytes"


def test_missing_bucket_is_a_permanent_upload_failure(s3_store: S3Store) -> None:
    store = S3Store(s3_store.client, "no-such-bucket-here", max_attempts=3, sleep=_no_sleep)

    with pytest.raises(UploadFailed, match="NoSuchBucket") as raised:
        store.put_bytes("outputs/t/u/j/00-a.png", b"x", "image/png")

    assert not raised.value.retryable


def test_transient_errors_are_retried_with_backoff(s3_store: S3Store) -> None:
    # Given a store whose next two PUTs get 503 SlowDown
    sleeps: list[float] = []
    store = S3Store(
        s3_store.client,
        s3_store.bucket,
        max_attempts=4,
        backoff_base_s=0.5,
        sleep=sleeps.append,
        rand=lambda: 1.0,
    )
    calls = _fail_first(store, "PutObject", times=2)
    key = output_key("t1", "u1", "job6", 0, "a.png")

    # When bytes are put
    with capture_logs() as logs:
        size = store.put_bytes(key, b"eventually", "image/png")

    # Then the third attempt stored them, after waits of 0.5 s and 1 s
    assert size == 10
    assert len(calls) == 3
    assert sleeps == [0.5, 1.0]
    assert store.exists(key)
    retries = [entry for entry in logs if entry["event"] == "storage_retry"]
    assert [(r["attempt"], r["error"]) for r in retries] == [(1, "SlowDown"), (2, "SlowDown")]


def test_transient_errors_exhaust_into_storage_unavailable(
    s3_store: S3Store, tmp_path: Path
) -> None:
    sleeps: list[float] = []
    store = S3Store(
        s3_store.client, s3_store.bucket, max_attempts=3, sleep=sleeps.append, rand=lambda: 0.0
    )
    calls = _fail_first(store, "PutObject", times=10, status=500)
    source = tmp_path / "a.png"
    source.write_bytes(b"data")

    with pytest.raises(StorageUnavailable, match="3 times") as raised:
        store.put_file(output_key("t1", "u1", "job7", 0, "a.png"), source, "image/png")

    assert raised.value.retryable
    assert len(calls) == 3
    assert sleeps == [0.25, 0.5]  # base 0.5 s doubled, jitter at its lowest (x0.5)


def test_connection_errors_are_transient(s3_store: S3Store) -> None:
    # Given a client pointed at a port where nothing listens
    from app.core.config import Settings

    dead = S3Store.from_settings(
        Settings(
            storage="s3",
            s3_endpoint_url=f"http://127.0.0.1:{_free_port()}",
            s3_region="us-east-1",
            s3_bucket=s3_store.bucket,
            s3_access_key_id="k",
            s3_secret_access_key="s",
        )
    )
    sleeps: list[float] = []
    store = S3Store(dead.client, dead.bucket, max_attempts=2, sleep=sleeps.append)

    with capture_logs() as logs, pytest.raises(StorageUnavailable):
        store.put_bytes("outputs/t/u/j/00-a.png", b"x", "image/png")

    assert len(sleeps) == 1
    assert logs[-1]["event"] == "storage_unavailable"
    assert logs[-1]["error"] == "EndpointConnectionError"


def test_nothing_logged_carries_a_signature_or_secret(s3_store: S3Store) -> None:
    store = S3Store(s3_store.client, s3_store.bucket, max_attempts=2, sleep=_no_sleep)
    _fail_first(store, "PutObject", times=5)
    key = output_key("t1", "u1", "job8", 0, "a.png")

    with capture_logs() as logs:
        store.url(key, filename="a.png", content_type="image/png", expires_s=60)
        with pytest.raises(StorageUnavailable) as raised:
            store.put_bytes(key, b"x", "image/png")

    text = repr(logs) + raised.value.message
    assert logs
    assert "X-Amz-Signature" not in text
    assert SECRET_ACCESS_KEY not in text
    assert "http" not in text


def test_retention_listing_and_prefix_delete(s3_store: S3Store) -> None:
    # Given outputs of two jobs
    keys = [output_key("t1", "u1", job, i, "a.png") for job in ("jobA", "jobB") for i in range(3)]
    for key in keys:
        s3_store.put_bytes(key, b"x", "image/png")
    now = datetime.now(UTC).timestamp()

    # When listing what is older than a cutoff
    assert s3_store.list_older_than("outputs/t1/", now - 3600) == []
    assert s3_store.list_older_than("outputs/t1/", now + 3600) == sorted(keys)

    # Then deleting one job's prefix leaves the other job alone
    assert s3_store.delete_prefix("outputs/t1/u1/jobA/") == 3
    assert s3_store.list_older_than("outputs/", now + 3600) == sorted(keys[3:])
    assert s3_store.delete_keys(keys[3:4]) == 1
    assert s3_store.list_older_than("outputs/", now + 3600) == sorted(keys[4:])


def test_backoff_is_capped_exponential_with_jitter() -> None:
    assert backoff_s(1, 0.5, 8.0, rand=1.0) == 0.5
    assert backoff_s(3, 0.5, 8.0, rand=1.0) == 2.0
    assert backoff_s(10, 0.5, 8.0, rand=1.0) == 8.0
    assert backoff_s(10, 0.5, 8.0, rand=0.0) == 4.0


def _no_sleep(_seconds: float) -> None:
    return None


def test_an_abandoned_multipart_upload_is_aborted_once_old(s3_store: S3Store) -> None:
    key = output_key("t", "u", "j", 0, "big.png")
    begun = s3_store.client.create_multipart_upload(Bucket=s3_store.bucket, Key=key)

    # moto dates every multipart upload 2010-11-10, so "young" is a cutoff before that.
    assert s3_store.remove_partial(datetime(2010, 1, 1, tzinfo=UTC).timestamp()) == 0

    assert s3_store.remove_partial(datetime.now(UTC).timestamp() + 60) == 1
    left = s3_store.client.list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [] and begun["UploadId"]
    assert not s3_store.exists(key)
