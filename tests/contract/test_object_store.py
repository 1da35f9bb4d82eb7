"""One contract for every ObjectStore: memory, local folder, and S3 (moto on loopback)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.adapters.storage import LocalStore, MemoryStore, ObjectStore, job_prefix, output_key
from app.core.errors import PipelineError, UploadFailed


@pytest.fixture(params=["memory", "local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "memory":
        return MemoryStore()
    if request.param == "local":
        return LocalStore(tmp_path / "store", "http://127.0.0.1:8000", b"k" * 32)
    s3_store: ObjectStore = request.getfixturevalue("s3_store")
    return s3_store


def test_put_bytes_then_exists(store: ObjectStore) -> None:
    key = output_key("t", "u", "j", 0, "a.png")
    assert not store.exists(key)

    assert store.put_bytes(key, b"12345", "image/png") == 5

    assert store.exists(key)


def test_put_file_returns_its_size(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(bytes(range(256)) * 40)

    assert store.put_file(output_key("t", "u", "j", 1, "in.bin"), source, "application/x") == 10240


def test_put_is_idempotent(store: ObjectStore) -> None:
    key = output_key("t", "u", "j", 0, "a.png")
    store.put_bytes(key, b"one", "image/png")
    store.put_bytes(key, b"three", "image/png")

    assert store.list_older_than(job_prefix("t", "u", "j"), time.time() + 60) == [key]


def test_delete_prefix_is_scoped_to_one_job(store: ObjectStore) -> None:
    mine = [output_key("t", "u", "job1", i, "a.png") for i in range(3)]
    theirs = output_key("t", "u", "job10", 0, "a.png")
    for key in [*mine, theirs]:
        store.put_bytes(key, b"x", "image/png")

    assert store.delete_prefix(job_prefix("t", "u", "job1")) == 3

    assert not any(store.exists(key) for key in mine)
    assert store.exists(theirs)


def test_delete_prefix_refuses_an_empty_prefix(store: ObjectStore) -> None:
    with pytest.raises(ValueError):
        store.delete_prefix("")


def test_delete_keys_skips_missing_ones(store: ObjectStore) -> None:
    key = output_key("t", "u", "j", 0, "a.png")
    store.put_bytes(key, b"x", "image/png")

    assert store.delete_keys([key, output_key("t", "u", "j", 9, "never.png")]) == 2
    assert not store.exists(key)


def test_list_older_than(store: ObjectStore) -> None:
    keys = sorted(output_key("t", "u", "j", i, "a.png") for i in range(2))
    for key in keys:
        store.put_bytes(key, b"x", "image/png")

    assert store.list_older_than("outputs/t/", time.time() - 3600) == []
    assert store.list_older_than("outputs/t/", time.time() + 3600) == keys
    assert store.list_older_than("outputs/other/", time.time() + 3600) == []


@pytest.mark.parametrize("key", ["../outside.png", "/abs.png", "a\\b.png", "a//b.png"])
def test_unsafe_keys_are_refused_as_upload_failed(store: ObjectStore, key: str) -> None:
    with pytest.raises(UploadFailed):
        store.put_bytes(key, b"x", "image/png")
    with pytest.raises(UploadFailed):
        store.url(key, filename="a.png", content_type="image/png", expires_s=60)
    with pytest.raises(UploadFailed):
        store.exists(key)
    with pytest.raises(UploadFailed):
        store.delete_keys([key])


def test_url_is_signed_fresh_and_names_the_key(store: ObjectStore) -> None:
    key = output_key("t", "u", "j", 0, "a.png")
    store.put_bytes(key, b"x", "image/png")

    url = store.url(key, filename="a.png", content_type="image/png", expires_s=60)

    assert "outputs/t/u/j/00-a.png" in url
    assert "expires" in url.lower()


def test_errors_are_pipeline_errors(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(PipelineError):
        store.put_file(output_key("t", "u", "j", 0, "a.png"), tmp_path / "missing", "image/png")


def test_size_of_and_get_file(store: ObjectStore, tmp_path: Path) -> None:
    from app.adapters.storage import upload_object_key
    from app.core.errors import ObjectNotFound

    key = upload_object_key("t", "u", "upl_1")
    assert store.size_of(key) is None
    with pytest.raises(ObjectNotFound):
        store.get_file(key, tmp_path / "missing")
    store.put_bytes(key, b"abcdef", "image/png")

    assert store.size_of(key) == 6
    assert store.get_file(key, tmp_path / "got") == 6
    assert (tmp_path / "got").read_bytes() == b"abcdef"


def test_removing_partial_writes_never_touches_a_stored_object(store: ObjectStore) -> None:
    key = output_key("t", "u", "j", 0, "a.png")
    store.put_bytes(key, b"x", "image/png")

    assert store.remove_partial(time.time() + 3600) == 0  # a finished write leaves nothing

    assert store.exists(key)
