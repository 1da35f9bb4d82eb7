"""Core: settings, models, request/response schemas, the error tree and logging; no I/O."""
