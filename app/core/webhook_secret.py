"""The format of a webhook endpoint secret, as Standard Webhooks defines it.

Minted by the tenant registry (store) and read by the signer (adapters), so it lives
below both.
"""

from __future__ import annotations

import base64
import secrets

#: Standard Webhooks' prefix for a symmetric endpoint secret.
SECRET_PREFIX = "whsec_"
#: 32 random bytes: the spec asks for between 24 and 64.
SECRET_BYTES = 32


def new_webhook_secret() -> str:
    """A new endpoint secret: `whsec_` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()
