"""Tenants, their API keys and webhook secrets.

Keys are `csk_<key id>_<secret>`: the key id is a short visible prefix that identifies the
key in listings and logs; the secret carries 190 random bits. Only a SHA-256 of the whole
key is stored, looked up by that hash and compared in constant time. A tenant may hold
several keys. The tenant always comes from the key, never from a request body.

Where each lookup is a round trip (Modal), a registry may remember a key's tenant for
`cache_ttl_s` (the `auth_cache_ttl_s` setting, at most 60 s): a revoked key, a disabled
tenant or a changed limit then takes effect in every container within that bound, and
at once in the container that made the change. Locally nothing is cached.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field

from app.core.config import Settings
from app.core.errors import (
    TenantError,
)
from app.core.models import Record
from app.core.webhook_secret import new_webhook_secret
from app.store.backends.base import KV, Backend
from app.store.jobs import Limits
from app.store.keys import (
    KEY_ID_PREFIX,
    TENANT_PREFIX,
    TENANTS_DICT,
    key_hash_key,
    key_id_key,
    parse_key_id_key,
    parse_tenant_key,
    tenant_key,
    tenant_name_key,
)

KEY_PREFIX = "csk_"
_KEY_SHAPE = re.compile(r"^csk_([a-z0-9]{8})_([A-Za-z0-9_-]{32})$")
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
#: The most keys one container remembers; past it the cache starts again (a bound on
#: memory, not on staleness: the TTL bounds that).
AUTH_CACHE_MAX = 10_000


class Tenant(Record):
    """A customer of the service. Limits left as None follow the settings' defaults."""

    id: str
    name: str
    created_at: float
    max_active_jobs_per_user: int | None = Field(default=None, ge=1)
    max_active_jobs: int | None = Field(default=None, ge=0)
    rate_per_minute: int | None = Field(default=None, ge=0)
    #: Standard Webhooks secrets; the first signs, all are sent during a rotation.
    webhook_secrets: list[str] = Field(default_factory=list)
    disabled: bool = False
    #: Its callers may run registered templates only, never raw graphs (recommended).
    templates_only: bool = False

    def limits(self, settings: Settings) -> Limits:
        """The admission limits in force for this tenant."""
        return Limits(
            max_active_per_user=self.max_active_jobs_per_user or settings.max_active_jobs_per_user,
            max_active_per_tenant=(
                settings.max_active_jobs_per_tenant
                if self.max_active_jobs is None
                else self.max_active_jobs
            ),
            rate_per_minute=(
                settings.rate_limit_per_minute
                if self.rate_per_minute is None
                else self.rate_per_minute
            ),
            cap_retry_after_s=settings.cap_retry_after_s,
        )


class ApiKey(Record):
    """A stored API key: its hash and visible id, never the key itself."""

    key_id: str
    tenant_id: str
    key_hash: str
    created_at: float
    revoked_at: float | None = None

    @property
    def display(self) -> str:
        return f"{KEY_PREFIX}{self.key_id}_…"


@dataclass(frozen=True, slots=True)
class NewTenant:
    """What `create` returns: the secrets are shown once and never stored in clear."""

    tenant: Tenant
    api_key: str
    webhook_secret: str


