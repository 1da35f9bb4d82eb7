"""The node catalog: which node classes a ComfyUI server has, built from `/object_info`.

The render worker publishes it to the state dict when ComfyUI starts; intake loads it to
check workflows before they are queued, so a job with an unknown node fails at once
instead of after a GPU container has started.

Only what validation needs is kept: the full document is ~0.5 MB for 500 node classes,
the compact form ~190 KB (each input's type, bounds and choices: templates take their
inputs' bounds from them). Every intake reads it; we rely on no documented size limit for a
`modal.Dict` value (Queue items are capped at 1 MiB), and a small value keeps the read
cheap and far from any such limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from app.store.backends.base import KV
from app.store.keys import CATALOG_DICT, CATALOG_KEY

__all__ = [
    "CATALOG_DICT",
    "CATALOG_KEY",
    "FieldSpec",
    "NodeCatalog",
    "NodeSpec",
    "load",
    "publish",
]
#: Bumped when the stored layout changes; an older layout is ignored, not misread.
_FORMAT = 4
#: Input types whose value is written in the graph (a widget); any other type is a link.
VALUE_KINDS = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
#: Input options that make an input a file upload (the front end shows an upload button,
#: and ComfyUI's loader accepts any existing file under its folder, not just the list).
UPLOAD_FLAGS = frozenset(
    {"image_upload", "audio_upload", "video_upload", "file_upload", "animated_image_upload"}
)
#: Option that names the folder an input lists (`LoadImageOutput`: "output").
_FOLDER_FLAG = "image_folder"
#: Endings of names in a list of files: a list of choices with one of them is a file list.
FILE_SUFFIXES = (
    ".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl", ".gguf",
    ".onnx", ".yaml", ".yml", ".json", ".latent", ".png", ".jpg", ".jpeg", ".webp",
    ".gif", ".bmp", ".tif", ".tiff", ".mp4", ".webm", ".mov", ".mkv", ".wav", ".mp3",
    ".flac", ".ogg", ".glb", ".gltf", ".obj", ".fbx", ".txt",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class FileInput:
    """An input of a node class that names a file on the ComfyUI host."""

    #: An upload input: the caller's value must be one of the job's own inputs.
    upload: bool
    #: The names the server listed (models a deployment ships); empty if it listed none.
    choices: tuple[str, ...] = ()
    #: The upload flag that made it one (`image_upload`, ...); "" for lists of files.
    kind: str = ""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One input of a node class: its type and, where the server declares them, bounds.

    `kind` is ComfyUI's type: INT, FLOAT, STRING, BOOLEAN, COMBO (a list of choices) for a
    value written in the graph, anything else (IMAGE, MODEL, ...) for a link. Templates
    take their inputs' bounds and allowed values from here.
    """

    kind: str
    minimum: float | None = None
    maximum: float | None = None
    #: The allowed values of a COMBO that is not a file list (file lists: `file_inputs`).
    choices: tuple[str, ...] = ()
    #: An old-style list of choices (`[["a", "b"], {...}]`): ComfyUI's `validate_inputs`
    #: refuses a value not among them, and a link of any type but `*`. A V3 `"COMBO"`
    #: input is checked by neither (it fails, if at all, when the node runs).
    listed: bool = False


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """What validation needs to know about one node class."""

    name: str
    output_node: bool
    #: The type of each output slot, in order (`["IMAGE", "MASK"]`).
    outputs: tuple[str, ...]
    required_inputs: tuple[str, ...]
    #: Inputs that name a file (uploads and lists of files), by input name.
    file_inputs: Mapping[str, FileInput] = field(default_factory=dict)
    #: A ComfyUI "API node": it calls a paid third-party service with the server's account.
    api_node: bool = False
    #: Every declared (required or optional) input, by name.
    fields: Mapping[str, FieldSpec] = field(default_factory=dict)


