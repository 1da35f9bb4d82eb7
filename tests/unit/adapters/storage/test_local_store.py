"""LocalStore and its signed links: verified, tamper-proof, expiring, traversal-proof."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from pydantic import SecretStr

from app.adapters.storage import LocalStore, open_store, output_key
from app.adapters.storage.signing import (
    SIGNING_KEY_FILENAME,
    load_signing_key,
    sign_path,
    verify_signature,
)
from app.core.errors import (
    ObjectNotFound,
    SignedUrlExpired,
    SignedUrlInvalid,
    StorageUnavailable,
    UploadFailed,
)
from tests.paths import REPO_ROOT
from tests.support.settings import SettingsFactory

KEY = b"k" * 32


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> LocalStore:
    return LocalStore(tmp_path / "outputs", "http://files.test:8000/", KEY, clock=clock)


def _link_parts(url: str) -> tuple[str, dict[str, str]]:
    """The key and query parameters an ingress would hand to open_signed."""
    parts = urlsplit(url)
    assert parts.path.startswith("/files/")
    key = unquote(parts.path.removeprefix("/files/"))
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    return key, query


def _open(store: LocalStore, key: str, query: dict[str, str]) -> tuple[Path, str, str]:
    return store.open_signed(
        key, query["expires"], query["sig"], query["filename"], query["content_type"]
    )


def test_put_and_open_a_signed_link(store: LocalStore, tmp_path: Path) -> None:
    # Given a stored file
    source = tmp_path / "render.png"
    source.write_bytes(b"png bytes")
    key = output_key("t1", "u 1", "job1", 0, "render.png")
    assert store.put_file(key, source, "image/png") == 9

    # When a link is made and parsed back the way the ingress does
    url = store.url(key, filename="my render.png", content_type="image/png", expires_s=600)
    link_key, query = _link_parts(url)

    # Then it points at the public URL, expires when asked, and opens the file
    assert url.startswith("http://files.test:8000/files/outputs/t1/u%25201/job1/00-render.png?")
    assert link_key == key
    assert int(query["expires"]) == 1_800_000_600
    path, content_type, filename = _open(store, link_key, query)
    assert path.read_bytes() == b"png bytes"
    assert (content_type, filename) == ("image/png", "my render.png")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda key, q: (key.replace("t1", "t2"), q),
        lambda key, q: (key, {**q, "sig": q["sig"][:-1] + ("0" if q["sig"][-1] != "0" else "1")}),
        lambda key, q: (key, {**q, "sig": q["sig"].upper()}),
        lambda key, q: (key, {**q, "sig": "é" * 64}),
        lambda key, q: (key, {**q, "expires": str(int(q["expires"]) + 1)}),
        lambda key, q: (key, {**q, "expires": q["expires"] + ".0"}),
        lambda key, q: (key, {**q, "expires": "-1"}),
        lambda key, q: (key, {**q, "filename": "evil.html"}),
        lambda key, q: (key, {**q, "content_type": "text/html"}),
    ],
)
def test_tampered_links_are_refused(
    store: LocalStore, tamper: Callable[[str, dict[str, str]], tuple[str, dict[str, str]]]
) -> None:
    key = output_key("t1", "u1", "job1", 0, "a.png")
    store.put_bytes(key, b"x", "image/png")
    other = output_key("t2", "u1", "job1", 0, "a.png")
    store.put_bytes(other, b"other tenant", "image/png")
    good_key, query = _link_parts(
        store.url(key, filename="a.png", content_type="image/png", expires_s=60)
    )
    _open(store, good_key, query)  # the untampered link works

    bad_key, bad_query = tamper(good_key, query)
    with pytest.raises(SignedUrlInvalid) as raised:
        _open(store, bad_key, bad_query)
    assert not isinstance(raised.value, SignedUrlExpired)


def test_expired_link_is_refused(store: LocalStore, clock: Clock) -> None:
    key = output_key("t1", "u1", "job1", 0, "a.png")
    store.put_bytes(key, b"x", "image/png")
    link_key, query = _link_parts(
        store.url(key, filename="a.png", content_type="image/png", expires_s=60)
    )

    clock.now += 59
    _open(store, link_key, query)
    clock.now += 1
    with pytest.raises(SignedUrlExpired):
        _open(store, link_key, query)


def test_signed_link_to_a_missing_file_is_not_found(store: LocalStore) -> None:
    key = output_key("t1", "u1", "job1", 0, "gone.png")
    link_key, query = _link_parts(
        store.url(key, filename="a.png", content_type="image/png", expires_s=60)
    )
    with pytest.raises(ObjectNotFound):
        _open(store, link_key, query)


@pytest.mark.parametrize(
    "key", ["../escape.png", "outputs/../../escape.png", "/etc/passwd", "a\\b.png", "a/.tmp/x"]
)
def test_path_traversal_is_refused(store: LocalStore, key: str) -> None:
    with pytest.raises(UploadFailed):
        store.put_bytes(key, b"x", "image/png")
    with pytest.raises(UploadFailed):
        store.url(key, filename="a", content_type="image/png", expires_s=60)
    # Even a correctly signed traversal key is refused when opened.
    expires = 1_800_000_060
    sig = sign_path(KEY, key, expires, "a", "image/png")
    with pytest.raises(SignedUrlInvalid):
        store.open_signed(key, str(expires), sig, "a", "image/png")


def test_symlink_out_of_the_root_is_refused(store: LocalStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    store.root.mkdir(parents=True)
    (store.root / "linked").symlink_to(outside)
    key = "linked/secret.txt"
    expires = 1_800_000_060
    sig = sign_path(KEY, key, expires, "s.txt", "text/plain")

    with pytest.raises(SignedUrlInvalid):
        store.open_signed(key, expires, sig, "s.txt", "text/plain")


def test_put_replaces_whole_and_leaves_no_temp_files(store: LocalStore) -> None:
    key = output_key("t1", "u1", "job1", 0, "a.png")
    store.put_bytes(key, b"first version", "image/png")
    store.put_bytes(key, b"second", "image/png")

    assert store.path_for(key).read_bytes() == b"second"
    assert list((store.root / ".tmp").iterdir()) == []


def test_a_write_cut_short_leaves_a_temp_file_that_cleanup_removes_once_old(
    store: LocalStore,
) -> None:
    # What a worker killed mid-copy leaves (drills: kill -9 of the upload holder).
    store.put_bytes(output_key("t1", "u1", "job1", 0, "a.png"), b"x", "image/png")
    old, young = store.root / ".tmp" / "4242-old", store.root / ".tmp" / "4242-young"
    old.write_bytes(b"half")
    young.write_bytes(b"in progress")
    os.utime(old, (1_000, 1_000))
    os.utime(young, (5_000, 5_000))

    assert store.remove_partial(4_000) == 1

    assert not old.exists() and young.exists()
    assert store.exists(output_key("t1", "u1", "job1", 0, "a.png"))


def test_put_file_of_a_missing_file_is_upload_failed(store: LocalStore, tmp_path: Path) -> None:
    with pytest.raises(UploadFailed):
        store.put_file(output_key("t", "u", "j", 0, "a.png"), tmp_path / "nope.png", "image/png")
    assert not store.exists(output_key("t", "u", "j", 0, "a.png"))


def test_retention_uses_file_times(store: LocalStore) -> None:
    old = output_key("t1", "u1", "old", 0, "a.png")
    new = output_key("t1", "u1", "new", 0, "a.png")
    store.put_bytes(old, b"x", "image/png")
    store.put_bytes(new, b"x", "image/png")
    os.utime(store.path_for(old), (1_000, 1_000))
    os.utime(store.path_for(new), (5_000, 5_000))

    assert store.list_older_than("outputs/", 2_000) == [old]
    assert store.list_older_than("outputs/t1/u1/new", 9_000) == [new]
    assert store.delete_keys([old]) == 1
    assert not (store.root / "outputs/t1/u1/old").exists()  # empty folders pruned


def test_verify_signature_is_pure():
    sig = sign_path(KEY, "a/b.png", 100, "b.png", "image/png")

    assert verify_signature(KEY, "a/b.png", 100, "b.png", "image/png", sig, now=99.5)
    assert not verify_signature(KEY, "a/b.png", 100, "b.png", "image/png", sig, now=100)
    assert not verify_signature(b"x" * 32, "a/b.png", 100, "b.png", "image/png", sig, now=0)
    # Field boundaries cannot be shifted: "a" + "b,c" is not "a,b" + "c".
    assert sign_path(KEY, "k", 1, "a", "b,c") != sign_path(KEY, "k", 1, "a,b", "c")


def test_configured_signing_key_is_used(tmp_path: Path) -> None:
    assert load_signing_key(SecretStr("s" * 20), tmp_path) == b"s" * 20
    assert not (tmp_path / SIGNING_KEY_FILENAME).exists()
    with pytest.raises(ValueError):
        load_signing_key(SecretStr("short"), tmp_path)


def test_generated_signing_key_is_kept_private_and_reused(tmp_path: Path) -> None:
    first = load_signing_key(SecretStr(""), tmp_path / "data")
    second = load_signing_key(SecretStr(""), tmp_path / "data")

    path = tmp_path / "data" / SIGNING_KEY_FILENAME
    assert first == second and len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [SIGNING_KEY_FILENAME]


def test_corrupt_signing_key_file_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / SIGNING_KEY_FILENAME
    path.write_text("not hex")
    with pytest.raises(ValueError, match="remove it"):
        load_signing_key(SecretStr(""), tmp_path)
    assert path.read_text() == "not hex"


def test_processes_racing_to_create_the_key_agree(tmp_path: Path) -> None:
    # Given several processes started together on an empty data folder
    script = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from pydantic import SecretStr
        from app.adapters.storage.signing import load_signing_key
        start = float(sys.argv[2])
        while time.time() < start:
            pass
        print(load_signing_key(SecretStr(""), Path(sys.argv[1])).hex())
        """
    )
    import time

    start_at = str(time.time() + 1.0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "data"), start_at],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    keys = {proc.communicate(timeout=30)[0].strip() for proc in procs}

    # Then they all use one key, the one on disk
    assert all(proc.returncode == 0 for proc in procs)
    on_disk = (tmp_path / "data" / SIGNING_KEY_FILENAME).read_text().strip()
    assert keys == {on_disk}


