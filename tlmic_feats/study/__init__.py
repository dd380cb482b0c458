"""``tlmic study``: the paper's experiment as one resumable command. ``config`` (the study's
record), ``arms`` (each run's finetuning configuration; choices on validation data), ``plan`` (the
cost model, budgets, plan and disk estimate), ``run`` (the orchestration) and ``report``."""

from ..runtime.lazy import lazy_attributes, lazy_dir

_WHERE = {
    "BASELINES": "config",
    "LPFT_ARMS": "config",
    "StudyConfig": "config",
    "StudyResult": "config",
    "plan_study": "plan",
    "run_study": "run",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
__dir__ = lazy_dir(__name__, _WHERE)
