"""TemplateStore: immutable numbered versions, a movable latest, durable across restarts."""

from __future__ import annotations

from pathlib import Path

from app.core.templates import Template
from app.store.backends.memory import MemoryBackend
from app.store.backends.sqlite import SqliteBackend
from app.store.jobs import JobStore
from app.store.keys import JOB_DICTS, TEMPLATES_DICT
from app.store.templates import TemplateStore


def make(store: TemplateStore, tenant: str = "tn_1", name: str = "portrait") -> Template:
    template = Template(
        tenant_id=tenant,
        name=name,
        version=store.next_version(tenant, name),
        workflow={"1": {"class_type": "EmptyImage", "inputs": {}}},
        inputs={},
        created_at=1.0,
    )
    store.add(template, make_latest=True)
    return template


def test_versions_count_up_per_name_and_tenant() -> None:
    store = TemplateStore(MemoryBackend())
    assert [make(store).version for _ in range(3)] == [1, 2, 3]
    assert make(store, name="logo").version == 1
    assert make(store, tenant="tn_2").version == 1
    assert store.names("tn_1") == ["portrait", "logo"]
    assert store.names("tn_2") == ["portrait"]
    assert store.latest_version("tn_1", "portrait") == 3


def test_a_deleted_number_is_never_handed_out_again() -> None:
    store = TemplateStore(MemoryBackend())
    make(store)
    make(store)
    assert store.delete("tn_1", "portrait", 2)
    assert store.latest_version("tn_1", "portrait") == 1  # latest fell back
    assert store.get("tn_1", "portrait", 2) is None
    assert make(store).version == 3
    assert not store.delete("tn_1", "portrait", 2)
    assert store.delete_all("tn_1", "portrait") == 2
    assert store.get("tn_1", "portrait") is None
    assert make(store).version == 4


def test_templates_survive_a_restart_and_live_in_their_own_dict(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    first = SqliteBackend(db)
    made = make(TemplateStore(first))
    first.close()
    again = TemplateStore(SqliteBackend(db))
    assert again.get("tn_1", "portrait") == made
    assert again.names("tn_1") == ["portrait"]
    # Job retention never touches them: their dict is not one a job writes to
    assert TEMPLATES_DICT not in JOB_DICTS
    JobStore(SqliteBackend(db), lambda: 0.0)  # opening the job store changes nothing
    assert again.get("tn_1", "portrait", 1) == made