class NodeCatalog:
    """The node classes one ComfyUI server offers."""

    def __init__(self, nodes: Mapping[str, NodeSpec]) -> None:
        self._nodes = dict(nodes)

    @classmethod
    def from_object_info(cls, object_info: Mapping[str, Any]) -> NodeCatalog:
        """Build a catalog from a `GET /object_info` response; malformed entries are skipped."""
        nodes: dict[str, NodeSpec] = {}
        for name, info in object_info.items():
            if not isinstance(name, str) or not isinstance(info, Mapping):
                continue
            outputs = info.get("output")
            inputs = info.get("input")
            required = inputs.get("required") if isinstance(inputs, Mapping) else None
            declared = _declared_inputs(inputs)
            nodes[name] = NodeSpec(
                name=name,
                output_node=info.get("output_node") is True,
                outputs=tuple(_output_type(o) for o in outputs)
                if isinstance(outputs, list)
                else (),
                required_inputs=tuple(required) if isinstance(required, Mapping) else (),
                file_inputs={
                    key: found
                    for key, spec in declared.items()
                    if (found := file_input(spec)) is not None
                },
                api_node=info.get("api_node") is True,
                fields={key: field_spec(spec) for key, spec in declared.items()},
            )
        return cls(nodes)

    def __contains__(self, class_type: object) -> bool:
        return class_type in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def get(self, class_type: str) -> NodeSpec | None:
        """The spec of `class_type`, or None if the server has no such node."""
        return self._nodes.get(class_type)

    def is_output(self, class_type: str) -> bool:
        """Whether ComfyUI treats `class_type` as an output node (it runs what feeds it)."""
        spec = self._nodes.get(class_type)
        return spec is not None and spec.output_node

    def output_count(self, class_type: str) -> int:
        """How many output slots `class_type` has (0 for unknown classes)."""
        spec = self._nodes.get(class_type)
        return len(spec.outputs) if spec is not None else 0

    def to_record(self) -> dict[str, Any]:
        """The compact JSON-able form stored in the state dict."""
        return {name: _spec_record(spec) for name, spec in sorted(self._nodes.items())}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> NodeCatalog:
        """Read `to_record` output back; malformed entries are skipped."""
        nodes: dict[str, NodeSpec] = {}
        for name, entry in record.items():
            if not isinstance(entry, Mapping):
                continue
            nodes[name] = NodeSpec(
                name=name,
                output_node=entry.get("o") is True,
                outputs=_strings(entry.get("out")),
                required_inputs=_strings(entry.get("req")),
                file_inputs=_file_inputs(entry.get("f")),
                api_node=entry.get("a") is True,
                fields=_fields(entry.get("i")),
            )
        return cls(nodes)


def _spec_record(spec: NodeSpec) -> dict[str, Any]:
    record: dict[str, Any] = {
        "o": spec.output_node,
        "out": list(spec.outputs),
        "req": list(spec.required_inputs),
    }
    if spec.api_node:
        record["a"] = True
    if spec.file_inputs:
        record["f"] = {
            key: {"u": f.upload, "c": list(f.choices), **({"k": f.kind} if f.kind else {})}
            for key, f in spec.file_inputs.items()
        }
    if spec.fields:
        record["i"] = {key: _field_record(f) for key, f in spec.fields.items()}
    return record


def _field_record(spec: FieldSpec) -> dict[str, Any]:
    record: dict[str, Any] = {"t": spec.kind}
    if spec.minimum is not None:
        record["min"] = spec.minimum
    if spec.maximum is not None:
        record["max"] = spec.maximum
    if spec.choices:
        record["c"] = list(spec.choices)
    if spec.listed:
        record["l"] = True
    return record


def _fields(value: object) -> dict[str, FieldSpec]:
    if not isinstance(value, Mapping):
        return {}
    return {
        str(key): FieldSpec(
            kind=str(entry.get("t", "")),
            minimum=_number(entry.get("min")),
            maximum=_number(entry.get("max")),
            choices=_strings(entry.get("c")),
            listed=entry.get("l") is True,
        )
        for key, entry in value.items()
        if isinstance(entry, Mapping)
    }


