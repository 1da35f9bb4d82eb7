"""The engine: deps, hand-off between stages, the worker loop, maintenance, job views."""