def new_api_key() -> tuple[str, str]:
    """A fresh key and its visible id."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    key_id = "".join(secrets.choice(alphabet) for _ in range(8))
    secret = secrets.token_urlsafe(24)  # 32 characters, 192 bits
    return f"{KEY_PREFIX}{key_id}_{secret}", key_id


def hash_key(api_key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(api_key.encode()).hexdigest()


class TenantRegistry:
    """Tenants and keys in the `tenants` dict."""

    def __init__(
        self, backend: Backend, clock: Callable[[], float], cache_ttl_s: float = 0.0
    ) -> None:
        self.kv: KV = backend.kv(TENANTS_DICT)
        self.clock = clock
        self.cache_ttl_s = cache_ttl_s
        #: key hash -> (valid until, tenant); only keys that authenticated are kept.
        self._cache: dict[str, tuple[float, Tenant]] = {}
        self._cache_lock = threading.Lock()

    def forget(self) -> None:
        """Drop every remembered key (after a change made through this registry)."""
        with self._cache_lock:
            self._cache.clear()

    def create(
        self,
        name: str,
        *,
        max_active_jobs_per_user: int | None = None,
        max_active_jobs: int | None = None,
        rate_per_minute: int | None = None,
    ) -> NewTenant:
        """Create a tenant with one API key and one webhook secret."""
        if not TENANT_NAME.fullmatch(name):
            raise TenantError(
                "tenant name must be 1-63 lowercase letters, digits or '-', "
                "starting with a letter or digit"
            )
        tenant_id = "tn_" + secrets.token_hex(8)
        if not self.kv.put_if_absent(tenant_name_key(name), tenant_id):
            raise TenantError(f"a tenant named {name!r} already exists")
        tenant = Tenant(
            id=tenant_id,
            name=name,
            created_at=self.clock(),
            max_active_jobs_per_user=max_active_jobs_per_user,
            max_active_jobs=max_active_jobs,
            rate_per_minute=rate_per_minute,
            webhook_secrets=[new_webhook_secret()],
        )
        self.save(tenant)
        api_key = self.add_key(tenant_id)
        return NewTenant(tenant=tenant, api_key=api_key, webhook_secret=tenant.webhook_secrets[0])

    def save(self, tenant: Tenant) -> None:
        """Write a tenant record (operator commands only)."""
        self.kv.put(tenant_key(tenant.id), tenant.model_dump_json())
        self.forget()

    def get(self, tenant_id: str) -> Tenant | None:
        raw = self.kv.get(tenant_key(tenant_id))
        return None if raw is None else Tenant.model_validate_json(raw)

    def resolve(self, name_or_id: str) -> Tenant:
        """A tenant by id or by name; raises `TenantError` if unknown."""
        tenant_id = self.kv.get(tenant_name_key(name_or_id)) or name_or_id
        tenant = self.get(tenant_id)
        if tenant is None:
            raise TenantError(f"no tenant {name_or_id!r}")
        return tenant

    def all(self) -> list[Tenant]:
        """Every tenant, by name (an operator listing; scans the tenants dict)."""
        found = [self.get(parse_tenant_key(key)) for key in self.kv.keys(TENANT_PREFIX)]
        return sorted((t for t in found if t is not None), key=lambda t: t.name)

    def update(self, name_or_id: str, **changes: object) -> Tenant:
        """Change a tenant's limits or flags."""
        tenant = self.resolve(name_or_id)
        updated = Tenant.model_validate({**tenant.model_dump(), **changes})
        self.save(updated)
        return updated

    def rotate_webhook_secret(self, name_or_id: str) -> tuple[Tenant, str]:
        """Add a new signing secret in front; the old one keeps signing alongside it."""
        tenant = self.resolve(name_or_id)
        secret = new_webhook_secret()
        return self.update(tenant.id, webhook_secrets=[secret, *tenant.webhook_secrets[:1]]), secret

    def add_key(self, name_or_id: str) -> str:
        """A new API key for the tenant, returned once."""
        tenant = self.resolve(name_or_id)
        api_key, key_id = new_api_key()
        record = ApiKey(
            key_id=key_id,
            tenant_id=tenant.id,
            key_hash=hash_key(api_key),
            created_at=self.clock(),
        )
        if not self.kv.put_if_absent(key_id_key(key_id), record.model_dump_json()):
            raise TenantError("key id collision; try again")
        self.kv.put(key_hash_key(record.key_hash), record.model_dump_json())
        return api_key

    def keys_of(self, name_or_id: str) -> list[ApiKey]:
        """The tenant's keys (revoked ones included), oldest first."""
        tenant = self.resolve(name_or_id)
        records = [self._key_by_id(parse_key_id_key(k)) for k in self.kv.keys(KEY_ID_PREFIX)]
        mine = [r for r in records if r is not None and r.tenant_id == tenant.id]
        return sorted(mine, key=lambda r: r.created_at)

    def revoke_key(self, name_or_id: str, key_id: str) -> ApiKey:
        """Revoke one key at once."""
        tenant = self.resolve(name_or_id)
        record = self._key_by_id(key_id.removeprefix(KEY_PREFIX).rstrip("_…"))
        if record is None or record.tenant_id != tenant.id:
            raise TenantError(f"tenant {tenant.name!r} has no key {key_id!r}")
        revoked = record.model_copy(update={"revoked_at": self.clock()})
        self.kv.put(key_hash_key(record.key_hash), revoked.model_dump_json())
        self.kv.put(key_id_key(record.key_id), revoked.model_dump_json())
        self.forget()
        return revoked

    def _key_by_id(self, key_id: str) -> ApiKey | None:
        raw = self.kv.get(key_id_key(key_id))
        return None if raw is None else ApiKey.model_validate_json(raw)

    def authenticate(self, api_key: str) -> Tenant | None:
        """The tenant owning a valid, unrevoked key, or None (see the module docstring
        for how long a remembered answer may be used)."""
        if not _KEY_SHAPE.fullmatch(api_key):
            return None
        digest = hash_key(api_key)
        if self.cache_ttl_s <= 0:
            return self._lookup(digest)
        now = self.clock()
        with self._cache_lock:
            hit = self._cache.get(digest)
        if hit is not None and now < hit[0]:
            return hit[1]
        tenant = self._lookup(digest)
        with self._cache_lock:
            if tenant is None:
                self._cache.pop(digest, None)
            else:
                if len(self._cache) >= AUTH_CACHE_MAX:
                    self._cache.clear()
                self._cache[digest] = (now + self.cache_ttl_s, tenant)
        return tenant

    def _lookup(self, digest: str) -> Tenant | None:
        raw = self.kv.get(key_hash_key(digest))
        if raw is None:
            return None
        record = ApiKey.model_validate_json(raw)
        if not hmac.compare_digest(record.key_hash, digest) or record.revoked_at is not None:
            return None
        tenant = self.get(record.tenant_id)
        if tenant is None or tenant.disabled:
            return None
        return tenant