def _output_type(value: object) -> str:
    """An output slot's type; a list of choices (a node that outputs a combo) reads as `*`.

    ComfyUI links such an output only to an input with the same list; treating it as any
    type keeps every such link accepted, as a catalog cannot compare the lists cheaply.
    """
    return value if isinstance(value, str) else "*"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _strings(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _file_inputs(value: object) -> dict[str, FileInput]:
    if not isinstance(value, Mapping):
        return {}
    return {
        str(key): FileInput(
            upload=entry.get("u") is True,
            choices=_strings(entry.get("c")),
            kind=str(entry.get("k", "")),
        )
        for key, entry in value.items()
        if isinstance(entry, Mapping)
    }


def _declared_inputs(inputs: object) -> dict[str, object]:
    """Every input spec of a class, required then optional (hidden ones are not the caller's)."""
    declared: dict[str, object] = {}
    if not isinstance(inputs, Mapping):
        return declared
    for section in ("required", "optional"):
        specs = inputs.get(section)
        if isinstance(specs, Mapping):
            declared.update({str(k): v for k, v in specs.items()})
    return declared


def file_input(spec: object) -> FileInput | None:
    """Whether an `/object_info` input spec names a file, and how; None if it does not.

    An upload flag (or a listed folder) makes it an upload input. A list of choices (old
    style `[[...], {...}]` or `["COMBO", {"options": [...]}]`) is a file list when it is
    empty (a server lists no choices only for folders it found empty) or when any choice
    ends like a file name or names a sub-folder.
    """
    if not isinstance(spec, list) or not spec:
        return None
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    flags = sorted(flag for flag in UPLOAD_FLAGS if options.get(flag))
    if flags or options.get(_FOLDER_FLAG):
        return FileInput(upload=True, kind=flags[0] if flags else "image_upload")
    if isinstance(kind, list):
        choices = kind
    elif kind == "COMBO" and isinstance(options.get("options"), list):
        choices = options["options"]
    else:
        return None
    names = tuple(str(c) for c in choices)
    if not names or any(n.lower().endswith(FILE_SUFFIXES) or "/" in n for n in names):
        return FileInput(upload=False, choices=names)
    return None


def field_spec(spec: object) -> FieldSpec:
    """The type and bounds of an `/object_info` input spec (`["INT", {"min": 1}]`, ...).

    A file list keeps its choices in `NodeSpec.file_inputs`, not here.
    """
    if not isinstance(spec, list) or not spec:
        return FieldSpec(kind="")
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    if isinstance(kind, list) or kind == "COMBO":
        listed = kind if isinstance(kind, list) else options.get("options")
        choices = tuple(str(c) for c in listed) if isinstance(listed, list) else ()
        return FieldSpec(
            kind="COMBO",
            choices=() if file_input(spec) else choices,
            listed=isinstance(kind, list),
        )
    return FieldSpec(
        kind=str(kind),
        minimum=_number(options.get("min")),
        maximum=_number(options.get("max")),
    )


def publish(kv: KV, object_info: Mapping[str, Any], now: float, version: str = "") -> NodeCatalog:
    """Store the catalog of `object_info` with its publication time; returns it.

    `version` names a pinned node set (a deploy); see `load`.
    """
    catalog = NodeCatalog.from_object_info(object_info)
    record = {
        "format": _FORMAT,
        "published_at": now,
        "version": version,
        "nodes": catalog.to_record(),
    }
    kv.put(CATALOG_KEY, json.dumps(record, separators=(",", ":")))
    return catalog


def load(kv: KV, max_age_s: float, now: float, version: str = "") -> NodeCatalog | None:
    """The published catalog if it is at most `max_age_s` old, else None.

    None means "validate structurally only": a stale catalog could refuse a node a newer
    ComfyUI image has, which is worse than letting ComfyUI's own validation decide. A
    catalog published under the caller's own non-empty `version` (the same pinned node
    set) is valid at any age.
    """
    return _valid(_record(kv), max_age_s, now, version)


#: A stored record as `_parse` reads it: (published_at, version, catalog).
Published = tuple[float, object, "NodeCatalog"]


def _valid(
    record: Published | None, max_age_s: float, now: float, version: str
) -> NodeCatalog | None:
    """`load`'s decision on a record already read."""
    if record is None:
        return None
    published_at, published_version, catalog = record
    same_node_set = bool(version) and published_version == version
    if now - published_at > max_age_s and not same_node_set:
        return None
    return catalog


@lru_cache(maxsize=4)
def _parse(raw: str) -> Published | None:
    """(published_at, version, catalog) of a stored record; None if not this format.

    Cached by the stored text: every admission reads the record, but it changes only
    when a catalog is published, and parsing it cost 2.8 ms, over half of intake's CPU.
    A catalog is never changed after it is built, so one can be shared.
    """
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("format") != _FORMAT:
        return None
    published_at = record.get("published_at")
    nodes = record.get("nodes")
    if not isinstance(published_at, int | float) or not isinstance(nodes, dict):
        return None
    return float(published_at), record.get("version"), NodeCatalog.from_record(nodes)


def _record(kv: KV) -> Published | None:
    raw = kv.get(CATALOG_KEY)
    return None if raw is None else _parse(raw)


class CatalogStore:
    """The published node catalog, kept in the `catalog` dict of the state backend.

    A catalog published under this deploy's own pinned node set never changes while the
    deploy lives, so it is read once per process (a round trip per request saved on
    Modal); any other catalog is read each time, as its age matters.
    """

    def __init__(self, kv: KV) -> None:
        self.kv = kv
        self._pinned: dict[str, NodeCatalog] = {}

    def load(self, max_age_s: float, now: float, version: str = "") -> NodeCatalog | None:
        """The published catalog if still valid (see `load`), else None."""
        if version and version in self._pinned:
            return self._pinned[version]
        record = _record(self.kv)
        catalog = _valid(record, max_age_s, now, version)
        pinned = record is not None and bool(version) and record[1] == version
        if catalog is not None and pinned:
            self._pinned[version] = catalog
        return catalog

    def publish(self, object_info: Mapping[str, Any], now: float, version: str = "") -> NodeCatalog:
        """Publish the catalog of `object_info` (see `publish`)."""
        return publish(self.kv, object_info, now, version)
