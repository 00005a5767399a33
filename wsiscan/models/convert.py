"""TIAToolbox weights: mapping a CNNModel state dict onto torchvision's ResNet layout, and their ModelSpec."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..errors import CheckpointError
from .spec import RESNETS, ModelSpec
from .state_dict import expected_shapes, state_dict_problem, strip_prefixes

# TIAToolbox's CNNModel (tiatoolbox/models/architecture/vanilla.py) is
# feat_extract = nn.Sequential(*torchvision_resnet.children()[:-2]),
# pool = AdaptiveAvgPool2d(1), classifier = nn.Linear(C, num_classes), softmax output.
# Children of a torchvision ResNet: 0 conv1, 1 bn1, 2 relu, 3 maxpool, 4..7 layer1..4.
_TIA_PREFIXES: tuple[tuple[str, str], ...] = (
    ("feat_extract.0.", "conv1."),
    ("feat_extract.1.", "bn1."),
    ("feat_extract.4.", "layer1."),
    ("feat_extract.5.", "layer2."),
    ("feat_extract.6.", "layer3."),
    ("feat_extract.7.", "layer4."),
    ("classifier.", "fc."),
)
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def unwrap_state_dict(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Unwrap ``{"state_dict": {...}}``-style containers and ``module.`` prefixes."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        obj = inner
    return strip_prefixes(obj) if isinstance(obj, Mapping) else {}


def convert_tiatoolbox_state_dict(state_dict: Mapping[str, Any], arch: str) -> dict[str, torch.Tensor]:
    """Map a TIAToolbox ``CNNModel`` state dict onto torchvision's ResNet layout.

    Accepts a bare state dict or a wrapped one (``{"state_dict": ...}``, ``module.``
    prefixes).  The number of classes is read from ``classifier.weight``.  Unexpected
    keys or shapes raise :class:`CheckpointError` naming the first one.
    """
    if arch not in RESNETS:
        raise CheckpointError(
            f"TIAToolbox conversion supports {', '.join(RESNETS)}, not {arch!r}"
        )
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"TIAToolbox weights must be a state dict, got {type(state_dict).__name__}"
        )
    source = unwrap_state_dict(state_dict)
    if not source:
        raise CheckpointError("the TIAToolbox weights are empty: no state dict found in the file")
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"TIAToolbox state dict entry '{key}' is a {type(value).__name__}, not a tensor"
            )
        for src, dst in _TIA_PREFIXES:
            if isinstance(key, str) and key.startswith(src):
                out[dst + key[len(src) :]] = value
                break
        else:
            raise CheckpointError(
                f"unexpected key '{key}' in TIAToolbox weights: expected feat_extract.{{0,1,4-7}}.* "
                f"and classifier.* of a TIAToolbox CNNModel({arch!r})"
            )
    if "fc.weight" not in out or out["fc.weight"].ndim != 2:
        raise CheckpointError(
            "TIAToolbox weights have no 2-D 'classifier.weight': not a CNNModel classifier"
        )
    num_classes = int(out["fc.weight"].shape[0])
    if num_classes < 2:
        raise CheckpointError(f"TIAToolbox classifier has {num_classes} output(s); expected at least 2")
    class_names = ("normal", "tumor") if num_classes == 2 else tuple(f"class{i}" for i in range(num_classes))
    expected = expected_shapes(ModelSpec(arch=arch, class_names=class_names))
    for key in expected:  # weights saved by old torch versions lack num_batches_tracked
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = torch.tensor(0, dtype=torch.long)
    problem = state_dict_problem(out, expected)
    if problem:
        raise CheckpointError(
            f"TIAToolbox weights do not fit a {arch} (keys after conversion): {problem}; "
            "is the file for another architecture?"
        )
    return out


def tiatoolbox_spec(arch: str) -> ModelSpec:
    """The spec of TIAToolbox's ``<arch>-pcam`` weights: 96 px at 1.0 um/px, RGB in [0, 1]."""
    if arch not in RESNETS:
        raise CheckpointError(f"TIAToolbox PCam weights exist here for {', '.join(RESNETS)}, not {arch!r}")
    return ModelSpec(
        arch=arch,
        class_names=("normal", "tumor"),
        positive_class=1,
        patch_size_px=96,
        input_mpp=1.0,
        mean=None,
        std=None,
        temperature=1.0,
        name=f"tiatoolbox/{arch}-pcam",
        provenance={
            "source": "TIAToolbox",
            "architecture": f"tiatoolbox.models.architecture.vanilla.CNNModel(backbone={arch!r}, num_classes=2)",
            "preprocessing": "torchvision ToTensor only (RGB scaled to [0, 1])",
            "training_data": "PatchCamelyon (PCam)",
        },
    )
