"""Pins are exact, build steps check them, and verify_install compares a tree with them."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from app.deploy.modal.manifest import (
    MANIFEST,
    MODEL_FOLDERS,
    CustomNode,
    GitPin,
    Manifest,
    ModelFile,
    PackagePin,
    extra_model_paths_yaml,
    git_checkout_commands,
    install_commands,
    is_full_sha,
    manifest_problems,
    verify_install,
)

SHA_A = "a125cd84b054a57729b5eecab930ca9408719832"
SHA_B = "637221995f7424a561bd825de3e61ea117dfe1e3"


def test_shipped_manifest_has_no_problems() -> None:
    assert manifest_problems(MANIFEST) == []


def test_every_git_and_model_pin_is_a_full_sha() -> None:
    pins = [MANIFEST.comfyui.commit, *(n.pin.commit for n in MANIFEST.custom_nodes)]
    pins += [m.revision for m in MANIFEST.models]
    assert pins, "ComfyUI at least is pinned"
    for pin in pins:
        assert re.fullmatch(r"[0-9a-f]{40}", pin), pin


def test_every_torch_package_is_an_exact_version() -> None:
    assert [p.name for p in MANIFEST.torch] == ["torch", "torchvision", "torchaudio"]
    for package in (*MANIFEST.torch, MANIFEST.downloader):
        assert re.fullmatch(r"==\d+\.\d+\.\d+", package.spec), package


@pytest.mark.parametrize(
    "value, ok",
    [(SHA_A, True), (SHA_A[:12], False), (SHA_A.upper(), False), ("v0.3.64", False), ("", False)],
)
def test_is_full_sha(value: str, ok: bool) -> None:
    assert is_full_sha(value) is ok


def test_problems_name_each_loose_pin() -> None:
    loose = Manifest(
        comfyui=GitPin("ComfyUI", "https://github.com/Comfy-Org/ComfyUI.git", "v0.3.64"),
        torch=(PackagePin("torch", ">=2.8"), PackagePin("torchvision", "==0.23")),
        custom_nodes=(CustomNode(GitPin("some-node", "http://example.com/x.git", SHA_A[:7])),),
        models=(
            ModelFile("org/model", "m.safetensors", "main", "checkpoints"),
            ModelFile("org/model", "n.safetensors", SHA_A, "nowhere"),
        ),
    )
    problems = "\n".join(manifest_problems(loose))
    for expected in (
        "ComfyUI: commit 'v0.3.64'",
        "torch: '>=2.8'",
        "torchvision: '==0.23'",
        "some-node: commit",
        "some-node: url 'http://example.com/x.git' is not https",
        "org/model/m.safetensors: revision 'main'",
        "unknown folder 'nowhere'",
    ):
        assert expected in problems


def test_node_names_may_not_shadow_the_snapshot_helper() -> None:
    shadow = dataclasses.replace(
        MANIFEST,
        custom_nodes=(CustomNode(GitPin("snapshot_helper", "https://example.com/x.git", SHA_A)),),
    )
    assert any("snapshot_helper" in p for p in manifest_problems(shadow))


def test_checkout_commands_fetch_the_exact_commit_and_prove_it() -> None:
    pin = GitPin("ComfyUI", "https://github.com/Comfy-Org/ComfyUI.git", SHA_A)
    commands = git_checkout_commands(pin, "/root/comfy/ComfyUI")
    assert f"git -C /root/comfy/ComfyUI fetch -q --depth 1 origin {SHA_A}" in commands
    assert commands[-1] == f'test "$(git -C /root/comfy/ComfyUI rev-parse HEAD)" = "{SHA_A}"'


def test_install_commands_keep_torch_pinned_for_every_requirements_file() -> None:
    node = CustomNode(GitPin("example-node", "https://example.com/n.git", SHA_B))
    commands = install_commands(dataclasses.replace(MANIFEST, custom_nodes=(node,)), "/c")
    pins = "torch==2.8.0 torchvision==0.23.0 torchaudio==2.8.0"
    pip_lines = [c for c in commands if "pip install" in c]
    assert len(pip_lines) == 2
    assert all(pins in line for line in pip_lines)
    assert f"git -C /c/custom_nodes/example-node fetch -q --depth 1 origin {SHA_B}" in commands


def test_extra_model_paths_points_every_folder_into_the_volume() -> None:
    text = extra_model_paths_yaml("/models")
    assert text.startswith("comfyui_saas:\n  base_path: /models\n")
    for folder in MODEL_FOLDERS:
        assert f"\n  {folder}: {folder}/\n" in text


def _fake_install(root: Path, commit: str, version: str = "0.3.64") -> Path:
    comfy = root / "ComfyUI"
    (comfy / ".git").mkdir(parents=True)
    (comfy / ".git" / "HEAD").write_text(commit + "\n")
    (comfy / "comfyui_version.py").write_text(f'# generated\n__version__ = "{version}"\n')
    helper = comfy / "custom_nodes" / "snapshot_helper"
    helper.mkdir(parents=True)
    (helper / "prestartup_script.py").write_text("")
    return comfy


def test_verify_install_reports_version_commit_models_and_nodes(tmp_path: Path) -> None:
    # Given: ComfyUI at the pinned commit, one listed model of the right size, one extra file
    comfy = _fake_install(tmp_path, SHA_A)
    node_dir = comfy / "custom_nodes" / "example-node" / ".git"
    node_dir.mkdir(parents=True)
    (node_dir / "HEAD").write_text("ref: refs/heads/main\n")
    (node_dir / "refs" / "heads").mkdir(parents=True)
    (node_dir / "refs" / "heads" / "main").write_text(SHA_B + "\n")
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "m.safetensors").write_bytes(b"x" * 10)
    (models / "loras").mkdir()
    (models / "loras" / "extra.safetensors").write_bytes(b"y" * 3)
    (models / ".staging").mkdir()
    (models / ".staging" / "partial").write_bytes(b"z")
    manifest = dataclasses.replace(
        MANIFEST,
        custom_nodes=(CustomNode(GitPin("example-node", "https://example.com/n.git", SHA_B)),),
        models=(ModelFile("org/m", "m.safetensors", SHA_B, "checkpoints", size_bytes=10),),
    )
    # When
    report = verify_install(comfy, models, manifest)
    # Then
    assert report.ok, report.problems
    summary = report.as_dict()
    assert summary["comfyui_version"] == "0.3.64"
    assert summary["comfyui_commit"] == SHA_A
    assert summary["models"] == [
        {
            "path": "checkpoints/m.safetensors",
            "present": True,
            "size_bytes": 10,
            "in_manifest": True,
        },
        {"path": "loras/extra.safetensors", "present": True, "size_bytes": 3, "in_manifest": False},
    ]
    custom_nodes = summary["custom_nodes"]
    assert isinstance(custom_nodes, list)
    assert [n["name"] for n in custom_nodes] == ["snapshot_helper", "example-node"]


def test_verify_install_names_what_is_wrong(tmp_path: Path) -> None:
    comfy = _fake_install(tmp_path, SHA_B)
    (comfy / "custom_nodes" / "snapshot_helper" / "prestartup_script.py").unlink()
    models = tmp_path / "models"
    (models / "vae").mkdir(parents=True)
    (models / "vae" / "v.safetensors").write_bytes(b"short")
    manifest = dataclasses.replace(
        MANIFEST,
        models=(
            ModelFile("org/v", "v.safetensors", SHA_A, "vae", size_bytes=999),
            ModelFile("org/c", "c.safetensors", SHA_A, "checkpoints"),
        ),
    )
    report = verify_install(comfy, models, manifest)
    assert not report.ok
    assert report.problems == [
        f"ComfyUI is at {SHA_B}, expected {MANIFEST.comfyui.commit}",
        "model vae/v.safetensors: missing or wrong size",
        "model checkpoints/c.safetensors: missing or wrong size",
        "custom node snapshot_helper: missing or wrong commit",
    ]


def test_verify_install_on_an_empty_machine(tmp_path: Path) -> None:
    report = verify_install(tmp_path / "none", tmp_path / "nomodels")
    assert report.comfyui_commit is None and report.comfyui_version is None
    assert not report.ok
