"""Fill the models volume from the manifest (run by the `download_models` Modal function).

Never at request time: render containers only read the volume. Each file is fetched at
its pinned revision into a hidden staging folder on the same volume and then renamed into
place, so a half-written file is never visible under its real name.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.core.logs import get_logger
from app.deploy.modal.manifest import ModelFile

log = get_logger(component="model_download")

#: (model, staging_dir) -> path of the downloaded file inside staging_dir.
Downloader = Callable[[ModelFile, Path], Path]

STAGING_DIR = ".staging"


@dataclass(slots=True)
class DownloadReport:
    """Which files were fetched and which were already in place."""

    downloaded: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        """JSON-able form."""
        return {"downloaded": self.downloaded, "present": self.present}


def hf_downloader(token: str | None = None) -> Downloader:
    """A downloader using `huggingface_hub` (installed in the download image only)."""

    def download(model: ModelFile, staging: Path) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(
            hf_hub_download(
                repo_id=model.repo_id,
                filename=model.filename,
                revision=model.revision,
                local_dir=staging,
                token=token,
            )
        )

    return download


def _in_place(target: Path, model: ModelFile) -> bool:
    if not target.is_file():
        return False
    return model.size_bytes is None or target.stat().st_size == model.size_bytes


def download_models(
    models: Sequence[ModelFile], models_dir: Path, download: Downloader
) -> DownloadReport:
    """Fetch every model that is missing or has the wrong size; keep the rest."""
    report = DownloadReport()
    staging_root = models_dir / STAGING_DIR
    for model in models:
        target = models_dir / model.relative_path
        if _in_place(target, model):
            report.present.append(model.relative_path)
            continue
        staging = staging_root / model.revision
        staging.mkdir(parents=True, exist_ok=True)
        fetched = download(model, staging)
        size = fetched.stat().st_size
        if model.size_bytes is not None and size != model.size_bytes:
            raise ValueError(
                f"{model.repo_id}/{model.filename}@{model.revision}: got {size} bytes, "
                f"manifest says {model.size_bytes}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(fetched, target)
        log.info("model_downloaded", path=model.relative_path, size_bytes=size)
        report.downloaded.append(model.relative_path)
    shutil.rmtree(staging_root, ignore_errors=True)
    return report
