"""State-dict checks: prefix stripping, the keys and shapes an architecture expects, the first mismatch."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .architectures import build_model
from .spec import ModelSpec


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes."""
    out = dict(state_dict)
    for prefix in ("module.", "_orig_mod."):
        if out and all(isinstance(k, str) and k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes of ``build_model(spec)``, built on the meta device."""
    with torch.device("meta"):
        model = build_model(spec)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def state_dict_problem(state_dict: Mapping[str, Any], expected: Mapping[str, tuple]) -> str | None:
    """The first way ``state_dict`` fails to match ``expected`` (keys, then shapes)."""
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        return f"entry '{not_tensors[0]}' is a {type(state_dict[not_tensors[0]]).__name__}, not a tensor"
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    parts = []
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        parts.append(f"missing key '{missing[0]}'{more}")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        parts.append(f"unexpected key '{unexpected[0]}'{more}")
    if parts:
        return ", ".join(parts)
    for key, shape in expected.items():
        got = tuple(state_dict[key].shape)
        if got != tuple(shape):
            return f"shape mismatch for '{key}': file has {list(got)}, architecture expects {list(shape)}"
    return None
