"""Wiring only: the local runner and the Modal app run the same engine and stages."""
