"""The fixed-feature arm's second half: probes on stored features. ``estimators`` (scikit-learn
estimators: logistic regression, LightGBM), the ``grid`` of layer x model x fraction x seed cells,
its ``cluster`` form (Dask), and its ``report``."""

from ..runtime.lazy import lazy_attributes, lazy_dir

_WHERE = {
    "PROBES": "estimators",
    "LightGBMProbe": "estimators",
    "LogisticProbe": "estimators",
    "load_probe": "estimators",
    "ProbeConfig": "config",
    "ProbeRun": "grid",
    "run_probes": "grid",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
__dir__ = lazy_dir(__name__, _WHERE)
