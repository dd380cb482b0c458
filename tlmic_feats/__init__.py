"""tlmic: transfer learning for medical image classification.

Frozen backbones -> per-cut-point pooled features in a Zarr store -> probes; and truncated
finetuning at the same cut points. Importing this package is cheap: torch loads only when a
function that needs it runs.

>>> from tlmic_feats import DataConfig, ExtractConfig, extract_features, FeatureStore  # doctest: +SKIP
>>> report = extract_features(ExtractConfig(DataConfig("chest_xray/"), backbone="resnet50"))  # doctest: +SKIP
>>> FeatureStore.open(report.store.path).features("3").shape                           # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "FeatureStore": "tlmic_feats.features.store",
    "LayerInfo": "tlmic_feats.features.store",
    "DataConfig": "tlmic_feats.data.readers",
    "load_manifest": "tlmic_feats.data.readers",
    "Manifest": "tlmic_feats.data.manifest",
    "ExtractConfig": "tlmic_feats.features.config",
    "ExtractReport": "tlmic_feats.features.extract",
    "extract_features": "tlmic_feats.features.extract",
    "build_backbone": "tlmic_feats.backbones.registry",
    "list_backbones": "tlmic_feats.backbones.registry",
    "layer_table": "tlmic_feats.backbones.layers",
    "run_demo": "tlmic_feats.demo",
    "ProbeConfig": "tlmic_feats.probes.grid",
    "run_probes": "tlmic_feats.probes.grid",
    "LogisticProbe": "tlmic_feats.probes.estimators",
    "LightGBMProbe": "tlmic_feats.probes.estimators",
    "FinetuneConfig": "tlmic_feats.finetune.config",
    "StudyConfig": "tlmic_feats.study.config",
    "run_study": "tlmic_feats.study.run",
    "plan_study": "tlmic_feats.study.plan",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str):
    from .runtime.lazy import lazy_attributes

    return lazy_attributes("tlmic_feats", {k: v.removeprefix("tlmic_feats.") for k, v in _LAZY.items()})(name)
