"""Generated image folders for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_images(folder: Path, n: int, *, seed: int = 0, size=(96, 80), mode="L") -> list[Path]:
    """``n`` images of uniform random pixels, ``size`` (width, height) in ``mode`` ``"L"`` or
    ``"RGB"``, saved as PNG under ``folder`` (created); returns their paths."""
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


def disk_dataset(
    root: str | Path,
    *,
    size: int = 64,
    counts: tuple[int, int, int] = (24, 12, 12),
    radius: float = 9,
    classes: tuple[str, str] = ("plain", "disk"),
    seed: int = 0,
    shuffle_test_labels: bool = False,
) -> Path:
    """An image folder (``train/ val/ test/``, one folder per class) that a few finetuning steps
    separate: every other image, of class ``classes[1]``, holds a bright disk of ``radius`` pixels
    on noise; the others are noise only.

    Parameters
    ----------
    root
        The folder to write (created).
    size
        The images' side, in pixels.
    counts
        Images in train, val and test; half of each split (rounded down) has the disk.
    radius
        The disk's radius, in pixels; its centre lies in the middle three-eighths of each axis.
    classes
        The class folders' names: without the disk, with it.
    seed
        The images (and the test labels' shuffle) are a function of it.
    shuffle_test_labels
        Move the test images between the class folders at random (the class counts kept): the
        same images as without it, test labels unrelated to them.

    Returns
    -------
    Path
        ``root``.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    low, high = size * 5 // 16, size * 11 // 16
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        for i in range(n):
            img = rng.normal(90, 20, (size, size))
            if i % 2:
                cy, cx = rng.integers(low, high, 2)
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] += 110
            folder = root / split / classes[i % 2]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{split}{i:03d}.png")
    if shuffle_test_labels:
        files = sorted((root / "test").rglob("*.png"))
        shuffled = np.array([classes[i % 2] for i in range(len(files))])
        rng.shuffle(shuffled)
        for f, c in zip(files, shuffled, strict=True):
            f.rename(root / "test" / c / f.name)
    return root
