"""Test helpers: a Hugging Face cache laid out as huggingface_hub writes it, and small model files.

Layout (huggingface_hub's file-based cache)::

    <HF_HOME>/hub/models--<org>--<name>/
        blobs/<etag>                       the file's bytes (etag: sha256 for LFS files)
        refs/main                          the commit the branch points at
        snapshots/<commit>/<filename>      a relative symlink to ../../blobs/<etag>
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torchvision
from torch import nn


def fill_hf_cache(hub_dir: Path, repo_id: str, files: dict[str, bytes], *, commit: str = "a" * 40,
                  ref: str | None = "main") -> Path:
    """Put ``files`` into the cache at ``commit`` (and point ``refs/<ref>`` at it); returns the snapshot folder."""
    repo = hub_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        etag = hashlib.sha256(data).hexdigest()
        blob = repo / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(os.path.relpath(blob, link.parent), link)
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


class TiaCNNModel(nn.Module):
    """TIAToolbox's CNNModel layout (feat_extract / pool / classifier, softmax output)."""

    def __init__(self, arch: str = "resnet18", num_classes: int = 2) -> None:
        super().__init__()
        backbone = getattr(torchvision.models, arch)(weights=None)
        self.feat_extract = nn.Sequential(*list(backbone.children())[:-2])
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(backbone.fc.in_features, num_classes)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(self.pool(self.feat_extract(imgs)).flatten(1)), dim=-1)


def tia_pth_bytes(seed: int = 0, arch: str = "resnet18") -> tuple[bytes, TiaCNNModel]:
    """A randomly initialised TIAToolbox-layout .pth (bytes) and the module it came from."""
    import io

    torch.manual_seed(seed)
    model = TiaCNNModel(arch).eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue(), model


class ThreeClassNet(nn.Module):
    """A small deterministic 3-class patch classifier for the WSInfer-format tests."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3))) * 4.0


WSINFER_CONFIG = {
    "spec_version": "1.0",
    "architecture": "threeclassnet",
    "num_classes": 3,
    "class_names": ["stroma", "tumor", "lymphocytes"],
    "patch_size_pixels": 64,
    "spacing_um_px": 0.972,
    "transform": [
        {"name": "Resize", "arguments": {"size": 40}},
        {"name": "ToTensor"},
        {"name": "Normalize", "arguments": {"mean": [0.7, 0.6, 0.7], "std": [0.15, 0.2, 0.1]}},
    ],
}


def write_wsinfer_folder(folder: Path, config: dict | None = None) -> Path:
    """config.json + torchscript_model.pt of :class:`ThreeClassNet`, as WSInfer's zoo publishes models."""
    folder.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(ThreeClassNet().eval())
    scripted.save(str(folder / "torchscript_model.pt"))
    (folder / "config.json").write_text(json.dumps(config or WSINFER_CONFIG))
    return folder
