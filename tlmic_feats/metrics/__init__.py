"""One metrics module for both arms (``scores``: point estimates, thresholds, bootstrap CIs, paired
bootstrap; ``paired``: these trained models compared on these test images; ``verdicts``: arms
compared over training runs and test images) and the predictions files they are recomputed from
(``predictions``)."""

from ..runtime.lazy import lazy_attributes, lazy_dir

_WHERE = {
    "read_predictions": "predictions",
    "write_predictions": "predictions",
    "METRICS": "scores",
    "UndefinedMetricWarning": "scores",
    "bootstrap": "scores",
    "choose_thresholds": "scores",
    "evaluate": "scores",
    "paired_bootstrap": "scores",
    "Verdict": "verdicts",
    "compare_runs": "verdicts",
    "format_verdict": "verdicts",
    "holm": "verdicts",
    "seeds_needed": "verdicts",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
__dir__ = lazy_dir(__name__, _WHERE)
