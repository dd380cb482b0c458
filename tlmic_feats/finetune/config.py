"""A finetuning run's configuration (recorded in ``run.json``) and its result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..backbones.pooling import POOLS
from ..data.readers import DataConfig
from ..runtime.devices import PRECISIONS
from ..runtime.errors import UsageError, check_choice
from .augment import AugmentConfig
from .budget import MIN_STEPS

SCHEDULES = ("cosine", "plateau")

# "truncated": the registry's backbone cut at --truncate. "hybrid" (TransFusion-style): the pretrained
# backbone up to the block end before the deepest, then a slimmer randomly initialised block. The CBR
# names: Transfusion's shallow networks, trained from scratch (backbones/cbr.py).
ARCHS = ("truncated", "hybrid", "cbr-tiny", "cbr-small", "cbr-larget", "cbr-largew")

MONITORS = ("auroc", "auprc", "loss")


@dataclass(frozen=True)
class FinetuneConfig:
    """A finetuning run. Recorded in ``run.json``; resuming requires the same values."""

    data: DataConfig
    backbone: str = "resnet50"
    weights: str = "imagenet"
    truncate: str = "all"
    out: str = ""
    epochs: int = 20  # the budget's data-rich part: steps = max(min_steps, epochs x steps per epoch)
    steps: int = 0  # optimizer steps; 0: the policy above (see tlmic_feats.finetune.budget)
    min_steps: int = MIN_STEPS
    eval_every: int = 0  # steps between validations; 0: 20 evaluations per run
    batch_size: int = 32
    lr: float = 1e-3  # AdamW, after warmup; 1e-4 (the paper's) starves short runs (docs/finetune-recipe.md)
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    monitor: str = "auroc"
    patience: int = 5  # evaluations without improvement before stopping
    dropout: float = 0.2
    pool: str = "avg"
    input_size: int = 0  # 0: the weights' own (see backbones.preprocess.at_input_size)
    fraction: float = 1.0
    seed: int = 0
    freeze_backbone: bool = False
    head_init: str = ""
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # None: no augmentation
    precision: str = "auto"
    compile: bool = False  # torch.compile the training step's network (benchmarks/finetune_speed.py)
    device: str = "auto"
    bootstrap: int = 1000
    export_onnx: bool = True
    workers: int = 0
    pixel_cache: bool = True
    arch: str = "truncated"
    freeze_until: str = ""  # layer-wise finetuning: the backbone up to this cut point stays frozen
    backbone_lr_mult: float = 1.0  # learning rate of the trainable backbone layers, relative to the head's
    compactness: bool = True  # measure parameters, MACs and CPU latency (a study measures one seed per arm)
    keep_checkpoints: bool = False  # keep last.pt (resume state) after the run has finished

    def validate(self) -> None:
        check_choice("--arch", self.arch, ARCHS)
        check_choice("--pool", self.pool, POOLS)
        if self.arch != "truncated" and (self.freeze_backbone or self.head_init or self.freeze_until):
            raise UsageError(
                f"--arch {self.arch} trains its own layers; --freeze-backbone, --head-init and "
                "--freeze-until apply to --arch truncated only"
            )
        if not 0 < self.backbone_lr_mult <= 10:
            raise UsageError(f"--backbone-lr-mult {self.backbone_lr_mult} is not in (0, 10]")
        check_choice("--schedule", self.schedule, SCHEDULES)
        check_choice("--monitor", self.monitor, MONITORS)
        check_choice("--precision", self.precision, PRECISIONS)
        if not 0 < self.fraction <= 1:
            raise UsageError(f"--fraction {self.fraction} is not in (0, 1]")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise UsageError(
                f"--epochs, --batch-size and --patience must be >= 1 "
                f"(got {self.epochs}, {self.batch_size}, {self.patience})"
            )
        if self.steps < 0 or self.min_steps < 0 or self.eval_every < 0:
            raise UsageError(
                f"--steps, --min-steps and --eval-every must be >= 0 (0: automatic; got {self.steps}, "
                f"{self.min_steps}, {self.eval_every})"
            )
        if self.freeze_backbone and self.head_init:
            raise UsageError("--freeze-backbone and --head-init together would train nothing new; choose one")


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

