"""The truncated-finetuning arm: a backbone cut at a cut point with a new head, trained end to end.
``config`` (the run's record), ``budget`` (optimizer steps and the schedule), ``trainer`` (setting
up, the step loop, evaluation), ``outputs`` (metrics, predictions, curves, export, compactness),
``losses``, ``augment``, ``lpft`` (a head from a probe), ``export``, ``compactness`` and ``ddp``
(torchrun)."""

from ..runtime.lazy import lazy_attributes, lazy_dir

_WHERE = {
    "ARCHS": "config",
    "MONITORS": "config",
    "SCHEDULES": "config",
    "FinetuneConfig": "config",
    "FinetuneResult": "config",
    "run_finetune": "trainer",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
__dir__ = lazy_dir(__name__, _WHERE)
