"""The node classes a deployment refuses by default, each with its reason (pure data).

A tenant's workflow runs on a ComfyUI that other tenants share, so nodes that read folders
or arbitrary paths on the host, write to it outside the job's outputs, or run
caller-controlled code that ComfyUI cannot interrupt are refused at submit unless the
operator allows them (`COMFYUI_SAAS_NODE_ALLOWLIST`; see docs/security.md, "Node policy").
"""

from __future__ import annotations

from collections.abc import Mapping

#: Refused unless allowed by the operator: class name -> why.
DENIED_BY_DEFAULT: Mapping[str, str] = {
    "LoadImageSetFromFolderNode": (
        "it reads every image of a folder the caller names, other jobs' input folders included"
    ),
    "LoadImageTextSetFromFolderNode": (
        "it reads every image and caption of a folder the caller names, other jobs' included"
    ),
    "LoadImageOutput": "it reads ComfyUI's output folder, where other jobs' results are",
    "WebcamCapture": "it loads any file name it is given, past the job's own inputs",
    "RegexMatch": (
        "it runs a caller's regular expression, which can hold the shared renderer for "
        "hours inside one node (ComfyUI interrupts only between nodes)"
    ),
    "RegexExtract": "it runs a caller's regular expression (see RegexMatch)",
    "RegexReplace": "it runs a caller's regular expression (see RegexMatch)",
    "CheckpointSave": "it writes model files (gigabytes) to the host's disk",
    "CLIPSave": "it writes model files to the host's disk",
    "VAESave": "it writes model files to the host's disk",
    "ModelSave": "it writes model files (gigabytes) to the host's disk",
    "ImageOnlyCheckpointSave": "it writes model files (gigabytes) to the host's disk",
    "LoraSave": "it writes model files to the host's disk",
    "SaveLoRANode": "it writes model files to the host's models folder",
    "TrainLoraNode": (
        "it runs a training loop of caller-chosen length inside one node on the shared GPU"
    ),
}
