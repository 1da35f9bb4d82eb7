"""What the render image and the models volume contain, pinned, and the checks that prove it.

Every pin is exact: ComfyUI and each custom node by a full 40-hex git commit, the torch
packages by `==X.Y.Z`, each model by repository, file and full Hugging Face revision SHA.
A test checks every entry's form; `verify_install` checks a built container against it
(the Modal `verify_setup` function and the local CLI run the same code).

Provenance of the pins (nothing here is guessed):

* ComfyUI `a125cd84b054a57729b5eecab930ca9408719832` ("Improve AMD performance. (#10302)",
  2025-10-12) is the commit the project's captured ComfyUI responses were taken from; its
  `comfyui_version.py` says 0.3.64. (The release commit "ComfyUI version 0.3.64" is
  `637221995f7424a561bd825de3e61ea117dfe1e3`, four days older.)
* torch 2.8.0 / torchvision 0.23.0 / torchaudio 2.8.0 are one matching release set on
  PyPI (their Linux wheels are the CUDA 12.8 builds); ComfyUI at that commit installs
  torch unpinned, so we pin it here.
* Models and third-party custom nodes: none by default. Add one only with a revision you
  have read from its source (Hugging Face "Files and versions" -> commit, or
  `huggingface_hub.HfApi().model_info(repo).sha`; `git ls-remote URL ref` for a node).
  See docs/deploy-modal.md.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_EXACT_VERSION = re.compile(r"^==\d+\.\d+\.\d+$")
_VERSION_LINE = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)

#: Where things live inside the render image and its volume.
COMFY_DIR = "/root/comfy/ComfyUI"
MODELS_DIR = "/models"
SNAPSHOT_HELPER_NAME = "snapshot_helper"

#: Model folders ComfyUI knows at the pinned commit; the volume mirrors this layout.
MODEL_FOLDERS = (
    "checkpoints",
    "clip",
    "clip_vision",
    "controlnet",
    "diffusion_models",
    "embeddings",
    "loras",
    "text_encoders",
    "unet",
    "upscale_models",
    "vae",
    "vae_approx",
)


@dataclass(frozen=True, slots=True)
class GitPin:
    """A git repository checked out at one full commit SHA."""

    name: str
    url: str
    commit: str
    #: What the pinned commit reports as its version (documentation and verify_setup).
    version: str = ""


@dataclass(frozen=True, slots=True)
class PackagePin:
    """A pip package at an exact version (`==X.Y.Z`)."""

    name: str
    spec: str

    @property
    def requirement(self) -> str:
        """The pip requirement string."""
        return f"{self.name}{self.spec}"


@dataclass(frozen=True, slots=True)
class CustomNode:
    """A third-party ComfyUI custom node, cloned into `custom_nodes/<name>`."""

    pin: GitPin
    #: Install its requirements.txt (after the torch pins, which stay fixed).
    install_requirements: bool = True


@dataclass(frozen=True, slots=True)
class ModelFile:
    """One model file from Hugging Face, stored in the volume at `<folder>/<filename>`."""

    repo_id: str
    filename: str
    revision: str
    folder: str
    #: Expected size in bytes when known; verify_setup compares it.
    size_bytes: int | None = None

    @property
    def relative_path(self) -> str:
        """Its path under the models volume."""
        return f"{self.folder}/{Path(self.filename).name}"


@dataclass(frozen=True, slots=True)
class Manifest:
    """Everything the render image and the models volume are built from."""

    comfyui: GitPin
    torch: tuple[PackagePin, ...]
    custom_nodes: tuple[CustomNode, ...] = ()
    models: tuple[ModelFile, ...] = ()
    #: Pinned tool used by `download_models` (a CPU container).
    downloader: PackagePin = field(
        default_factory=lambda: PackagePin("huggingface_hub", "==0.35.3")
    )


COMFYUI = GitPin(
    name="ComfyUI",
    url="https://github.com/Comfy-Org/ComfyUI.git",
    commit="a125cd84b054a57729b5eecab930ca9408719832",
    version="0.3.64",
)

TORCH = (
    PackagePin("torch", "==2.8.0"),
    PackagePin("torchvision", "==0.23.0"),
    PackagePin("torchaudio", "==2.8.0"),
)

MANIFEST = Manifest(comfyui=COMFYUI, torch=TORCH)


def node_set_version(manifest: Manifest = MANIFEST) -> str:
    """Names the node set a deploy renders with: ComfyUI's commit and the custom nodes.

    A node catalog published under this version stays valid for as long as the deploy
    does, however old, because the node set is pinned.
    """
    nodes = (f"{node.pin.name}@{node.pin.commit}" for node in manifest.custom_nodes)
    parts = [manifest.comfyui.commit, *nodes]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# ---- checks of the manifest itself ------------------------------------------------------


def is_full_sha(value: str) -> bool:
    """Whether `value` is a full, lower-case 40-hex git/Hugging Face commit id."""
    return bool(_FULL_SHA.fullmatch(value))


def manifest_problems(manifest: Manifest) -> list[str]:
    """Every pin that is not exact, as readable lines; empty when the manifest is sound."""
    problems: list[str] = []
    pins = [manifest.comfyui, *(node.pin for node in manifest.custom_nodes)]
    for pin in pins:
        if not is_full_sha(pin.commit):
            problems.append(f"{pin.name}: commit {pin.commit!r} is not a full 40-hex SHA")
        if not pin.url.startswith("https://"):
            problems.append(f"{pin.name}: url {pin.url!r} is not https")
    for package in (*manifest.torch, manifest.downloader):
        if not _EXACT_VERSION.fullmatch(package.spec):
            problems.append(f"{package.name}: {package.spec!r} is not an exact ==X.Y.Z pin")
    names = [node.pin.name for node in manifest.custom_nodes]
    if SNAPSHOT_HELPER_NAME in names or len(set(names)) != len(names):
        problems.append("custom node names must be unique and not shadow snapshot_helper")
    for model in manifest.models:
        if not is_full_sha(model.revision):
            problems.append(
                f"{model.repo_id}/{model.filename}: revision {model.revision!r} "
                "is not a full 40-hex SHA"
            )
        if model.folder not in MODEL_FOLDERS:
            problems.append(f"{model.repo_id}/{model.filename}: unknown folder {model.folder!r}")
    paths = [model.relative_path for model in manifest.models]
    if len(set(paths)) != len(paths):
        problems.append("two models land on the same path in the volume")
    return problems


# ---- build steps derived from the manifest ----------------------------------------------


def git_checkout_commands(pin: GitPin, dest: str) -> list[str]:
    """Shell commands that fetch exactly `pin.commit` into `dest` and prove it."""
    return [
        f"git init -q {dest}",
        f"git -C {dest} remote add origin {pin.url}",
        f"git -C {dest} fetch -q --depth 1 origin {pin.commit}",
        f"git -C {dest} checkout -q --detach FETCH_HEAD",
        f'test "$(git -C {dest} rev-parse HEAD)" = "{pin.commit}"',
    ]


def install_commands(manifest: Manifest, comfy_dir: str = COMFY_DIR) -> list[str]:
    """Build steps for the render image: ComfyUI and each custom node at their pins.

    The torch pins ride along on every `pip install`, so no requirements file can move
    torch off its exact version.
    """
    torch_pins = " ".join(package.requirement for package in manifest.torch)
    commands = git_checkout_commands(manifest.comfyui, comfy_dir)
    commands.append(f"python -m pip install -r {comfy_dir}/requirements.txt {torch_pins}")
    for node in manifest.custom_nodes:
        dest = f"{comfy_dir}/custom_nodes/{node.pin.name}"
        commands += git_checkout_commands(node.pin, dest)
        if node.install_requirements:
            commands.append(
                f"if [ -f {dest}/requirements.txt ]; then "
                f"python -m pip install -r {dest}/requirements.txt {torch_pins}; fi"
            )
    return commands


def extra_model_paths_yaml(models_dir: str = MODELS_DIR) -> str:
    """ComfyUI's extra_model_paths.yaml pointing every model folder into the volume."""
    lines = ["comfyui_saas:", f"  base_path: {models_dir}"]
    lines += [f"  {folder}: {folder}/" for folder in MODEL_FOLDERS]
    return "\n".join(lines) + "\n"


