"""A finetuning run's configuration (recorded in ``run.json``) and its result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from ..backbones.options import backbone_option, input_size_option, pool_option, weights_option
from ..data.readers import DataConfig
from ..runtime.errors import UsageError
from ..runtime.options import bootstrap_option, check_fields, coerce_paths, device_option, name_of, option
from .augment import AugmentConfig
from .training import MONITORS, TrainingConfig

__all__ = ["ARCHS", "MONITORS", "SCHEDULES", "FinetuneConfig", "FinetuneResult", "TrainingConfig"]

Schedule = Literal["cosine", "plateau"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)

# "truncated": the registry's backbone cut at --truncate. "hybrid" (TransFusion-style): the pretrained
# backbone up to the block end before the deepest, then a slimmer randomly initialised block. The CBR
# names: Transfusion's shallow networks, trained from scratch (backbones/cbr.py).
Arch = Literal["truncated", "hybrid", "cbr-tiny", "cbr-small", "cbr-larget", "cbr-largew"]
ARCHS: tuple[str, ...] = get_args(Arch)


@dataclass(frozen=True)
class FinetuneConfig:
    """A finetuning run. Recorded in ``run.json``; resuming requires the same values.

    >>> from tlmic_feats import DataConfig, FinetuneConfig, TrainingConfig
    >>> FinetuneConfig(DataConfig("cxr/"), truncate="3", training=TrainingConfig(steps=200)).training.steps
    200
    """

    data: DataConfig = option(help="The dataset (see DataConfig).")
    backbone: str = backbone_option()
    weights: str = weights_option()
    truncate: str = option("all", "Cut point k or k.u (see `tlmic layers`), or all (full depth).")
    out: str = option("", "Run directory (default: under cache/runs).")
    training: TrainingConfig = option(default_factory=TrainingConfig, help="Budget, batch, learning rate, precision.")
    weight_decay: float = option(1e-4, "AdamW weight decay.", ge=0)
    schedule: Schedule = option("cosine", "Learning-rate schedule after warmup.", choices=SCHEDULES)
    dropout: float = option(0.2, "Dropout before the new head.", ge=0, le=1)
    pool: str = pool_option("Global pooling before the head (the head's width follows): as the feature store pools.")
    input_size: int = input_size_option()
    fraction: float = option(1.0, "Training fraction: the probes' nested subset for --seed.", gt=0, le=1)
    seed: int = option(0, "The run's seed (its training subset, initialisation and batches).", ge=0)
    freeze_backbone: bool = option(False, "Baseline: train only a linear head (SGD) on frozen features.")
    head_init: str = option("", "LP-FT: start the head from this probe run's logistic-regression probe.")
    augment: AugmentConfig | None = option(
        default_factory=AugmentConfig, help="Augmentation (None: center crops only).", cli=False
    )
    compile: bool = option(False, "torch.compile the training network (pays off on long runs: compiling takes ~1 min).")
    device: str = device_option()
    bootstrap: int = bootstrap_option()
    export_onnx: bool = option(True, "Export the best network to ONNX and check it against torch.", flag="--onnx/--no-onnx")
    workers: int = option(0, "Decode worker processes for images not in the pixel cache.", ge=0)
    pixel_cache: bool = option(
        True, "Decode each image once into cache/pixels (off: decode directly).", flag="--pixel-cache/--no-pixel-cache"
    )
    arch: Arch = option(
        "truncated",
        "hybrid: pretrained bottom blocks + a slim random block; cbr-*: Transfusion's shallow nets from scratch.",
        choices=ARCHS,
    )
    freeze_until: str = option("", "Layer-wise finetuning: keep the backbone up to this cut point frozen.")
    backbone_lr_mult: float = option(1.0, "Learning rate of the trainable backbone relative to the head.", gt=0, le=10)
    compactness: bool = option(
        True, "Measure parameters, MACs and CPU latency (a study measures one seed per arm).",
        flag="--compactness/--no-compactness",
    )
    keep_checkpoints: bool = option(False, "Keep last.pt (the resume state) after the run has finished.")

    def __post_init__(self) -> None:
        coerce_paths(self, "out", "head_init", "weights")

    def validate(self) -> None:
        check_fields(self)
        if self.arch != "truncated" and (self.freeze_backbone or self.head_init or self.freeze_until):
            raise UsageError(
                f"{name_of(self, 'arch')} {self.arch} trains its own layers; freeze_backbone, head_init and "
                "freeze_until apply to the truncated arch only"
            )
        if self.freeze_backbone and self.head_init:
            raise UsageError(
                f"{name_of(self, 'freeze_backbone')} and {name_of(self, 'head_init')} together would train "
                "nothing new; choose one"
            )


@dataclass
class FinetuneResult:
    """What :func:`~tlmic_feats.finetune.trainer.run_finetune` produced: the run directory, its test
    metrics (``metrics.json``), the validation history and the compactness of the network."""

    out: Path
    metrics: dict
    history: list[dict]  # one row per evaluation
    best_step: int
    compactness: list[dict] = field(default_factory=list)
    onnx: dict | None = None
    seconds: float = 0.0  # wall time of this call's training loop
    resumed_from: int = 0  # the step this call started from
    already_complete: bool = False  # the run had finished before this call: nothing was computed

    def to_pandas(self, *, history: bool = False):
        """The run as a :class:`pandas.DataFrame`.

        One row, the test result (default), with the columns ``run`` (the run directory), ``address``
        (the cut point, ``all`` for full depth), ``arch``, ``n_train``, ``steps_run``, ``best_step``,
        ``best_val`` (the monitored validation metric at ``best_step``), each test metric with its
        95% bootstrap interval (``auroc``, ``auroc_lo``, ``auroc_hi``, ``auprc``, ...), ``params``,
        ``macs`` and ``latency_ms`` of the trained network (None without compactness),
        ``train_seconds`` and ``precision``. With ``history=True``: one row per validation
        (``history.csv``'s columns: step, training loss, validation metrics, seconds).
        """
        import pandas as pd

        from ..metrics.scores import METRICS

        if history:
            return pd.DataFrame(self.history)
        columns = [
            *("run", "address", "arch", "n_train", "steps_run", "best_step", "best_val"),
            *(c for m in METRICS for c in (m, f"{m}_lo", f"{m}_hi")),
            *("params", "macs", "latency_ms", "train_seconds", "precision"),
        ]
        from dataclasses import asdict, is_dataclass

        comp = self.compactness[0] if self.compactness else {}  # this network (then the full-depth one)
        comp = asdict(comp) if is_dataclass(comp) else comp  # a fresh run's objects, a stored run's dicts
        row = {"run": str(self.out), **self.metrics, **{k: comp.get(k) for k in ("params", "macs", "latency_ms")}}
        return pd.DataFrame([{k: row.get(k) for k in columns}], columns=columns)

