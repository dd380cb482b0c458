"""The data layer: dataset readers, the manifest, splits and image decoding."""

from .manifest import LABEL_KINDS, SPLITS, ArrayImageSource, FileImageSource, Manifest
from .readers import FORMATS, DataConfig, detect_format, load_manifest
from .splits import make_splits, patients_straddling

__all__ = [
    "FORMATS",
    "LABEL_KINDS",
    "SPLITS",
    "ArrayImageSource",
    "DataConfig",
    "FileImageSource",
    "Manifest",
    "detect_format",
    "load_manifest",
    "make_splits",
    "patients_straddling",
]
