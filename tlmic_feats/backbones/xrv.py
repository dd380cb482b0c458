"""torchxrayvision's chest X-ray networks as backbones: ``xrv:WEIGHTS`` (``pip install 'tlmic[xrv]'``).

``WEIGHTS`` is one of torchxrayvision's weight names (``xrv.models.model_urls``):
``xrv:densenet121-res224-all`` (also ``-nih``, ``-pc``, ``-chex``, ``-rsna``, ``-mimic_nb``,
``-mimic_ch``) and ``xrv:resnet50-res512-all``.

* Networks: torchxrayvision's own ``DenseNet`` (its dense layers return the concatenated map; family
  ``xrv_densenet``, the curated DenseNet's addresses: ``k.u`` after dense layer ``u`` of block ``k``,
  ``k`` < 4 the transition, ``4`` = ReLU(``norm5``), what ``model.features2`` pools), and for the
  ResNet the torchvision ResNet it wraps (``model.model``, one input channel; family ``resnet``).
* Preprocessing, torchxrayvision's: one grey channel mapped to [-1024, 1024]
  (``xrv.utils.normalize(img, 255)``), the centre square (``XRayCenterCrop``), resized to the
  weights' resolution (``XRayResizer``: 224 px, or 512 for the ResNet) by scikit-image
  (:func:`tlmic_feats.data.images.xrv_resize`; its pixels stay float32 on the host and in the pixel
  cache, as torchxrayvision's transform leaves them: within 3e-7 of its scale on real chest films).
* Weights: ``imagenet`` is the named checkpoint (trained on chest radiographs), read from
  torchxrayvision's cache directory (``~/.torchxrayvision/models_data/``) by torchxrayvision itself
  (its DenseNet files are pickled models, which it unpickles); tlmic never downloads them. ``random``
  initializes the architecture as torchxrayvision does; a file is a state dict of it (``weights_only``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..runtime.errors import UnknownBackboneError, UsageError, WeightsUnavailableError, choices
from .preprocess import Preprocess
from .spec import BackboneSpec
from .taps import CutPoint, Tap
from .weights import first_error_line, load_state


def _xrv():
    from .extras import require

    return require("xrv:")


def weight_names(xrv) -> list[str]:
    """torchxrayvision's full weight names (the short aliases ``all``, ``nih``... name the same files)."""
    return sorted(k for k in xrv.models.model_urls if k.startswith(("densenet", "resnet")))


def xrv_spec(name: str) -> BackboneSpec:
    """The recipe of ``xrv:NAME`` (see the module docstring)."""
    xrv = _xrv()
    valid = weight_names(xrv)
    if name not in valid:
        raise UnknownBackboneError(
            f"unknown torchxrayvision weights {name!r}; valid: {choices('xrv:' + v for v in valid)}"
        )
    info = xrv.models.model_urls[name]
    resolution = int(info.get("input_resolution", 512 if name.startswith("resnet") else 224))
    densenet = name.startswith("densenet")
    filename = os.path.basename(info["weights_url"])

    def build(size: int = 0):
        import torch
        import torchvision

        with warnings.catch_warnings():
            if densenet:
                return xrv.models.DenseNet(weights=None, num_classes=len(info["labels"]))
            # what xrv.models.ResNet builds before loading its file (it has no weights=None)
            model = getattr(torchvision.models, name.split("-")[0])(num_classes=len(info["labels"]), weights=None)
            model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
            return model

    def preprocess(variant: str) -> Preprocess:
        if variant:
            raise UsageError(f"xrv:{name} has one checkpoint; use --weights imagenet, not imagenet:{variant}")
        return Preprocess(
            input_size=resolution,
            resize_size=resolution,
            interpolation="xrv",
            mean=(0.5,),  # (x / 255 - 0.5) * 2048 = xrv.utils.normalize(x, 255)
            std=(1.0 / 2048.0,),
            source=f"torchxrayvision {name}: one channel in [-1024, 1024], XRayCenterCrop, XRayResizer({resolution})",
        )

    def load_imagenet(variant: str, size: int):
        preprocess(variant)
        path = Path(xrv.utils.get_cache_dir()) / filename
        if not path.is_file():
            raise WeightsUnavailableError(
                f"xrv:{name}: its weights {filename} are not in torchxrayvision's cache {path.parent}: download "
                f"{info['weights_url']} where there is a network and copy it to {path}, or pass --weights PATH "
                "(a state dict of this architecture)"
            )
        from ..data.manifest import file_sha256

        try:
            with warnings.catch_warnings():  # torchxrayvision's loader, as its users call it
                model = xrv.models.DenseNet(weights=name) if densenet else xrv.models.ResNet(weights=name).model
        except Exception as e:  # a corrupt or foreign file: torchxrayvision raises what torch.load raised
            raise WeightsUnavailableError(
                f"xrv:{name}: torchxrayvision cannot load {path}: {type(e).__name__}: {first_error_line(e)}"
            ) from e
        return model, f"torchxrayvision {name} ({filename})", file_sha256(path)

    def from_state(state: dict, size: int, what: str):
        model = build(size)
        # op_threshs calibrates the classifier's outputs (not a feature); xrv.models.ResNet keeps its
        # network under "model."
        state = {k.removeprefix("model.") if not densenet else k: v for k, v in state.items() if k != "op_threshs"}
        load_state(model, state, what)
        return model

    arch = "DenseNet-121" if densenet else name.split("-")[0].replace("resnet", "ResNet-")
    return BackboneSpec(
        f"xrv:{name}",
        "xrv_densenet" if densenet else "resnet",
        build,
        preprocess,
        load_imagenet,
        from_state,
        f"torchxrayvision {arch} ({resolution} px, one channel)",
    )


