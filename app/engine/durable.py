"""Keep durable records alive where the store forgets idle entries (Modal Dict: 7 days).

Tenants, API key hashes, key ids, names and the tenants' webhook secrets live in the
dicts named by `app.store.keys.DURABLE_DICTS` and nowhere else. On Modal an entry
"expires after 7 days without reads or writes", so an idle tenant would lose its key
and a leaked key's `keyid:` entry (the only way to revoke it) would vanish. The Modal
app runs `refresh_durable` every `modal_durable_refresh_every_s` (a day; at most 3, so
two missed runs still fit in the 7 days).

A refresh *reads* each key, never rewrites it: a read is activity to Modal, and a
read-then-write would race an operator's revoke and could restore a revoked key.
Cost per run: one listing round trip per 100 keys plus one read per key, counted in
the report; it grows with tenants and keys, never with jobs. Idempotency records need
no refresh: one is written when its window starts and the window is at most 6 days
(`idempotency_ttl_s`). The local backend (SQLite) never expires anything; the same
function is harmless there.
"""

from __future__ import annotations

from app.core.logs import get_logger
from app.engine.deps import Deps
from app.store.keys import DURABLE_DICTS

#: Modal lists dict keys in pages of this many (one round trip each).
LISTING_PAGE = 100


def refresh_durable(deps: Deps) -> dict[str, int]:
    """Read every durable record once; returns how many and the round trips it cost."""
    touched = 0
    listing_rpcs = 0
    for name in DURABLE_DICTS:
        kv = deps.kv(name)
        keys = list(kv.keys())
        listing_rpcs += 1 + len(keys) // LISTING_PAGE
        for key in keys:
            if kv.get(key) is not None:
                touched += 1
    report = {"dicts": len(DURABLE_DICTS), "touched": touched, "rpcs": listing_rpcs + touched}
    get_logger().info("durable_refreshed", **report)
    return report
