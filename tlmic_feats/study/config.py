"""A study's configuration (recorded in ``study.json``), its runs and its result."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.readers import DataConfig
from ..features.auto import ENGINE_CHOICES
from ..finetune.budget import MIN_STEPS
from ..runtime.devices import PRECISIONS
from ..runtime.errors import UsageError, check_choice
from ..runtime.paths import cache_root, slug
from ..runtime.seeds import Seeds, check_seeds, seed_list
from ..runtime.rundir import study_run_id

BASELINES = ("cbr-tiny", "cbr-small", "cbr-larget", "cbr-largew", "hybrid", "layerwise")

# Which arms start their head from the probe of their cut point (LP-FT). Measured on the phantom
# (docs/finetune-recipe.md): it lifts truncated networks most (5% of the data: val AUROC 0.914 ->
# 0.977) and lowered full finetuning's (0.967 -> 0.932), hence "truncated" by default.
LPFT_ARMS = ("truncated", "all", "none")


@dataclass(frozen=True)
class StudyConfig:
    """A study. Recorded in ``study.json``; a rerun must use the same values."""

    data: DataConfig
    backbone: str = "resnet50"
    weights: str = "imagenet"
    fractions: tuple[float, ...] = (0.05, 0.1, 1.0)
    seeds: Seeds = 3  # a count (seeds 0..n-1) or the seeds themselves
    out: str = ""
    top_blocks: int = 2
    top_units: int = 2
    baselines: tuple[str, ...] = BASELINES
    epochs: int = 20
    steps: int = 0  # optimizer steps per run; 0: the default budget (tlmic_feats.finetune.budget), one per fraction
    min_steps: int = MIN_STEPS
    eval_every: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 5  # evaluations
    pool: str = "avg"  # the store's pooling, and every finetuned network's
    input_size: int = 0  # 0: the weights' own
    store: str = ""
    probe_models: tuple[str, ...] = ("logreg", "lightgbm")
    bootstrap: int = 1000
    precision: str = "auto"  # finetuning's
    engine: str = "torch"  # the extraction's engine and precision (tlmic_feats.features.auto)
    extract_precision: str = "fp32"
    device: str = "auto"
    cluster: str = ""
    layerwise_lr_mult: float = 0.1
    lpft: str = "truncated"  # arms whose head starts from their cut point's probe: truncated, all, none
    keep_checkpoints: bool = False
    rope: float = 0.01  # region of practical equivalence of the verdicts (AUROC and AUPRC)
    scratch: bool = True  # stage 1 also trains the full network from scratch

    def validate(self) -> None:
        for b in self.baselines:
            check_choice("--baselines", b, BASELINES)
        check_choice("--lpft", self.lpft, LPFT_ARMS)
        check_choice("--engine", self.engine, ENGINE_CHOICES)
        check_choice("--extract-precision", self.extract_precision, PRECISIONS)
        for f in self.fractions:
            if not 0 < f <= 1:
                raise UsageError(f"fraction {f} is not in (0, 1]; e.g. --fractions 0.05,0.1,1.0")
        check_seeds(self.seeds)
        if self.epochs < 1 or self.top_blocks < 1 or self.top_units < 0:
            raise UsageError(
                f"--epochs and --top-blocks must be >= 1 and --top-units >= 0 (got {self.epochs}, "
                f"{self.top_blocks}, {self.top_units})"
            )

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The seeds every arm runs (paired across arms: a seed's arms share its training subset)."""
        return seed_list(self.seeds)

    @property
    def results_key(self) -> dict:
        """What decides the study's results (where and how fast it runs does not)."""
        record = json.loads(json.dumps(asdict(self)))
        record.pop("cluster")  # the same results wherever it runs (tested); store and device are recorded by runs
        record.pop("keep_checkpoints")  # what is kept, not what is computed
        record.pop("rope")  # how the report judges, not what is computed
        # Added later: at their defaults they are left out, so that a study begun before still resumes.
        for key, default in (("engine", "torch"), ("extract_precision", "fp32"), ("scratch", True)):
            if record[key] == default:
                record.pop(key)

        return record


@dataclass(frozen=True)
class Run:
    """One finetuning run of the study."""

    stage: str
    arm: str  # "t<address>", "full", "scratch", a CBR name, "hybrid", "layerwise"
    fraction: float
    seed: int

    @property
    def id(self) -> str:
        return study_run_id(self.arm, self.fraction, self.seed)


@dataclass
class StudyResult:
    """What :func:`~tlmic_feats.study.run.run_study` produced: the study directory, one row per
    finished run (``results.csv``), the choices of the probe-guided search, the runs not started and
    the report."""

    out: Path
    rows: list[dict]
    choices: dict
    not_run: list[str] = field(default_factory=list)
    report: Path | None = None

    def to_pandas(self, *, verdicts: bool = False):
        """The study as a :class:`pandas.DataFrame`.

        By default one row per finished finetuning run and per probe seed at its best layer
        (``results.csv``): ``stage`` (``stage1``, ``stage2``, ``baseline``, ``probe``), ``arm``,
        ``address`` (cut point), ``fraction``, ``seed``, ``n_train``, ``val_auprc``, test ``auroc``
        and ``auprc`` with their 95% bootstrap intervals (``_lo``, ``_hi``), ``params``, ``macs``,
        ``latency_ms``, ``steps_run``, ``best_step``, ``pool``, ``train_seconds``, ``wall_seconds``,
        ``predictions`` (relative to :attr:`out`) and ``precision``. With ``verdicts=True``: the
        study's answer, ``verdicts.csv``, one row per contrast, fraction and metric (``a``, ``b``,
        ``diff``, ``ci90_lo`` ... ``ci95_hi``, ``p_improve``, ``verdict``, ``seeds_needed``, ...; see
        :data:`~tlmic_feats.metrics.verdicts.VERDICT_COLUMNS`).
        """
        import pandas as pd

        if verdicts:
            from ..metrics.verdicts import VERDICT_COLUMNS

            path = self.out / "verdicts.csv"
            if not path.is_file():
                return pd.DataFrame(columns=list(VERDICT_COLUMNS))
            return pd.read_csv(path, dtype={"a": str, "b": str, "seeds": str}, keep_default_na=False, na_values=[""])
        from .report import ROW_COLUMNS

        return pd.DataFrame([{k: r.get(k) for k in ROW_COLUMNS} for r in self.rows], columns=list(ROW_COLUMNS))


def default_out(config: StudyConfig) -> Path:
    return cache_root() / "studies" / f"{slug(Path(config.data.path).name)}-{slug(config.backbone)}"