def cached_xrv_weights() -> list[tuple[str, str]]:
    """``(xrv:NAME, file)`` of the torchxrayvision weights in its cache directory (torchxrayvision is
    imported only when that directory holds files)."""
    import importlib.util

    folder = Path("~/.torchxrayvision/models_data").expanduser()
    if importlib.util.find_spec("torchxrayvision") is None or not folder.is_dir() or not any(folder.iterdir()):
        return []
    xrv = _xrv()
    folder = Path(xrv.utils.get_cache_dir())
    out = []
    for name in weight_names(xrv):
        path = folder / os.path.basename(xrv.models.model_urls[name]["weights_url"])
        if path.is_file():
            out.append((f"xrv:{name}", str(path)))
    return out


# --- family "xrv_densenet": torchxrayvision's DenseNet -------------------------------------------------


def _blocks(model) -> int:
    return sum(1 for n, _ in model.features.named_children() if n.startswith("denseblock"))


def xrv_densenet_cut_points(model, name: str = "") -> list[CutPoint]:
    out = []
    nb = _blocks(model)
    for k in range(1, nb + 1):
        for u in range(1, len(getattr(model.features, f"denseblock{k}")) + 1):
            layer = f"features.denseblock{k}.denselayer{u}"
            out.append(CutPoint(f"{k}.{u}", layer, (Tap(layer),)))
        if k < nb:
            out.append(CutPoint(f"{k}", f"features.transition{k}", (Tap(f"features.transition{k}"),)))
        else:
            out.append(CutPoint(f"{k}", "relu(features.norm5)", (Tap("features.norm5", act="relu"),)))
    return out


def xrv_densenet_tapper(model, modules):
    nb = _blocks(model)

    def taps(held, x):
        f = held.features
        x = f.pool0(f.relu0(f.norm0(f.conv0(x))))
        for k in range(1, nb + 1):
            for u, layer in enumerate(getattr(f, f"denseblock{k}"), start=1):
                x = layer(x)  # torchxrayvision's dense layer returns its input and new features, concatenated
                yield f"features.denseblock{k}.denselayer{u}", x
            if k < nb:
                x = getattr(f, f"transition{k}")(x)
                yield f"features.transition{k}", x
        yield "features.norm5", f.norm5(x)

    return model, taps


def xrv_densenet_truncate(model, cp: CutPoint):
    import torch.nn as nn

    f = model.features
    nb = _blocks(model)
    parts = [f.conv0, f.norm0, f.relu0, f.pool0]
    for k in range(1, cp.block):
        parts += [getattr(f, f"denseblock{k}"), getattr(f, f"transition{k}")]
    block = getattr(f, f"denseblock{cp.block}")
    if cp.unit is not None:
        parts.append(nn.Sequential(*list(block.children())[: cp.unit]))
    elif cp.block < nb:
        parts += [block, getattr(f, f"transition{cp.block}")]
    else:
        parts += [block, f.norm5, nn.ReLU(inplace=False)]
    return nn.Sequential(*parts)
