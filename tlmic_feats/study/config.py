"""A study's configuration (recorded in ``study.json``) and its result."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

from ..backbones.options import backbone_option, input_size_option, pool_option, weights_option
from ..data.readers import DataConfig
from ..features.auto import ENGINE_CHOICES
from ..finetune.training import TrainingConfig
from ..probes.config import MODELS as PROBE_MODELS
from ..runtime.errors import UsageError
from ..runtime.options import (
    bootstrap_option,
    check_fields,
    cluster_option,
    coerce_paths,
    device_option,
    float_list,
    name_list,
    name_of,
    option,
    precision_option,
    replace_flat,
    seeds_option,
)
from ..runtime.paths import cache_root, slug
from ..runtime.seeds import Seeds, check_seeds, seed_list

BASELINES = ("cbr-tiny", "cbr-small", "cbr-larget", "cbr-largew", "hybrid", "layerwise")

# Which arms start their head from the probe of their cut point (LP-FT). Measured on the phantom
# (docs/finetune-recipe.md): it lifts truncated networks most (5% of the data: val AUROC 0.914 ->
# 0.977) and lowered full finetuning's (0.967 -> 0.932), hence "truncated" by default.
Lpft = Literal["truncated", "all", "none"]
LPFT_ARMS: tuple[str, ...] = get_args(Lpft)

# The truncation searches (tlmic_feats.study.search describes each).
Search = Literal["probe", "similarity", "halving", "exhaustive"]
SEARCHES: tuple[str, ...] = get_args(Search)

Preset = Literal["quick", "standard", "paper"]
PRESET_NAMES: tuple[str, ...] = get_args(Preset)


@dataclass(frozen=True)
class StudyConfig:
    """A study. Recorded in ``study.json``; a rerun must use the same values.

    The defaults are the ``standard`` preset; :meth:`from_preset` starts from another one
    (:data:`PRESETS`: ``quick``, about 15 min for 1,000 images on 2 CPU cores; ``paper``, the paper's
    protocol), and ``tlmic study --preset NAME`` does the same, options given beside it winning.

    >>> from tlmic_feats import DataConfig, StudyConfig
    >>> StudyConfig.from_preset("quick", DataConfig("cxr/")).fractions
    (0.05, 1.0)
    """

    data: DataConfig = option(help="The dataset (see DataConfig).")
    backbone: str = backbone_option()
    weights: str = weights_option("imagenet[:MEMBER] or a .pth/.safetensors file.")
    fractions: tuple[float, ...] = option(
        (0.05, 0.1, 1.0), "Training fractions (nested subsets).", gt=0, le=1, parse=float_list
    )
    seeds: Seeds = seeds_option("Seeds per fraction and arm, paired across arms: a count (3: seeds 0, 1, 2) or a list (3,4,5).")
    out: str = option("", "Study directory (default: under cache/studies).")
    top_blocks: int = option(2, "Stage 1: block ends finetuned with the full budget (the search's best).", ge=1)
    top_units: int = option(1, "Stage 2: units of the best block finetuned (0: no stage 2).", ge=0)
    search: Search = option(
        "halving",
        "How the cut points finetuned are chosen: halving (successive halving of the finetuned runs; the "
        "lowest regret on the tested tasks), probe (probe val AUPRC; cheaper), similarity (where a short "
        "finetune stops reusing pretrained features), exhaustive (every block end and every unit of the best "
        "block; judges the others). A study can be rerun with another search: its finished runs are kept.",
        choices=SEARCHES,
    )
    baselines: tuple[str, ...] = option(
        ("cbr-small", "hybrid"), "Other arms (comma-separated, or none).", choices=BASELINES, parse=name_list
    )
    training: TrainingConfig = option(
        default_factory=TrainingConfig, help="Every arm's budget, batch, learning rate, monitor and precision."
    )
    pool: str = pool_option("Pooling of the store's features and of every finetuned network's head.")
    input_size: int = input_size_option()
    store: str = option("", "Feature store to use or create (default: under cache/stores).")
    probe_models: tuple[str, ...] = option(
        ("logreg", "lightgbm"), "Probe models fitted on every layer.", choices=PROBE_MODELS, parse=name_list
    )
    bootstrap: int = bootstrap_option()
    engine: str = option(
        "torch", "The extraction's engine (as in `tlmic extract`; openvino needs pip install 'tlmic[openvino]').",
        choices=ENGINE_CHOICES,
    )
    extract_precision: str = precision_option("The extraction's precision (auto: the fastest validated here).")
    device: str = device_option()
    cluster: str = cluster_option("Extraction and probes on Dask.")
    layerwise_lr_mult: float = option(0.1, "Layer-wise baseline: the backbone's learning rate relative to the head's.", gt=0, le=10)
    lpft: Lpft = option(
        "truncated",
        "Arms whose head starts from the logistic-regression probe of their cut point (same subset): the "
        "truncated ones, every pretrained one (full and layer-wise too), or none.",
        choices=LPFT_ARMS,
    )
    keep_checkpoints: bool = option(False, "Keep every run's last.pt (resume state) after it finished.")
    rope: float = option(0.01, "Verdicts: region of practical equivalence (AUROC, AUPRC).", ge=0)
    scratch: bool = option(False, "Stage 1 also trains the full network from scratch.", flag="--scratch/--no-scratch")

    def __post_init__(self) -> None:
        coerce_paths(self, "out", "store", "weights")

    @classmethod
    def from_preset(cls, preset: Preset, data: DataConfig, **overrides) -> StudyConfig:
        """The study of a preset (:data:`PRESETS`), with ``overrides`` (fields, nested ones by name
        too: ``seeds=5``, ``lr=1e-4``) applied on top."""
        if preset not in PRESETS:
            raise UsageError(f"preset {preset!r} is not valid; valid: {', '.join(PRESETS)}")
        values = dict(PRESETS[preset])
        training = replace(TrainingConfig(), **values.pop("training", {}))
        given = overrides.pop("training", None)
        if given is not None:  # a training config given whole wins as a whole
            training = given
        return replace_flat(cls(data=data, training=training, **values), **overrides)

    def validate(self) -> None:
        check_fields(self)
        check_seeds(self.seeds, name_of(self, "seeds"))

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
        record.pop("search")  # which runs are made, not what a run computes: a study can add another search's
        return record


# The presets: field values over the class defaults (standard = the defaults). Sized on a 2-core CPU
# with EfficientNet-Lite0 (tlmic study --plan; the docs' benchmarks page has the measured times).
PRESETS: dict[str, dict] = {
    # The probe-guided block end vs full finetuning, 3 seeds, at 5% and 100% of the data, at 128 px.
    "quick": {
        "fractions": (0.05, 1.0),
        "top_blocks": 1,
        "top_units": 0,
        "baselines": (),
        "scratch": False,
        "probe_models": ("logreg",),
        "search": "probe",  # the cheapest search that fits the preset's 15 minutes (see docs/guide/search.md)
        "input_size": 128,
        "training": {"epochs": 4, "min_steps": 80},
    },
    "standard": {},
    # The paper's protocol: every block end and the units of the best, every shallow baseline and training
    # from scratch, the weights' own input size and a long budget (hours to days on a CPU; a GPU's).
    "paper": {
        "top_blocks": 99,  # every block end (no backbone has more)
        "top_units": 99,  # every unit of the best block
        "baselines": BASELINES,
        "scratch": True,
        "training": {"epochs": 200, "min_steps": 300, "patience": 10},
    },
}


# The columns of results.csv: one row per finished finetuning run and per probe seed at its best layer.
ROW_COLUMNS = (
    "stage",
    "arm",
    "address",
    "fraction",
    "seed",
    "n_train",
    "val_auprc",
    "auroc",
    "auroc_lo",
    "auroc_hi",
    "auprc",
    "auprc_lo",
    "auprc_hi",
    "params",
    "macs",
    "latency_ms",
    "steps_run",
    "best_step",
    "pool",
    "train_seconds",
    "wall_seconds",
    "predictions",
    "precision",
)


@dataclass
class StudyResult:
    """What :func:`~tlmic_feats.study.run.run_study` produced: the study directory, one row per
    finished run (``results.csv``), the choices of its search, the runs not started and
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
        return pd.DataFrame([{k: r.get(k) for k in ROW_COLUMNS} for r in self.rows], columns=list(ROW_COLUMNS))


def default_out(config: StudyConfig) -> Path:
    return cache_root() / "studies" / f"{slug(Path(config.data.path).name)}-{slug(config.backbone)}"
