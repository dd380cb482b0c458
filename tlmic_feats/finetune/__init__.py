"""The truncated-finetuning arm: a backbone cut at a cut point with a new head, trained end to end.
``config`` (the run's record), ``budget`` (optimizer steps and the schedule), ``trainer`` (setting
up, the step loop, evaluation), ``outputs`` (metrics, predictions, curves, export, compactness),
``losses``, ``augment``, ``lpft`` (a head from a probe), ``export``, ``compactness`` and ``ddp``
(torchrun)."""

from .config import ARCHS, MONITORS, SCHEDULES, FinetuneConfig, FinetuneResult
from .trainer import finetune

__all__ = [
    "ARCHS",
    "MONITORS",
    "SCHEDULES",
    "FinetuneConfig",
    "FinetuneResult",
    "finetune",
]