def test_open_store_builds_a_local_store_sharing_the_key(settings_factory: SettingsFactory) -> None:
    settings = settings_factory(public_url="http://example.test")
    first = open_store(settings)
    second = open_store(settings)
    assert isinstance(first, LocalStore) and isinstance(second, LocalStore)
    key = output_key("t", "u", "j", 0, "a.png")
    second.put_bytes(key, b"x", "image/png")

    link_key, query = _link_parts(
        first.url(key, filename="a.png", content_type="image/png", expires_s=60)
    )

    assert first.root == settings.local_store_dir
    assert _open(second, link_key, query)[0].read_bytes() == b"x"


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (errno.ENOSPC, True),
        (errno.EACCES, True),
        (errno.EPERM, True),
        (errno.EIO, True),
        (errno.ENAMETOOLONG, False),
    ],
)
def test_os_errors_while_storing_are_transient_or_permanent(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, transient: bool
) -> None:
    source = tmp_path / "out.png"
    source.write_bytes(b"png")

    def failing_copy(src: object, dst: object) -> None:
        raise OSError(code, os.strerror(code), str(tmp_path / "secret-host-path"))

    monkeypatch.setattr("app.adapters.storage.local.shutil.copyfile", failing_copy)
    expected = StorageUnavailable if transient else UploadFailed
    with pytest.raises(expected) as raised:
        store.put_file("outputs/t/u/j/00-a.png", source, "image/png")
    assert type(raised.value) is expected
    assert "secret-host-path" not in raised.value.message


def test_a_store_folder_replaced_by_a_file_is_a_transient_outage(
    store: LocalStore, tmp_path: Path
) -> None:
    # Root ignores permission bits; a folder whose mount went away, or that an operator
    # moved aside, is what a drill can do to it: storing waits for it to come back.
    source = tmp_path / "out.png"
    source.write_bytes(b"png")
    store.root.mkdir(parents=True, exist_ok=True)
    away = store.root.with_name("away")
    store.root.rename(away)
    store.root.write_text("not a folder")
    with pytest.raises(StorageUnavailable) as raised:
        store.put_file("outputs/t/u/j/00-a.png", source, "image/png")
    assert str(tmp_path) not in raised.value.message
    store.root.unlink()
    away.rename(store.root)
    assert store.put_file("outputs/t/u/j/00-a.png", source, "image/png") == 3
