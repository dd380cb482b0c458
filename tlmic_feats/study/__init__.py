"""``tlmic study``: the paper's experiment as one resumable command. ``config`` (the study's
record), ``arms`` (each run's finetuning configuration; choices on validation data), ``plan`` (the
cost model, budgets, plan and disk estimate), ``run`` (the orchestration) and ``report``."""

from .config import BASELINES, LPFT_ARMS, StudyConfig, StudyResult
from .plan import plan_study
from .run import run_study

__all__ = [
    "BASELINES",
    "LPFT_ARMS",
    "StudyConfig",
    "StudyResult",
    "plan_study",
    "run_study",
]
