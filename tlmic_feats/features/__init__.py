"""The fixed-feature arm's first half: a frozen backbone's pooled features of every cut point,
extracted once (``extract``, with the ``engines`` that run the tapping network, the decoded
``pixels`` cache and the decode ``workers``) into a Zarr feature ``store``."""

from .extract import ExtractConfig, ExtractReport, extract_features
from .store import FeatureStore, LayerInfo

__all__ = [
    "ExtractConfig",
    "ExtractReport",
    "FeatureStore",
    "LayerInfo",
    "extract_features",
]
