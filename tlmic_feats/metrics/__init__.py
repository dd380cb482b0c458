"""One metrics module for both arms (``scores``: point estimates, thresholds, bootstrap CIs, paired
bootstrap) and the predictions files they are recomputed from (``predictions``)."""

from .predictions import read_predictions, write_predictions
from .scores import METRICS, UndefinedMetricWarning, bootstrap, choose_thresholds, evaluate, paired_bootstrap

__all__ = [
    "METRICS",
    "UndefinedMetricWarning",
    "bootstrap",
    "choose_thresholds",
    "evaluate",
    "paired_bootstrap",
    "read_predictions",
    "write_predictions",
]
