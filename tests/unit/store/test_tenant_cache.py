"""Remembered API keys: per container, for a bounded time, never past a revoke's bound."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.core.config import Settings
from app.engine.deps import Deps
from app.store.backends.memory import MemoryBackend
from app.store.tenants import TenantRegistry
from tests.state_helpers import FakeClock

TTL_S = 30.0


def containers() -> tuple[FakeClock, TenantRegistry, TenantRegistry]:
    """Two containers' registries over one store, remembering keys for `TTL_S`."""
    clock, backend = FakeClock(), MemoryBackend()
    return (
        clock,
        TenantRegistry(backend, clock, cache_ttl_s=TTL_S),
        TenantRegistry(backend, clock, cache_ttl_s=TTL_S),
    )


class CountingBackend(MemoryBackend):
    """Counts reads of the tenants dict."""

    reads = 0

    def kv(self, name: str):  # type: ignore[no-untyped-def]
        inner = super().kv(name)
        outer = self

        class Counting:
            def __getattr__(self, attr: str) -> object:
                if attr == "get":
                    outer.reads += 1
                return getattr(inner, attr)

        return Counting()


def test_a_warm_container_authenticates_without_reading_the_store() -> None:
    clock, backend = FakeClock(), CountingBackend()
    registry = TenantRegistry(backend, clock, cache_ttl_s=TTL_S)
    key = registry.create("acme").api_key
    assert registry.authenticate(key) is not None
    before = backend.reads
    assert registry.authenticate(key) is not None
    assert backend.reads == before


def test_a_key_revoked_elsewhere_stops_working_within_the_bound() -> None:
    clock, ingress, operator = containers()
    key = operator.create("acme").api_key
    assert ingress.authenticate(key) is not None  # remembered from now
    operator.revoke_key("acme", key.split("_")[1])
    clock.advance(TTL_S - 1)
    assert ingress.authenticate(key) is not None  # still inside the documented bound
    clock.advance(1)
    assert ingress.authenticate(key) is None


def test_a_revoke_made_in_the_same_container_takes_effect_at_once() -> None:
    _clock, registry, _other = containers()
    key = registry.create("acme").api_key
    assert registry.authenticate(key) is not None
    registry.revoke_key("acme", key.split("_")[1])
    assert registry.authenticate(key) is None


def test_a_disabled_tenant_is_refused_within_the_bound() -> None:
    clock, ingress, operator = containers()
    key = operator.create("acme").api_key
    assert ingress.authenticate(key) is not None
    operator.update("acme", disabled=True)
    clock.advance(TTL_S)
    assert ingress.authenticate(key) is None


def test_the_bound_is_at_most_60_s() -> None:
    with pytest.raises(ValidationError):
        Settings(auth_cache_ttl_s=61)


def test_only_round_trip_backends_remember_keys() -> None:
    local = Deps(settings=Settings(auth_cache_ttl_s=TTL_S), backend=MemoryBackend())
    assert local.tenants.cache_ttl_s == 0.0

    class RoundTrips(MemoryBackend):
        concurrent_calls = True

    remote = Deps(settings=Settings(auth_cache_ttl_s=TTL_S), backend=RoundTrips())
    assert remote.tenants.cache_ttl_s == TTL_S
