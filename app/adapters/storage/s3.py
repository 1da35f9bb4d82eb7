"""An S3-compatible object store (Cloudflare R2 in production) over a boto3 client.

Retries live here, in one place: botocore is told to try each request once, and
`S3Store` retries transient failures (5xx, throttling, dropped connections) with capped
exponential backoff and jitter, so the number of attempts and the waits are ours to
count and test. After `max_attempts` it raises `StorageUnavailable` (the stage is then
retried by the pipeline); a permanent refusal (4xx: no such bucket, access denied) raises
`UploadFailed` at once. Presigned URLs carry signatures, so they are never logged.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from app.adapters.storage.base import content_disposition, require_safe_key
from app.core.config import Settings
from app.core.errors import ObjectNotFound, StorageUnavailable, UploadFailed
from app.core.logs import get_logger

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

#: S3 refuses a single PUT above 5 GiB; outputs that large would need multipart.
MAX_PUT_BYTES = 5 * 1024**3
#: DeleteObjects takes at most this many keys per request.
_DELETE_BATCH = 1000
_THROTTLING_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
    }
)
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_TRANSIENT_BOTOCORE = (
    BotoConnectionError,
    HTTPClientError,
    ResponseStreamingError,
    IncompleteReadError,
)


def error_code(exc: Exception) -> str:
    """A short, log-safe name for a storage error (never a URL or a credential)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or _status(exc) or "ClientError")
    return type(exc).__name__


def is_transient(exc: Exception) -> bool:
    """Whether retrying the same request may succeed."""
    if isinstance(exc, ClientError):
        status = _status(exc)
        return status >= 500 or status in (408, 429) or error_code(exc) in _THROTTLING_CODES
    return isinstance(exc, _TRANSIENT_BOTOCORE)


def backoff_s(attempt: int, base_s: float, max_s: float, rand: float) -> float:
    """Wait after failed `attempt` (1-based): capped exponential, jittered into [1/2, 1]."""
    return min(max_s, base_s * 2.0 ** (attempt - 1)) * (0.5 + rand / 2)


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


