"""Which files a tenant's workflow may name on the shared ComfyUI host (pure).

ComfyUI resolves a loader's file name itself: `LoadImage` accepts any existing file under
its input folder (sub-folders of other jobs included), an absolute path, `../` or an
`[output]` annotation, so a caller's string there reads what other tenants uploaded or
rendered, and files on the host. So every file-name input is checked here, at submit:

* an **upload input** (an input the catalog flags `image_upload`, `audio_upload`,
  `video_upload`, `file_upload` or with an `image_folder`: `LoadImage`, `LoadImageMask`,
  `LoadAudio`, `LoadVideo`, `Load3D`, ...) may name only one of the job's own inputs
  (render binds that name to the job's private copy);
* a **file list input** (a list of choices that are file names: model loaders) may name a
  job input or one of the names the server listed;
* a file-name input must be a literal: a link (a `PrimitiveString`, a custom node's string)
  would hand ComfyUI a value nobody checked;
* absolute paths, drive letters, `~`, `..`, backslashes, control characters and the
  `[input]`/`[output]`/`[temp]` annotations are refused everywhere, naming the node, its
  class and the input.

Without a catalog the core upload inputs below are still checked. Outputs are the other
half: `scope_prefixes` puts every `filename_prefix`, literal or link, under the job's
folder (a link is replaced by a literal, so nothing upstream chooses where files go).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Collection, Mapping
from typing import Any

from app.adapters.comfy.catalog import FileInput, NodeCatalog
from app.core.errors import InvalidWorkflow

__all__ = ["KNOWN_UPLOADS", "check_file_names", "file_name_problem", "scope_prefixes"]

#: Upload inputs of ComfyUI's own loaders, checked even when no catalog is known.
KNOWN_UPLOADS: Mapping[str, frozenset[str]] = {
    "LoadImage": frozenset({"image"}),
    "LoadImageMask": frozenset({"image"}),
    "LoadImageOutput": frozenset({"image"}),
    "WebcamCapture": frozenset({"image"}),
    "LoadAudio": frozenset({"audio"}),
    "LoadVideo": frozenset({"file"}),
    "Load3D": frozenset({"model_file"}),
    "Load3DAnimation": frozenset({"model_file"}),
}
#: The input that names where an output node saves (SaveImage and its kind).
PREFIX_INPUT = "filename_prefix"
_UPLOAD = FileInput(upload=True)
_MAX_PROBLEMS = 8
_ANNOTATION = re.compile(r"\[[A-Za-z]*\]\s*\Z")
_PREFIX_UNSAFE = re.compile(r"[^A-Za-z0-9 ._%-]+")


def file_name_problem(value: str) -> str | None:
    """Why `value` cannot be a file name a caller chooses, or None if its form is fine."""
    if not value.strip():
        return "is empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains a control character"
    if "\\" in value:
        return "contains a backslash"
    if value.startswith(("/", "~")) or (
        value[1:2] == ":" and value[:1].isascii() and value[:1].isalpha()
    ):
        return "is an absolute path"
    if ".." in value.split("/"):
        return "contains '..'"
    if _ANNOTATION.search(value):
        return "carries a folder annotation such as [input] or [output]"
    return None


def check_file_names(
    graph: Mapping[str, Any], catalog: NodeCatalog | None, input_names: Collection[str]
) -> None:
    """Raise `InvalidWorkflow` unless every file-name input names a file the job may read."""
    names = frozenset(input_names)
    problems: list[str] = []
    for node_id, node in graph.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("inputs"), Mapping):
            continue
        class_type = str(node.get("class_type"))
        files = _file_inputs(class_type, catalog)
        for key, value in node["inputs"].items():
            spec = files.get(key)
            if spec is None:
                continue
            where = f"node {node_id} ({class_type}) input '{key}'"
            problem = _value_problem(value, spec, names)
            if problem:
                problems.append(f"{where} {problem}")
    if problems:
        shown = problems[:_MAX_PROBLEMS]
        more = len(problems) - len(shown)
        raise InvalidWorkflow("; ".join(shown) + (f"; and {more} more problems" if more else ""))


def _file_inputs(class_type: str, catalog: NodeCatalog | None) -> Mapping[str, FileInput]:
    known = {key: _UPLOAD for key in KNOWN_UPLOADS.get(class_type, ())}
    spec = catalog.get(class_type) if catalog is not None else None
    return {**known, **spec.file_inputs} if spec is not None else known


def _value_problem(value: object, spec: FileInput, names: frozenset[str]) -> str | None:
    if isinstance(value, list):
        return "must be a file name written in the workflow, not a link from another node"
    if not isinstance(value, str):
        return "must be a file name"
    if value in names or (not spec.upload and value in spec.choices):
        return None
    problem = file_name_problem(value)
    if problem:
        return problem
    if spec.upload:
        if "/" in value:
            return "names a sub-folder; it may name only one of this job's inputs"
        return _not_an_input(value, names)
    return f"{value!r} is not one of this server's files for it, nor one of this job's inputs"


def _not_an_input(value: str, names: frozenset[str]) -> str:
    own = ", ".join(sorted(names)) if names else "none"
    return f"names {value!r}, which is not one of this job's inputs ({own})"


def scope_prefixes(graph: Mapping[str, Any], folder: str, token: str) -> dict[str, Any]:
    """A copy of `graph` whose every `filename_prefix` is the literal `<folder>/<token>-<name>`.

    `<name>` is the last path segment of a literal prefix, reduced to letters, digits,
    space, `.`, `_`, `%` and `-` with no leading dot ("output" if nothing is left); a
    linked prefix (`["p", 0]` from a `PrimitiveString`) becomes `<folder>/<token>-output`,
    so no upstream node decides where a job's files are written.
    """
    scoped = copy.deepcopy(dict(graph))
    for node in scoped.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if isinstance(inputs, dict) and PREFIX_INPUT in inputs:
            inputs[PREFIX_INPUT] = f"{folder}/{token}-{_prefix_name(inputs[PREFIX_INPUT])}"
    return scoped


def _prefix_name(value: object) -> str:
    if not isinstance(value, str):
        return "output"
    last = value.replace("\\", "/").split("/")[-1]
    name = _PREFIX_UNSAFE.sub("_", last).replace("..", "_").lstrip(". ")[:64]
    return name or "output"
