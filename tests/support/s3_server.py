"""A real S3 API server for tests: moto's WSGI app on 127.0.0.1, behind a presign gate.

moto (5.x) serves presigned GETs but does not check them: it ignores the signature and
the expiry and does not apply `response-content-type` / `response-content-disposition`.
Real S3 and R2 do all three, and our download links rely on them, so `PresignGate` does
what they do, written from the SigV4 specification (not with botocore's signer, which
made the URLs): it recomputes the query signature, refuses expired or tampered links,
and overrides the response headers the link asks for. Everything else is moto's.

moto's `ThreadedMotoServer` builds its WSGI app internally, so the same three lines it
runs (`make_server` + `serve_forever` in a thread) are run here around the wrapped app.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import pytest

if TYPE_CHECKING:
    from app.adapters.storage.s3 import S3Store
    from app.core.config import Settings

ACCESS_KEY_ID = "test-access-key"
SECRET_ACCESS_KEY = "test-secret-key-not-real"
REGION = "us-east-1"
#: Seconds a link's X-Amz-Date may lie in the future (S3 allows 15 minutes of skew).
MAX_FUTURE_SKEW_S = 900
_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-disposition": "Content-Disposition",
}

StartResponse = Callable[..., Any]
Environ = dict[str, Any]


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _uri_encode(value: str) -> str:
    return quote(value, safe="-_.~")


def check_presigned(
    method: str, raw_path: str, raw_query: str, headers: dict[str, str], now: float
) -> tuple[str, str] | None:
    """None if the SigV4 query-signed request is valid at `now`, else (code, message)."""
    pairs = []
    for part in raw_query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote(name), unquote(value)))
    params = dict(pairs)
    if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        return "AuthorizationQueryParametersError", "X-Amz-Algorithm must be AWS4-HMAC-SHA256"
    try:
        credential = params["X-Amz-Credential"]
        amz_date = params["X-Amz-Date"]
        expires_s = int(params["X-Amz-Expires"])
        signed_header_names = params["X-Amz-SignedHeaders"]
        signature = params["X-Amz-Signature"]
    except (KeyError, ValueError):
        return "AuthorizationQueryParametersError", "missing or malformed X-Amz-* parameter"
    access_key, _, scope = credential.partition("/")
    if access_key != ACCESS_KEY_ID:
        return "InvalidAccessKeyId", "unknown access key"
    scope_parts = scope.split("/")
    if len(scope_parts) != 4 or scope_parts[3] != "aws4_request":
        return "AuthorizationQueryParametersError", "bad credential scope"
    day, region, service, _ = scope_parts
    if not amz_date.startswith(day):
        return "AuthorizationQueryParametersError", "credential date differs from X-Amz-Date"
    names = signed_header_names.split(";")
    if "host" not in names:
        return "AuthorizationQueryParametersError", "host must be signed"
    canonical_query = "&".join(
        sorted(
            f"{_uri_encode(name)}={_uri_encode(value)}"
            for name, value in pairs
            if name != "X-Amz-Signature"
        )
    )
    canonical_headers = "".join(f"{name}:{headers.get(name, '').strip()}\n" for name in names)
    # canonical_headers ends with its own newline, hence the blank line in between.
    canonical_request = (
        f"{method}\n{raw_path}\n{canonical_query}\n"
        f"{canonical_headers}\n{signed_header_names}\nUNSIGNED-PAYLOAD"
    )
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = _hmac(f"AWS4{SECRET_ACCESS_KEY}".encode(), day)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return "SignatureDoesNotMatch", "the request signature does not match"
    signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    if not 1 <= expires_s <= 7 * 86_400:
        return "AuthorizationQueryParametersError", "X-Amz-Expires out of range"
    if now > signed_at + expires_s:
        return "AccessDenied", "Request has expired"
    if signed_at > now + MAX_FUTURE_SKEW_S:
        return "AccessDenied", "Request is not valid yet"
    return None


class PresignGate:
    """WSGI middleware: checks query-signed GET/HEAD/PUT requests the way S3 does (a
    presigned PUT signs Content-Length and Content-Type: any other value is refused)."""

    def __init__(self, app: Callable[[Environ, StartResponse], Iterable[bytes]]) -> None:
        self.app = app
        #: Added to the real time; tests move the gate's clock forward with it.
        self.clock_offset_s = 0.0
        self.refused: list[str] = []

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        raw_query = environ.get("QUERY_STRING", "")
        if "X-Amz-Signature=" not in raw_query or environ["REQUEST_METHOD"] not in (
            "GET",
            "HEAD",
            "PUT",
        ):
            return self.app(environ, start_response)
        raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
        raw_path = raw_uri.split("?", 1)[0] or quote(environ.get("PATH_INFO", "/"))
        headers = {
            name[5:].replace("_", "-").lower(): value
            for name, value in environ.items()
            if name.startswith("HTTP_")
        }
        # WSGI carries these two without the HTTP_ prefix; a presigned PUT signs them.
        for name in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            if environ.get(name):
                headers[name.replace("_", "-").lower()] = environ[name]
        now = time.time() + self.clock_offset_s
        problem = check_presigned(environ["REQUEST_METHOD"], raw_path, raw_query, headers, now)
        if problem is not None:
            code, message = problem
            self.refused.append(code)
            body = (
                f"<?xml version='1.0' encoding='UTF-8'?>"
                f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
            ).encode()
            start_response(
                "403 Forbidden",
                [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
            )
            return [body]
        overrides = {
            header: unquote(value)
            for part in raw_query.split("&")
            for name, _, value in [part.partition("=")]
            if (header := _OVERRIDES.get(unquote(name)))
        }

        def start_with_overrides(status: str, response_headers: list[Any], *rest: Any) -> Any:
            if status.startswith("200") and overrides:
                replaced = {h.lower() for h in overrides}
                response_headers = [
                    (n, v) for n, v in response_headers if n.lower() not in replaced
                ] + list(overrides.items())
            return start_response(status, response_headers, *rest)

        return self.app(environ, start_with_overrides)


@dataclass
class S3Server:
    """The running server: its endpoint and its gate."""

    endpoint_url: str
    gate: PresignGate


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 API on a free loopback port for the whole session, stopped after."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass

    gate = PresignGate(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, gate, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield S3Server(f"http://127.0.0.1:{server.server_port}", gate)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture
def s3_settings(s3_server: S3Server, settings_factory: Callable[..., Settings]) -> Settings:
    """Settings for the S3 store on the test server, with a bucket of its own."""
    s3_server.gate.clock_offset_s = 0.0
    return settings_factory(
        storage="s3",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_region=REGION,
        s3_bucket=f"test-{uuid.uuid4().hex[:16]}",
        s3_access_key_id=ACCESS_KEY_ID,
        s3_secret_access_key=SECRET_ACCESS_KEY,
        upload_max_attempts=3,
    )


@pytest.fixture
def s3_store(s3_settings: Settings) -> S3Store:
    """An `S3Store` built by `from_settings`, its bucket created, no real sleeping."""
    from app.adapters.storage.s3 import S3Store

    store = S3Store.from_settings(s3_settings)
    store.client.create_bucket(Bucket=store.bucket)
    return S3Store(store.client, store.bucket, max_attempts=3, sleep=lambda _s: None)
