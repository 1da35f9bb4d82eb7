"""Every key format's builder and parser agree, ids with ':' included."""

from __future__ import annotations

import pytest

from app.core.models import Stage
from app.store import keys


@pytest.mark.parametrize("job_id", ["job_1", "a:b:c"])
def test_job_keys_parse_back_to_their_job(job_id: str) -> None:
    assert keys.parse_terminal_key(keys.terminal_key(job_id)) == job_id
    assert keys.parse_claim_key(keys.claim_key(job_id, Stage.RENDER, 2, 3)) == job_id
    assert keys.parse_epoch_key(keys.epoch_key(job_id, "notify", 4)) == job_id
    assert keys.parse_job_owned_key(keys.claim_key(job_id, Stage.FETCH, 0, 0)) == job_id
    assert keys.parse_job_owned_key(keys.job_key(job_id)) is None
    parked = keys.parse_parked_key(keys.parked_key(12.5, job_id, Stage.NOTIFY, 1, 2))
    assert parked == keys.ParkedKey(12.5, job_id, Stage.NOTIFY, 1, 2)


def test_parked_keys_sort_in_due_order() -> None:
    later = keys.parked_key(1_700_000_010.0, "a", Stage.FETCH, 0, 0)
    sooner = keys.parked_key(999.0, "z", Stage.FETCH, 0, 0)
    assert sorted([later, sooner]) == [sooner, later]


def test_slot_sequence_and_rate_keys_parse_back() -> None:
    scope = keys.user_scope("tn_1", "user:with:colons")
    assert keys.parse_slot_key(keys.slot_key(scope, 3, 7)) == (scope, 3, 7)
    prefix = keys.index_prefix("tn_1", "u:1")
    assert keys.parse_sequence_key(keys.sequence_key(prefix, 5)) == (prefix, 5)
    assert keys.parse_sequence_key(keys.sequence_hint_key(prefix)) is None
    assert keys.parse_rate_window(keys.sequence_key(keys.rate_prefix("tn_1", 42), 0)) == 42
    assert keys.parse_rate_window(keys.sequence_hint_key(keys.rate_prefix("tn_1", 42))) == 42


def test_tenant_keys_parse_back() -> None:
    assert keys.parse_tenant_key(keys.tenant_key("tn_1")) == "tn_1"
    assert keys.parse_key_id_key(keys.key_id_key("abcd1234")) == "abcd1234"


def test_a_parser_refuses_a_key_of_another_format() -> None:
    with pytest.raises(ValueError):
        keys.parse_terminal_key(keys.job_key("j1"))
