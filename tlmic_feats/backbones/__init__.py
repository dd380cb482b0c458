"""Backbones (curated, ``timm:NAME``, ``tv:NAME``), their weights and preprocessing, and the cut-point
registry shared by every arm."""

from .cutpoints import CutPoint, Tap, select_cut_points, storage_groups, truncate
from .preprocess import Preprocess
from .registry import (
    BACKBONES,
    Backbone,
    WeightsRecord,
    available_backbones,
    build_backbone,
    get_spec,
    list_backbones,
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "CutPoint",
    "Preprocess",
    "Tap",
    "WeightsRecord",
    "available_backbones",
    "build_backbone",
    "get_spec",
    "list_backbones",
    "select_cut_points",
    "storage_groups",
    "truncate",
]
