"""Adapters: ComfyUI, outbound URLs, object storage, webhooks and media checks."""