# ---- checks of an installed container (verify_setup) -------------------------------------


@dataclass(slots=True)
class ModelStatus:
    """One model file as found in the volume."""

    path: str
    present: bool
    size_bytes: int | None
    expected_size_bytes: int | None = None
    in_manifest: bool = True

    @property
    def ok(self) -> bool:
        """Present, and the right size when the size is known."""
        if not self.present:
            return not self.in_manifest
        return self.expected_size_bytes is None or self.size_bytes == self.expected_size_bytes


@dataclass(slots=True)
class NodeStatus:
    """One custom node folder as found in ComfyUI."""

    name: str
    present: bool
    commit: str | None
    expected_commit: str | None

    @property
    def ok(self) -> bool:
        """Present, and at the pinned commit when it is a git checkout of ours."""
        if not self.present:
            return False
        return self.expected_commit is None or self.commit == self.expected_commit


@dataclass(slots=True)
class SetupReport:
    """What verify_setup found; `ok` is False if anything pinned is missing or wrong."""

    comfyui_version: str | None
    comfyui_commit: str | None
    expected_commit: str
    models: list[ModelStatus]
    custom_nodes: list[NodeStatus]

    @property
    def problems(self) -> list[str]:
        """Readable lines for every mismatch."""
        found: list[str] = []
        if self.comfyui_commit != self.expected_commit:
            found.append(f"ComfyUI is at {self.comfyui_commit}, expected {self.expected_commit}")
        found += [f"model {m.path}: missing or wrong size" for m in self.models if not m.ok]
        found += [
            f"custom node {n.name}: missing or wrong commit" for n in self.custom_nodes if not n.ok
        ]
        return found

    @property
    def ok(self) -> bool:
        """Whether nothing is missing or wrong."""
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        """A JSON-able summary (what the function returns and logs)."""
        return {
            "ok": self.ok,
            "comfyui_version": self.comfyui_version,
            "comfyui_commit": self.comfyui_commit,
            "models": [
                {
                    "path": m.path,
                    "present": m.present,
                    "size_bytes": m.size_bytes,
                    "in_manifest": m.in_manifest,
                }
                for m in self.models
            ],
            "custom_nodes": [
                {"name": n.name, "present": n.present, "commit": n.commit}
                for n in self.custom_nodes
            ],
            "problems": self.problems,
        }


