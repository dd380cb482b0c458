"""Radiograph-safe batch augmentation, on the device, from an explicit random generator.

One affine warp per image (random resized crop with a mild scale range, small rotation and
translation, optional horizontal flip; never a vertical flip: anatomy has an up), then brightness
and contrast jitter. Parameters come from a ``torch.Generator``, so an epoch's augmentation is a
pure function of its seed: a resumed run sees exactly the images an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentConfig:
    scale: tuple[float, float] = (0.75, 1.0)  # area fraction of the square kept by the crop
    ratio: tuple[float, float] = (0.9, 1.1)
    rotate_degrees: float = 7.0
    translate: float = 0.05  # fraction of the image side
    brightness: float = 0.1
    contrast: float = 0.1
    hflip: bool = False


def augment_batch(x, size: int, cfg: AugmentConfig, generator):
    """Augment a uint8 or float batch ``(N, 1, S, S)`` to float ``(N, 1, size, size)`` (0..255)."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    dev = x.device

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator).to(dev)

    area = uniform(*cfg.scale)
    log_r = uniform(math.log(cfg.ratio[0]), math.log(cfg.ratio[1]))
    aspect = torch.exp(log_r)
    sx = torch.sqrt(area * aspect).clamp(max=1.0)  # crop width / side
    sy = torch.sqrt(area / aspect).clamp(max=1.0)
    # crop centre: anywhere the crop fits, plus a small translation
    cx = (uniform(-1, 1) * (1 - sx)) + uniform(-cfg.translate, cfg.translate) * 2
    cy = (uniform(-1, 1) * (1 - sy)) + uniform(-cfg.translate, cfg.translate) * 2
    angle = uniform(-cfg.rotate_degrees, cfg.rotate_degrees) * math.pi / 180
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(n, device=dev)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = cos * sx * flip
    theta[:, 0, 1] = -sin * sy
    theta[:, 1, 0] = sin * sx * flip
    theta[:, 1, 1] = cos * sy
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, (n, x.shape[1], size, size), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    b = uniform(-cfg.brightness, cfg.brightness).view(n, 1, 1, 1) * 255
    c = uniform(1 - cfg.contrast, 1 + cfg.contrast).view(n, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * c + mean + b).clamp(0, 255)
