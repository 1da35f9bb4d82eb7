"""Outbound HTTP for user-supplied URLs: the URL policy and the SSRF-safe client.

`policy` and `addresses` are pure logic; `pinned` and `safe_client` do the I/O.
"""

from __future__ import annotations

from app.adapters.net.addresses import classify_address
from app.adapters.net.policy import Target, UrlPolicy, check_addresses, parse_url
from app.adapters.net.safe_client import (
    DownloadResult,
    PostResult,
    SafeHttpClient,
    parse_retry_after,
)

__all__ = [
    "DownloadResult",
    "PostResult",
    "SafeHttpClient",
    "Target",
    "UrlPolicy",
    "check_addresses",
    "classify_address",
    "parse_retry_after",
    "parse_url",
]
