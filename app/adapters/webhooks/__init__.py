"""Webhooks: Standard Webhooks signing and one delivery attempt over an injected post."""
