"""Durable records outlive Modal Dict's 7-day idle expiry (issue 9: "Tenants disappear").

The emulator expires a Dict entry 7 days after its last read or write (modal 1.6.4
`dict.py:265`); a month passes with an idle tenant and the scheduled refresh running.
"""

from __future__ import annotations

from pathlib import Path

import modal
import pytest
from pydantic import ValidationError

from app.core.config import Settings
from app.engine.durable import refresh_durable
from app.store.keys import DURABLE_DICTS, TENANTS_DICT, key_id_key, tenant_name_key
from tests.integration.deploy.modal_runtime.conftest import Deployment, make_deps
from tests.modal_emulator import ModalEmulator

DAY = 86_400


def _state(deployment: Deployment) -> dict[str, bool]:
    # A fresh process's view (no cached handles), as an API container after scale-to-zero.
    deps = make_deps(deployment.emu, deployment.deps.settings)
    tenants = deps.tenants
    new = deployment.tenant
    key_id = new.api_key.split("_")[1]  # csk_<key id>_<secret>
    tenant = tenants.get(new.tenant.id)
    kv = deps.kv(TENANTS_DICT)
    return {
        "tenant": tenant is not None,
        "key": tenants.authenticate(new.api_key) is not None,
        "keyid": kv.contains(key_id_key(key_id)),
        "name": kv.contains(tenant_name_key(new.tenant.name)),
        "secret": tenant is not None and tenant.webhook_secrets == [new.webhook_secret],
    }


def _month(deployment: Deployment, *, refresh: bool) -> None:
    emu = deployment.emu
    if refresh:
        every = deployment.deps.settings.modal_durable_refresh_every_s
        emu.function(
            "refresh_durable",
            lambda: refresh_durable(deployment.deps),
            schedule=modal.Period(seconds=every),
        )
    emu.advance(30 * DAY)


def test_an_idle_tenant_survives_a_month_with_the_scheduled_refresh(
    deployment: Deployment,
) -> None:
    _month(deployment, refresh=True)
    assert _state(deployment) == dict.fromkeys(("tenant", "key", "keyid", "name", "secret"), True)


def test_without_the_refresh_the_month_would_lose_them(deployment: Deployment) -> None:
    _month(deployment, refresh=False)
    assert _state(deployment) == dict.fromkeys(("tenant", "key", "keyid", "name", "secret"), False)


def test_the_refresh_reads_only_durable_records_and_counts_its_cost(
    deployment: Deployment, emu: ModalEmulator
) -> None:
    deployment.deps.jobs.jobs.put("job:x", "{}")  # job history is never scanned
    with emu.ledger.step("refresh"):
        report = refresh_durable(deployment.deps)
    # tenant:, name:, keyid:, key: of the one tenant.
    assert report["touched"] == 4
    calls = emu.ledger.by_op(step="refresh")
    assert all(name.endswith(tuple("-" + n for n in DURABLE_DICTS)) for (_kind, name, _op) in calls)
    assert report["rpcs"] + 1 == emu.ledger.count(step="refresh")  # +1: the handle's lookup


def test_idempotency_windows_fit_inside_the_expiry(tmp_path: Path) -> None:
    Settings(data_dir=tmp_path, idempotency_ttl_s=6 * DAY)
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, idempotency_ttl_s=7 * DAY)
