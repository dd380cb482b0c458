"""Global pooling of a cut point's feature map, one definition for both arms.

``avg`` (the paper's), ``max``, or ``avgmax`` (average- then max-pooled, concatenated: ``2C``
features). Extraction pools what it stores this way and the finetuned head pools the same way, so
a probe and a finetuned network at one cut point see one representation. Average pooling washes
out small local findings (nodules); ``max`` and ``avgmax`` keep them.
"""

from __future__ import annotations

POOLS = ("avg", "max", "avgmax")


def pooled_width(channels: int, pool: str) -> int:
    """Features per image after ``pool`` of a ``channels``-channel map."""
    return channels * (2 if pool == "avgmax" else 1)


def global_pool(x, pool: str):
    """``(N, C, H, W)`` -> ``(N, pooled_width(C, pool))``.

    Pooling kernels over the whole map (oneDNN on CPU, cuDNN on GPU), not ``tensor.mean``: on a
    bf16 channels_last map the generic mean reduction is ~15x slower on the CPU.
    """
    import torch
    import torch.nn.functional as F

    parts = []
    if "avg" in pool:
        parts.append(F.avg_pool2d(x, x.shape[-2:]).flatten(1))
    if "max" in pool:
        parts.append(F.max_pool2d(x, x.shape[-2:]).flatten(1))
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def global_pool_module(pool: str):
    """:func:`global_pool` as a module (for ``nn.Sequential``-style networks and their repr)."""
    import torch.nn as nn

    from ..runtime.errors import check_choice

    check_choice("--pool", pool, POOLS)

    class GlobalPool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = pool

        def forward(self, x):
            return global_pool(x, self.pool)

        def extra_repr(self) -> str:
            return self.pool

    return GlobalPool()
