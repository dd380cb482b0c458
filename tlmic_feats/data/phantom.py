"""A deterministic synthetic chest-radiograph phantom: tlmic's embedded default dataset.

Each image has a body outline, two dark lung fields with soft texture, a bright mediastinum and
spine, ribs arching over the lungs, and noise, with per-image variation in pose, size and exposure.
Positive images carry one to three small nodular opacities inside the lungs, the kind of local
finding global average pooling tends to wash out. The dataset is written in the Kermany layout
(``train/ val/ test/ <class>/``) so that it exercises the same reader as real data.

Not a model of real anatomy: it exists so that ``tlmic demo`` and the tests run offline.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class PhantomConfig:
    n_train: int = 200
    n_val: int = 60
    n_test: int = 60
    size: int = 224
    prevalence: float = 0.4
    seed: int = 0
    version: int = 1  # bump when the generator changes, so caches are not reused wrongly
    nodule_px: tuple[float, float] = (3.0, 6.0)  # nodule radius range, pixels of the written image
    nodule_contrast: tuple[float, float] = (0.18, 0.3)  # peak brightening over the lung (0..1 scale)

    @property
    def name(self) -> str:
        """The dataset's folder name: counts and seed, and a digest of any other setting changed."""
        import hashlib

        base = f"phantom-v{self.version}-n{self.n_train + self.n_val + self.n_test}-s{self.seed}"
        looks = {k: v for k, v in asdict(self).items() if k in ("size", "nodule_px", "nodule_contrast")}
        if looks == {k: v for k, v in asdict(PhantomConfig()).items() if k in looks}:
            return base
        return f"{base}-{hashlib.sha256(json.dumps(looks, sort_keys=True).encode()).hexdigest()[:8]}"


CLASSES = ("normal", "nodule")


def render_phantom(
    rng: np.random.Generator,
    size: int,
    nodules: int,
    *,
    nodule_px: tuple[float, float] = (3.0, 6.0),
    nodule_contrast: tuple[float, float] = (0.18, 0.3),
) -> np.ndarray:
    """One phantom radiograph, uint8 (size, size); ``nodules`` opacities in the lungs, of radius
    ``nodule_px`` (pixels) and peak brightness ``nodule_contrast``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # 0..1
    cx = 0.5 + rng.normal(0, 0.02)
    cy = 0.52 + rng.normal(0, 0.02)
    scale = rng.uniform(0.9, 1.05)
    img = np.full((size, size), 0.08, np.float32)

    def ellipse(x0, y0, rx, ry):
        return ((xx - x0) / rx) ** 2 + ((yy - y0) / ry) ** 2 <= 1.0

    body = ellipse(cx, cy + 0.05, 0.45 * scale, 0.6 * scale)
    img[body] = 0.45
    lungs = np.zeros_like(body)
    for side in (-1, 1):
        lx = cx + side * 0.17 * scale
        lungs |= ellipse(lx, cy - 0.02, 0.13 * scale * rng.uniform(0.95, 1.05), 0.3 * scale)
    # Low-frequency texture inside the lungs.
    tex = np.zeros_like(img)
    for _ in range(6):
        fx, fy = rng.uniform(3, 9, size=2)
        tex += np.sin(2 * np.pi * (fx * xx + rng.uniform())) * np.sin(2 * np.pi * (fy * yy + rng.uniform()))
    img[lungs] = 0.2 + 0.02 * tex[lungs]
    # Ribs: arcs over each lung.
    ribs = np.zeros_like(img)
    for side in (-1, 1):
        x0 = cx + side * 0.05
        for k in range(8):
            y0 = cy - 0.3 * scale + k * 0.075 * scale
            curve = y0 + 0.9 * (xx - x0) ** 2 * side * side - 0.15 * np.abs(xx - x0)
            band = np.abs(yy - curve) < 0.012
            band &= (side * (xx - x0)) > 0
            ribs[band] = 1.0
    img += 0.12 * ribs * (lungs | body)
    # Mediastinum, heart and spine.
    img[ellipse(cx, cy + 0.02, 0.07 * scale, 0.32 * scale)] = 0.75
    img[ellipse(cx + 0.04, cy + 0.18, 0.12 * scale, 0.12 * scale)] = 0.7
    img[(np.abs(xx - cx) < 0.025) & body] = 0.8
    # Nodules: small round opacities centred inside a lung.
    lung_y, lung_x = np.nonzero(lungs)
    for _ in range(nodules):
        j = rng.integers(len(lung_y))
        ny, nx = lung_y[j] / size, lung_x[j] / size
        r = rng.uniform(*nodule_px) / size
        img += rng.uniform(*nodule_contrast) * np.exp(-(((xx - nx) ** 2 + (yy - ny) ** 2) / (2 * r * r)))
    # Exposure, blur-free noise, clip.
    img = img * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def make_phantom_dataset(root: str | Path, config: PhantomConfig = PhantomConfig()) -> Path:
    """Write the phantom dataset under ``root`` (if not already there) and return its folder.

    Written to a temporary folder and renamed into place, so an interrupted run never leaves a
    partial dataset that a later run would take for finished.
    """
    from PIL import Image

    name = config.name
    target = Path(root) / name
    if (target / "phantom.json").is_file():
        return target
    tmp = Path(root) / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    index = 0
    for split, n in (("train", config.n_train), ("val", config.n_val), ("test", config.n_test)):
        for c in CLASSES:
            (tmp / split / c).mkdir(parents=True, exist_ok=True)
        for _ in range(n):
            rng = np.random.default_rng([config.seed, index])
            positive = rng.random() < config.prevalence
            arr = render_phantom(
                rng,
                config.size,
                int(rng.integers(1, 4)) if positive else 0,
                nodule_px=config.nodule_px,
                nodule_contrast=config.nodule_contrast,
            )
            Image.fromarray(arr).save(tmp / split / CLASSES[positive] / f"phantom_{index:04d}.png")
            index += 1
    (tmp / "phantom.json").write_text(json.dumps(asdict(config), indent=2))
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target
