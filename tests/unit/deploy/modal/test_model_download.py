"""Filling the models volume: fetch what is missing at its pinned revision, keep the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.deploy.modal.manifest import ModelFile
from app.deploy.modal.model_download import download_models

REV = "a125cd84b054a57729b5eecab930ca9408719832"


class FakeHub:
    """Writes `size` bytes where hf_hub_download would, and records each request."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.requests: list[tuple[str, str, str]] = []

    def __call__(self, model: ModelFile, staging: Path) -> Path:
        self.requests.append((model.repo_id, model.filename, model.revision))
        path = staging / model.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"w" * self.size)
        return path


def test_missing_files_are_fetched_and_present_ones_kept(tmp_path: Path) -> None:
    # Given: one model already in the volume, one missing
    kept = ModelFile("org/a", "a.safetensors", REV, "checkpoints", size_bytes=2)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "a.safetensors").write_bytes(b"ok")
    wanted = ModelFile("org/b", "sub/b.safetensors", REV, "vae", size_bytes=4)
    hub = FakeHub()
    # When
    report = download_models([kept, wanted], tmp_path, hub)
    # Then
    assert report.as_dict() == {
        "downloaded": ["vae/b.safetensors"],
        "present": ["checkpoints/a.safetensors"],
    }
    assert hub.requests == [("org/b", "sub/b.safetensors", REV)]
    assert (tmp_path / "vae" / "b.safetensors").read_bytes() == b"wwww"
    assert not (tmp_path / ".staging").exists()


def test_a_wrong_sized_file_is_fetched_again(tmp_path: Path) -> None:
    model = ModelFile("org/a", "a.safetensors", REV, "loras", size_bytes=4)
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "a.safetensors").write_bytes(b"old")
    report = download_models([model], tmp_path, FakeHub())
    assert report.downloaded == ["loras/a.safetensors"]


def test_a_size_mismatch_after_download_fails_and_leaves_no_file(tmp_path: Path) -> None:
    model = ModelFile("org/a", "a.safetensors", REV, "loras", size_bytes=10)
    with pytest.raises(ValueError, match="got 4 bytes"):
        download_models([model], tmp_path, FakeHub(size=4))
    assert not (tmp_path / "loras" / "a.safetensors").exists()
