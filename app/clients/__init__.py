"""Clients: the Python queue client, the HTTP API client and the smoke checks."""
