"""Modal proxy auth for our own HTTP clients.

A deployment with `modal_requires_proxy_auth=true` (`@modal.asgi_app(requires_proxy_auth=
True)`) makes Modal's edge refuse every request without `Modal-Key` and `Modal-Secret`
(a proxy auth token of the workspace) before it reaches the API. The HTTP client, the
smoke checks and the CLI send them when `modal_proxy_key`/`modal_proxy_secret` are set.
The secret is a `SecretStr` and these headers are never logged or printed.
"""

from __future__ import annotations

from app.core.config import Settings

KEY_HEADER = "Modal-Key"
SECRET_HEADER = "Modal-Secret"


def proxy_auth_headers(settings: Settings) -> dict[str, str]:
    """`Modal-Key`/`Modal-Secret` when a token is configured, else nothing."""
    key = settings.modal_proxy_key
    secret = settings.modal_proxy_secret.get_secret_value()
    if not key or not secret:
        return {}
    return {KEY_HEADER: key, SECRET_HEADER: secret}
