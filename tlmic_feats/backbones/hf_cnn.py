"""Family ``hf_cnn``: a transformers convolutional network (ResNet, ConvNeXt, ConvNeXt V2, RegNet) cut
at its stages.

Such a model is an embedder (``embedder`` or ``embeddings``) followed by ``encoder.stages``, each stage an
optional ``downsampling_layer`` then its ``layers``; its ``hidden_states`` are the embedder's output and
every stage's. Addresses, as for the other CNNs:

* ``k`` = the output of stage ``k``, the model's own ``hidden_states[k]`` (its last layer's output,
  stored once with ``k.n``);
* ``k.u`` = the output of layer ``u`` of stage ``k`` (where a stage holds more than one).

The pooled head of the model (ConvNeXt's ``layernorm`` of the pooled map, ResNet's ``pooler``) comes
after the last stage and is not a cut point: the deepest address is the last stage, the map that head
pools. Which transformers models are read this way: :data:`tlmic_feats.backbones.hf.CNN_MODEL_TYPES`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from ..runtime.errors import BackboneStructureError
from .taps import CutPoint, Tap

_EMBEDDERS = ("embedder", "embeddings")
_STAGES = "encoder.stages"
_STAGE_PARTS = {"downsampling_layer", "layers"}


@dataclass(frozen=True)
class CnnLayout:
    embedder: str
    depths: tuple[int, ...]  # layers per stage


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cnn_layout(model, name: str = "") -> CnnLayout:
    """Where a transformers CNN keeps its embedder and stages; one line for a model laid out otherwise."""
    if model in _LAYOUTS:
        return _LAYOUTS[model]
    embedder = next((e for e in _EMBEDDERS if hasattr(model, e)), None)
    try:
        stages = model.get_submodule(_STAGES)
    except AttributeError:
        stages = None
    what = name or type(model).__name__
    if embedder is None or stages is None or not len(stages):
        raise BackboneStructureError(
            f"{what} cannot be cut: tlmic reads a transformers CNN as an embedder and encoder.stages"
        )
    for i, stage in enumerate(stages):
        parts = {n for n, _ in stage.named_children()}
        if "layers" not in parts or parts - _STAGE_PARTS:
            raise BackboneStructureError(
                f"{what} cannot be cut: its stage {i} holds {sorted(parts)}; tlmic reads a stage as "
                "downsampling_layer then layers"
            )
    out = CnnLayout(embedder, tuple(len(s.layers) for s in stages))
    _LAYOUTS[model] = out
    return out


def _layer(k: int, u: int) -> str:
    return f"{_STAGES}.{k - 1}.layers.{u - 1}"


def hf_cnn_cut_points(model, name: str = "") -> list[CutPoint]:
    lay = cnn_layout(model, name)
    out = []
    for k, n in enumerate(lay.depths, start=1):
        if n > 1:
            out += [CutPoint(f"{k}.{u}", _layer(k, u), (Tap(_layer(k, u)),)) for u in range(1, n + 1)]
        # the stage's output is its last layer's: one tap, stored once
        out.append(CutPoint(f"{k}", f"{_STAGES}.{k - 1}", (Tap(_layer(k, n)),)))
    return out


def _run_stage(stage, h, k: int):
    """A stage's forward (its downsampling, then its layers), yielding each layer's output."""
    for layer in getattr(stage, "downsampling_layer", ()):
        h = layer(h)
    for u, layer in enumerate(stage.layers, start=1):
        h = layer(h)
        yield _layer(k, u), h


def hf_cnn_tapper(model, modules):
    lay = cnn_layout(model)

    def taps(held, x):
        h = getattr(held, lay.embedder)(x)
        for k, stage in enumerate(held.get_submodule(_STAGES), start=1):
            for name, out in _run_stage(stage, h, k):
                yield name, out
                h = out

    return model, taps


def hf_cnn_truncate(model, cp: CutPoint):
    """The embedder, the stages before ``k`` and stage ``k`` (its first ``u`` layers for ``k.u``): a map
    ``(N, C, H, W)``."""
    import torch.nn as nn

    lay = cnn_layout(model)
    stages = list(model.get_submodule(_STAGES))
    embedder = getattr(model, lay.embedder)
    if cp.unit is None:
        return nn.Sequential(embedder, *stages[: cp.block])
    stage = stages[cp.block - 1]
    partial = [*getattr(stage, "downsampling_layer", ()), *list(stage.layers)[: cp.unit]]
    return nn.Sequential(embedder, *stages[: cp.block - 1], *partial)
