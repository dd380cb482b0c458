"""The fixed-feature arm's second half: probes on stored features. ``estimators`` (scikit-learn
estimators: logistic regression, LightGBM), the ``grid`` of layer x model x fraction x seed cells,
its ``cluster`` form (Dask), and its ``report``."""

from .estimators import PROBES, LightGBMProbe, LogisticProbe, load_probe
from .grid import ProbeConfig, ProbeRun, run_probes

__all__ = [
    "PROBES",
    "LightGBMProbe",
    "LogisticProbe",
    "ProbeConfig",
    "ProbeRun",
    "load_probe",
    "run_probes",
]