def git_head(repo_dir: Path) -> str | None:
    """The commit a checkout is at, read from `.git/HEAD` (detached or on a branch)."""
    git_dir = repo_dir / ".git"
    try:
        head = (git_dir / "HEAD").read_text().strip()
    except OSError:
        return None
    if head.startswith("ref: "):
        try:
            head = (git_dir / head[5:]).read_text().strip()
        except OSError:
            return None
    return head if is_full_sha(head) else None


def comfyui_version(comfy_dir: Path) -> str | None:
    """The version ComfyUI reports, from its `comfyui_version.py`."""
    try:
        match = _VERSION_LINE.search((comfy_dir / "comfyui_version.py").read_text())
    except OSError:
        return None
    return match.group(1) if match else None


def check_models(models_dir: Path, models: Sequence[ModelFile]) -> list[ModelStatus]:
    """Manifest models with their sizes, then any other files found in the volume."""
    statuses: list[ModelStatus] = []
    for model in models:
        path = models_dir / model.relative_path
        size = path.stat().st_size if path.is_file() else None
        statuses.append(ModelStatus(model.relative_path, size is not None, size, model.size_bytes))
    listed = {status.path for status in statuses}
    for path in sorted(_files_under(models_dir)):
        relative = path.relative_to(models_dir).as_posix()
        if relative not in listed:
            statuses.append(
                ModelStatus(relative, True, path.stat().st_size, None, in_manifest=False)
            )
    return statuses


def _files_under(root: Path) -> Iterable[Path]:
    if not root.is_dir():
        return []
    # Hidden entries (the downloader's .staging, .cache) are not models.
    return (
        p
        for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def check_custom_nodes(comfy_dir: Path, nodes: Sequence[CustomNode]) -> list[NodeStatus]:
    """Our snapshot helper and every pinned node, with the commit each checkout is at."""
    base = comfy_dir / "custom_nodes"
    helper = base / SNAPSHOT_HELPER_NAME
    statuses = [
        NodeStatus(SNAPSHOT_HELPER_NAME, (helper / "prestartup_script.py").is_file(), None, None)
    ]
    for node in nodes:
        folder = base / node.pin.name
        statuses.append(
            NodeStatus(node.pin.name, folder.is_dir(), git_head(folder), node.pin.commit)
        )
    return statuses


def verify_install(comfy_dir: Path, models_dir: Path, manifest: Manifest = MANIFEST) -> SetupReport:
    """Compare an installed ComfyUI and models volume with the manifest."""
    return SetupReport(
        comfyui_version=comfyui_version(comfy_dir),
        comfyui_commit=git_head(comfy_dir),
        expected_commit=manifest.comfyui.commit,
        models=check_models(models_dir, manifest.models),
        custom_nodes=check_custom_nodes(comfy_dir, manifest.custom_nodes),
    )
