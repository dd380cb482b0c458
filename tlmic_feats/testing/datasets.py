"""Generated image folders for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_images(folder: Path, n: int, *, seed: int = 0, size=(96, 80), mode="L") -> list[Path]:
    """``n`` random images saved as PNG under ``folder``; returns their paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(size[1], size[0]) + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
        p = folder / f"img_{seed}_{i:03d}.png"
        Image.fromarray(arr, mode=None).save(p)
        paths.append(p)
    return paths
