"""The fixed-feature arm's first half: a frozen backbone's pooled features of every cut point,
extracted once (``extract``, with the ``engines`` that run the tapping network, the decoded
``pixels`` cache and the decode ``workers``) into a Zarr feature ``store``."""

from ..runtime.lazy import lazy_attributes, lazy_dir

_WHERE = {
    "ExtractConfig": "config",
    "ExtractReport": "extract",
    "extract_features": "extract",
    "FeatureStore": "store",
    "LayerInfo": "store",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
__dir__ = lazy_dir(__name__, _WHERE)
