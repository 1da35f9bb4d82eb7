"""The node catalog and its publication in the state dict."""

from __future__ import annotations

import json

from app.adapters.comfy.catalog import CATALOG_KEY, NodeCatalog, load, publish
from app.store.backends.memory import MemoryKV
from tests.paths import FIXTURES

OBJECT_INFO = json.loads((FIXTURES / "object_info.json").read_text())


def test_catalog_from_object_info():
    catalog = NodeCatalog.from_object_info(OBJECT_INFO)

    assert len(catalog) == len(OBJECT_INFO)
    assert "SaveImage" in catalog and "KSampler" not in catalog
    assert catalog.is_output("SaveImage") and catalog.is_output("PreviewAny")
    assert not catalog.is_output("EmptyImage") and not catalog.is_output("Nope")
    assert catalog.output_count("LoadImage") == 2
    assert catalog.output_count("SaveImage") == 0
    spec = catalog.get("EmptyImage")
    assert spec is not None and spec.required_inputs == ("width", "height", "batch_size", "color")


def test_malformed_entries_are_skipped():
    catalog = NodeCatalog.from_object_info({"A": "nonsense", "B": {"output": "x", "input": 3}})

    assert list(catalog) == ["B"]
    assert catalog.output_count("B") == 0


def test_publish_then_load_round_trips():
    kv = MemoryKV()

    published = publish(kv, OBJECT_INFO, now=1000.0)
    loaded = load(kv, max_age_s=60, now=1059.0)

    assert loaded is not None
    assert sorted(loaded) == sorted(published)
    assert loaded.get("ImageBlend") == published.get("ImageBlend")
    assert len(kv.get(CATALOG_KEY) or "") < len(json.dumps(OBJECT_INFO)) / 2


def test_stale_missing_or_unreadable_catalog_is_none():
    kv = MemoryKV()
    assert load(kv, max_age_s=60, now=0) is None

    publish(kv, OBJECT_INFO, now=1000.0)
    assert load(kv, max_age_s=60, now=1061.0) is None

    kv.put(CATALOG_KEY, "{not json")
    assert load(kv, max_age_s=60, now=1000.0) is None

    kv.put(CATALOG_KEY, json.dumps({"format": 99, "published_at": 1000.0, "nodes": {}}))
    assert load(kv, max_age_s=60, now=1000.0) is None


def test_a_catalog_of_the_same_pinned_node_set_never_expires() -> None:
    from app.adapters.comfy import catalog
    from app.store.backends.memory import MemoryKV

    kv = MemoryKV()
    info = {"SaveImage": {"input": {"required": {}}, "output": [], "output_node": True}}
    catalog.publish(kv, info, now=0.0, version="deploy-a")
    assert catalog.load(kv, max_age_s=60, now=10_000) is None
    assert catalog.load(kv, max_age_s=60, now=10_000, version="deploy-b") is None
    same = catalog.load(kv, max_age_s=60, now=10_000, version="deploy-a")
    assert same is not None and same.is_output("SaveImage")


def test_node_set_version_follows_the_pins() -> None:
    from dataclasses import replace

    from app.deploy.modal.manifest import MANIFEST, node_set_version

    moved = replace(MANIFEST, comfyui=replace(MANIFEST.comfyui, commit="0" * 40))
    assert node_set_version(MANIFEST) == node_set_version(MANIFEST)
    assert node_set_version(moved) != node_set_version(MANIFEST)


def test_a_published_catalog_is_parsed_once_until_the_next_publication() -> None:
    # Given a published catalog read by two admissions
    kv = MemoryKV()
    publish(kv, OBJECT_INFO, now=1000.0)
    first = load(kv, max_age_s=60, now=1001.0)
    second = load(kv, max_age_s=60, now=1002.0)
    # Then the second got the already parsed catalog, and its age was still checked
    assert first is not None and second is first
    assert load(kv, max_age_s=60, now=1061.0) is None
    # When a new catalog is published (another node set), it is parsed afresh
    smaller = {name: OBJECT_INFO[name] for name in list(OBJECT_INFO)[:3]}
    publish(kv, smaller, now=1003.0)
    third = load(kv, max_age_s=60, now=1004.0)
    assert third is not None and third is not first and len(third) == 3
