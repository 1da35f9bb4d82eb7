"""Outbound HTTP for user-supplied URLs: the URL policy and the SSRF-safe client."""

from __future__ import annotations