class S3Store:
    """An `ObjectStore` over one bucket of an S3-compatible service."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        *,
        max_attempts: int,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.client = client
        self.bucket = bucket
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._rand = rand

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        """A store for `settings.s3_*`: SigV4, path-style when an endpoint is given."""
        endpoint = settings.s3_endpoint_url or None
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"} if endpoint else {},
            # One attempt per call: the retries are ours (see the module docstring).
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=10,
            read_timeout=60,
            # R2 and other S3-compatible services reject the newer default trailing
            # checksums; send them only where the API requires one.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A session per store: boto3's default session is not thread-safe.
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=settings.s3_region or None,
            aws_access_key_id=settings.s3_access_key_id.get_secret_value() or None,
            aws_secret_access_key=settings.s3_secret_access_key.get_secret_value() or None,
            config=config,
        )
        return cls(client, settings.s3_bucket, max_attempts=settings.upload_max_attempts)

    def put_file(self, key: str, path: Path, content_type: str) -> int:
        """Upload the file at `path` to `key` (one PUT); return its size."""
        require_safe_key(key)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise UploadFailed(f"cannot read the output file for {key}") from exc
        if size > MAX_PUT_BYTES:
            raise UploadFailed(f"output is over {MAX_PUT_BYTES} bytes")

        def upload() -> None:
            # Reopened on each attempt, so a retry sends the file from its start.
            with path.open("rb") as body:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentLength=size,
                    ContentType=content_type,
                )

        try:
            self._call("put_object", upload)
        except OSError as exc:
            raise UploadFailed(f"cannot read the output file for {key}") from exc
        return size

    def put_bytes(self, key: str, data: bytes, content_type: str) -> int:
        """Upload `data` to `key`; return its size."""
        require_safe_key(key)
        self._call(
            "put_object",
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type
            ),
        )
        return len(data)

    def url(self, key: str, *, filename: str, content_type: str, expires_s: int) -> str:
        """A presigned GET that forces a download of `filename` typed `content_type`."""
        require_safe_key(key)
        params = {
            "Bucket": self.bucket,
            "Key": key,
            "ResponseContentDisposition": content_disposition(filename),
            "ResponseContentType": content_type,
        }
        try:
            return self.client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires_s
            )
        except (BotoCoreError, ClientError) as exc:
            raise UploadFailed(f"cannot sign a download link ({error_code(exc)})") from exc

    def presign_put(
        self, key: str, *, content_type: str, size: int, expires_s: int
    ) -> tuple[str, dict[str, str]]:
        """A presigned PUT whose signature covers Content-Length and Content-Type, so
        S3 refuses a body of any other length or type (the bound on a direct upload)."""
        require_safe_key(key)
        params = {
            "Bucket": self.bucket,
            "Key": key,
            "ContentLength": size,
            "ContentType": content_type,
        }
        try:
            url = self.client.generate_presigned_url(
                "put_object", Params=params, ExpiresIn=expires_s
            )
        except (BotoCoreError, ClientError) as exc:
            raise UploadFailed(f"cannot sign an upload link ({error_code(exc)})") from exc
        return url, {"Content-Length": str(size), "Content-Type": content_type}

    def exists(self, key: str) -> bool:
        """Whether `key` is stored (a HEAD request)."""
        return self.size_of(key) is not None

    def size_of(self, key: str) -> int | None:
        """The object's size from a HEAD request, None if there is none."""
        require_safe_key(key)

        def head() -> int | None:
            try:
                answer = self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if error_code(exc) in _NOT_FOUND_CODES or _status(exc) == 404:
                    return None
                raise
            return int(answer.get("ContentLength", 0))

        return self._call("head_object", head)

    def get_file(self, key: str, dest: Path) -> int:
        """Download the object to `dest` (retried whole); `ObjectNotFound` if none."""
        require_safe_key(key)

        def download() -> int:
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if error_code(exc) in _NOT_FOUND_CODES or _status(exc) == 404:
                    raise ObjectNotFound() from exc
                raise
            with dest.open("wb") as out:  # reopened on each attempt: a retry starts over
                for chunk in answer["Body"].iter_chunks(1024 * 1024):
                    out.write(chunk)
            return dest.stat().st_size

        return self._call("get_object", download)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` (not empty); return the count."""
        if not prefix:
            raise ValueError("refusing to delete with an empty prefix")
        keys = self._call("list_objects_v2", lambda: [key for key, _ in self._list(prefix)])
        return self.delete_keys(keys)

    def delete_keys(self, keys: list[str]) -> int:
        """Delete the given keys in batches (missing ones are skipped); return the count."""
        for key in keys:
            require_safe_key(key)
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            failed = self._call("delete_objects", partial(self._delete_batch, batch))
            if failed:
                # Per-key failures inside a 200 answer: retried by the next cleanup run.
                message = f"storage could not delete {len(failed)} objects ({failed[0]})"
                if failed[0] in _THROTTLING_CODES:
                    raise StorageUnavailable(message)
                raise UploadFailed(message)
        return len(keys)

    def list_older_than(self, prefix: str, cutoff_unix: float) -> list[str]:
        """Keys under `prefix` last modified before `cutoff_unix`."""
        listed = self._call("list_objects_v2", lambda: list(self._list(prefix)))
        return sorted(key for key, modified in listed if modified < cutoff_unix)

    def remove_partial(self, cutoff_unix: float) -> int:
        """Abort multipart uploads begun before `cutoff_unix` (a worker killed mid-upload
        leaves one; its parts are billed until aborted, and no reader ever sees them)."""

        def abort_old() -> int:
            aborted = 0
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket):
                for upload in page.get("Uploads", []):
                    began = upload.get("Initiated")
                    if began is None or began.timestamp() >= cutoff_unix:
                        continue
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
            return aborted

        return self._call("abort_multipart_upload", abort_old)

    def _list(self, prefix: str) -> Iterator[tuple[str, float]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if "Key" in item and "LastModified" in item:
                    yield item["Key"], item["LastModified"].timestamp()

    def _delete_batch(self, keys: list[str]) -> list[str]:
        """Delete one batch; return the error codes of the keys that were not deleted."""
        response = self.client.delete_objects(
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
        )
        return [error.get("Code", "InternalError") for error in response.get("Errors", [])]

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        """Run `fn`, retrying transient failures; translate every botocore error."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn()
            except (BotoCoreError, ClientError) as exc:
                code = error_code(exc)
                if not is_transient(exc):
                    raise UploadFailed(f"storage refused {operation} ({code})") from exc
                if attempt == self.max_attempts:
                    get_logger(component="s3_store").warning(
                        "storage_unavailable", operation=operation, attempts=attempt, error=code
                    )
                    raise StorageUnavailable(
                        f"storage {operation} failed {attempt} times ({code})"
                    ) from exc
                delay_s = backoff_s(attempt, self.backoff_base_s, self.backoff_max_s, self._rand())
                get_logger(component="s3_store").info(
                    "storage_retry",
                    operation=operation,
                    attempt=attempt,
                    delay_s=round(delay_s, 3),
                    error=code,
                )
                self._sleep(delay_s)
        raise AssertionError("unreachable")  # the loop always returns or raises
