"""Global pooling of a cut point's feature map, one definition for both arms.

``avg`` (the paper's), ``max``, or ``avgmax`` (average- then max-pooled, concatenated: ``2C``
features); for vision transformers also ``cls`` (the class token) and ``clsmean`` (the class token,
then the mean of the patch tokens: ``2C``, DINOv2's linear evaluation). Extraction pools what it
stores this way and the finetuned head pools the same way, so a probe and a finetuned network at
one cut point see one representation. Average pooling washes out small local findings (nodules);
``max`` and ``avgmax`` keep them.

Token maps ``(N, L, C)`` (layout "tokens"): ``avg`` and ``max`` run over the patch tokens only;
the ``prefix`` tokens before them (class token, register tokens) are excluded. ``cls`` takes the
class token and is refused for backbones without one (every CNN); so is ``clsmean``, whose mean
is ``avg``'s.
"""

from __future__ import annotations

POOLS = ("avg", "max", "avgmax", "cls", "clsmean")
CLASS_TOKEN_POOLS = ("cls", "clsmean")  # need a class token


def pooled_width(channels: int, pool: str) -> int:
    """Features per image after ``pool`` of a ``channels``-channel map."""
    return channels * (2 if pool in ("avgmax", "clsmean") else 1)


def pool_modes(pool: str) -> list[str]:
    """The single poolings that ``pool`` concatenates, in order: avgmax -> [avg, max], clsmean -> [cls, avg]."""
    return {"cls": ["cls"], "clsmean": ["cls", "avg"]}.get(pool) or [m for m in ("avg", "max") if m in pool]


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


def pool_tap(x, mode: str, layout: str = "nchw", prefix: int = 0):
    """One pooling (``avg``, ``max`` or ``cls``) of a tapped tensor in ``layout`` -> ``(N, C)``."""
    if layout == "tokens":
        if mode == "cls":
            return x[:, 0]
        patches = x[:, prefix:]
        return patches.mean(1) if mode == "avg" else patches.amax(1)
    if layout == "nhwc":
        x = x.permute(0, 3, 1, 2)
    return global_pool(x, mode)


def pool_map(x, pool: str, layout: str = "nchw", prefix: int = 0):
    """``pool`` of a tapped tensor: its single poolings concatenated (``avgmax``: avg, then max)."""
    import torch

    parts = [pool_tap(x, m, layout, prefix) for m in pool_modes(pool)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def global_pool_module(pool: str, layout: str = "nchw", prefix: int = 0):
    """:func:`pool_map` as a module (for ``nn.Sequential``-style networks and their repr)."""
    import torch.nn as nn

    from ..runtime.errors import check_choice

    check_choice("--pool", pool, POOLS)

    class GlobalPool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = pool

        def forward(self, x):
            return pool_map(x, self.pool, layout, prefix)

        def extra_repr(self) -> str:
            return self.pool if layout != "tokens" else f"{self.pool}, tokens after {prefix} prefix token(s)"

    return GlobalPool()


def check_pool(pool: str, cut_points, backbone: str) -> None:
    """Refuse ``--pool cls``/``clsmean`` where a cut point has no class token (CNNs, ViTs without one)."""
    from ..runtime.errors import UsageError, check_choice

    check_choice("--pool", pool, POOLS)
    if pool in CLASS_TOKEN_POOLS:
        bad = [cp.address for cp in cut_points if not cp.class_token]
        if bad:
            raise UsageError(
                f"--pool {pool} needs a class token, and {backbone} has none at layer {bad[0]}"
                f"{' (a CNN: its cut points are feature maps)' if cut_points[0].layout != 'tokens' else ''}; "
                f"valid: {', '.join(p for p in POOLS if p not in CLASS_TOKEN_POOLS)}"
            )


def describe_pooling(pool: str, cut_point) -> str:
    """What ``pool`` computes at ``cut_point``, in words (stores, reports)."""
    if cut_point.layout != "tokens":
        return {"avg": "average", "max": "max", "avgmax": "average and max (concatenated)"}[pool] + " over the map"
    p = cut_point.prefix
    excluded = f", {p} prefix token{'s' if p != 1 else ''} excluded" if p else ""
    return {
        "avg": f"mean over the patch tokens{excluded}",
        "max": f"max over the patch tokens{excluded}",
        "avgmax": f"mean and max over the patch tokens (concatenated){excluded}",
        "cls": "the class token",
        "clsmean": f"the class token and the mean over the patch tokens (concatenated){excluded}",
    }[pool]


def tokens_to_map(x, prefix: int):
    """Patch tokens ``(N, prefix + h*w, C)`` -> the map ``(N, C, h, w)`` (a square grid)."""
    import math

    patches = x[:, prefix:]
    side = math.isqrt(patches.shape[1])
    return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
