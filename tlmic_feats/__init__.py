"""tlmic: transfer learning for medical image classification.

Frozen backbones -> per-cut-point pooled features in a Zarr store -> probes; and truncated
finetuning at the same cut points. Importing this package is cheap: torch loads only when a
function that needs it runs. Every ``tlmic`` command has a function here (``tlmic probe``:
:func:`run_probes`, ``tlmic finetune``: :func:`run_finetune`, ...); results have ``.to_pandas()``.

>>> from tlmic_feats import DataConfig, ExtractConfig, extract_features, FeatureStore  # doctest: +SKIP
>>> report = extract_features(ExtractConfig(DataConfig("chest_xray/")))                # doctest: +SKIP
>>> store = FeatureStore.open(report.store.path)                                       # doctest: +SKIP
>>> X, y = store.features("3"), store.labels  # (N, C) and (N,): ready for scikit-learn # doctest: +SKIP
"""

__version__ = "0.1.0"

# name -> submodule that defines it; each is imported on first use (runtime/lazy.py). Grouped by
# the command they serve; the comment names the command.
_LAZY = {
    # data: `tlmic data check`
    "DataConfig": "data.readers",
    "load_manifest": "data.readers",
    "Manifest": "data.manifest",
    "check_dataset": "data.check",
    "DataCheck": "data.check",
    "PhantomConfig": "data.phantom",
    "make_phantom_dataset": "data.phantom",
    # backbones: `tlmic layers`, `tlmic backbones`
    "build_backbone": "backbones.registry",
    "list_backbones": "backbones.registry",
    "available_backbones": "backbones.registry",
    "layer_table": "backbones.layers",
    "available_backbones_offline": "backbones.registry",
    # features: `tlmic extract`
    "ExtractConfig": "features.config",
    "ExtractReport": "features.extract",
    "extract_features": "features.extract",
    "FeatureStore": "features.store",
    "LayerInfo": "features.store",
    "find_store": "features.locate",
    # probes: `tlmic probe`, `tlmic report`
    "ProbeConfig": "probes.grid",
    "ProbeRun": "probes.grid",
    "run_probes": "probes.grid",
    "render_report": "probes.report",
    "LogisticProbe": "probes.estimators",
    "LightGBMProbe": "probes.estimators",
    # layer similarity: `tlmic similarity` (--run: feature reuse of a finetuning run)
    "SimilarityConfig": "features.similarity_run",
    "SimilarityResult": "features.similarity_run",
    "run_similarity": "features.similarity_run",
    "linear_cka": "features.similarity",
    "minibatch_cka": "features.similarity",
    "svcca": "features.similarity",
    "feature_reuse": "finetune.reuse",
    "FeatureReuse": "finetune.reuse",
    # finetuning: `tlmic finetune`
    "FinetuneConfig": "finetune.config",
    "TrainingConfig": "finetune.training",
    "FinetuneResult": "finetune.config",
    "run_finetune": "finetune.trainer",
    # comparisons: `tlmic compare`
    "Comparison": "metrics.compare",
    "compare_runs": "metrics.compare",
    # studies: `tlmic study`, `tlmic study --plan`, `tlmic demo`
    "StudyConfig": "study.config",
    "StudyResult": "study.config",
    "PRESETS": "study.config",
    "run_study": "study.run",
    "plan_study": "study.plan",
    "run_demo": "demo",
    "DemoResult": "demo",
    # machine and cache: `tlmic doctor`, `tlmic cache info|list|clean`
    "diagnose": "doctor",
    "CacheItem": "runtime.cache",
    "scan_cache": "runtime.cache",
    "select_items": "runtime.cache",
    "clean_cache": "runtime.cache",
    # configs from flat option names (nested ones included): from_flat(FinetuneConfig, data=d, steps=200)
    "from_flat": "runtime.options",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str):
    from .runtime.lazy import lazy_attributes

    return lazy_attributes(__name__, _LAZY)(name)


def __dir__() -> list[str]:
    from .runtime.lazy import lazy_dir

    return lazy_dir(__name__, _LAZY)()
