"""Cut points derived from a model's own structure (``timm:NAME`` and ``tv:NAME`` backbones).

A model is read as stages of blocks. **Block ends** ``k`` are the stage ends; **units** ``k.u``
are the blocks inside stage ``k`` (only where a stage holds more than one); a last block end
``n + 1`` is the final feature module (a norm or a 1x1 head convolution) where the model has one
before its pooling, as the curated EfficientNet's ``bn2``.

* timm: the stage ends are the modules of the model's ``feature_info`` (what ``features_only`` and
  ``forward_intermediates`` return), minus the stem; where they are children of one sequence
  (``blocks.i``, ``stages.i``, ``layers.i``) every child of it is a stage, including the ones
  ``feature_info`` skips because they keep the resolution. Units: the stage's children
  (``layerK[j]``, ``blocks[i][j]``) or its ``blocks`` (``stages[i].blocks[j]``); a ViT's stages are
  its transformer blocks, which hold no units.
* torchvision: the stages are the sequences of blocks in the model's trunk (``features``,
  ``trunk_output``, ``layers``, or the model itself): EfficientNet, ConvNeXt, RegNet, Swin,
  ShuffleNet; a trunk of single blocks (MobileNet) is cut into stages where the resolution drops.
  ViT: ``encoder.layers``. ResNet and DenseNet use the curated families (:mod:`.cutpoints`).

Which node of the traced graph is a module's output comes from :func:`.graph.module_outputs`; a
stage end whose output is its last block's output taps that block (stored once, like ResNet's
``2`` and ``2.4``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from ..runtime.errors import BackboneStructureError
from .graph import module_outputs
from .taps import CutPoint, Tap

# Final feature modules of timm models, after the last stage and before pooling (ViT/Swin ``norm``,
# EfficientNet ``conv_head`` + ``bn2``, RegNet ``final_conv``, ConvNeXt ``norm_pre``).
TIMM_HEADS = ("norm", "bn2", "final_conv", "norm_pre")
TV_TRUNKS = ("features", "trunk_output", "layers")


@dataclass(frozen=True)
class Stage:
    name: str  # what the table shows
    module: str  # the module whose output ends the stage
    units: tuple[str, ...] = ()


def timm_cut_points(model, name: str = "") -> list[CutPoint]:
    """Cut points of a timm model (see the module docstring)."""
    name = name or f"timm:{type(model).__name__}"
    info = getattr(model, "feature_info", None)
    if not info:
        raise BackboneStructureError(f"{name} cannot be cut: timm gives it no feature_info (its stage ends)")
    mods = [d["module"] for d in info]
    stages, trailing = _timm_stages(model, mods)
    head = trailing[-1] if trailing else next((h for h in TIMM_HEADS if _is_real(model, h)), None)
    return _cut_points(model, name, stages, head, _timm_tap_layout(model))


def tv_cut_points(model, name: str = "") -> list[CutPoint]:
    """Cut points of a torchvision classification model (see the module docstring)."""
    import torchvision.models as tvm

    name = name or f"tv:{type(model).__name__}"
    if isinstance(model, tvm.VisionTransformer):
        stages = [Stage(f"encoder.layers.{n}", f"encoder.layers.{n}") for n, _ in model.encoder.layers.named_children()]
        return _cut_points(model, name, stages, "encoder.ln", {"layout": "tokens", "prefix": 1, "class_token": True})
    trunk = next((t for t in TV_TRUNKS if isinstance(getattr(model, t, None), _sequence_types())), "")
    container = model.get_submodule(trunk) if trunk else model
    kids = [(f"{trunk}.{n}" if trunk else n, m) for n, m in container.named_children()]
    stage_at = [i for i, (_, m) in enumerate(kids) if _is_stage(m)]
    if stage_at:
        stages = [Stage(kids[i][0], kids[i][0], _units(kids[i][0], kids[i][1])) for i in stage_at]
        tail = kids[stage_at[-1] + 1 :]
    else:
        stages, tail = _stages_by_resolution(model, kids, name)
    head = _tv_head(tail)
    layout = "nhwc" if isinstance(model, tvm.SwinTransformer) else "nchw"
    if layout == "nhwc":
        head = "norm"  # torchvision's Swin normalizes the last stage outside its trunk, channels last
    return _cut_points(model, name, stages, head, {"layout": layout})


# --- timm -------------------------------------------------------------------------------------------


def _pattern(module: str) -> tuple[str, str]:
    """``stages.2`` -> (``stages``, ``""``); ``layer3`` -> (``""``, ``layer``): stage ends share it."""
    parent, _, last = module.rpartition(".")
    return parent, re.sub(r"\d+$", "", last)


def _timm_stages(model, mods: list[str]) -> tuple[list[Stage], list[str]]:
    """The stages (and the feature_info modules after them) of a timm model."""
    common = Counter(_pattern(m) for m in mods).most_common(1)[0][0]
    at = [i for i, m in enumerate(mods) if _pattern(m) == common]
    ends, trailing = [mods[i] for i in at], mods[at[-1] + 1 :]
    parent = common[0]
    container = model.get_submodule(parent) if parent else None
    if isinstance(container, _sequence_types()) and all(e.rpartition(".")[2].isdigit() for e in ends):
        # every child of the sequence is a stage, also those feature_info skips (same resolution)
        first = int(ends[0].rpartition(".")[2])
        ends = [f"{parent}.{i}" for i in range(first, len(container))]
    return [Stage(e, e, _units(e, model.get_submodule(e))) for e in ends], trailing


def _timm_tap_layout(model) -> dict:
    prefix = getattr(model, "num_prefix_tokens", None)
    if isinstance(prefix, int) and hasattr(model, "patch_embed"):
        return {"layout": "tokens", "prefix": prefix, "class_token": getattr(model, "cls_token", None) is not None}
    if getattr(model, "output_fmt", "NCHW") == "NHWC":
        return {"layout": "nhwc"}
    return {"layout": "nchw"}


def _is_real(model, module: str) -> bool:
    import torch.nn as nn

    m = getattr(model, module, None)
    return isinstance(m, nn.Module) and not isinstance(m, nn.Identity)


# --- torchvision ------------------------------------------------------------------------------------


def _sequence_types():
    import torch.nn as nn

    return (nn.Sequential, nn.ModuleList)


def _is_layer(m) -> bool:
    """A single layer, or a plain sequence of single layers (conv-norm-act, norm-conv)."""
    import torch.nn as nn

    kids = list(m.children())
    return not kids or (isinstance(m, nn.Sequential) and all(not list(k.children()) for k in kids))


def _is_block(m) -> bool:
    return not _is_layer(m) and any(True for _ in m.parameters())


def _is_stage(m) -> bool:
    kids = list(m.children())
    return isinstance(m, _sequence_types()) and bool(kids) and all(_is_block(k) for k in kids)


def _units(name: str, m) -> tuple[str, ...]:
    """The blocks inside a stage: its children (a sequence, or a module of like children) or its
    ``blocks``; none for a stage that is one block (a transformer block, a dense block)."""
    import torch.nn as nn

    kids = list(m.named_children())
    if isinstance(m, _sequence_types()):
        units = [f"{name}.{n}" for n, _ in kids]
    elif isinstance(getattr(m, "blocks", None), _sequence_types()):
        units = [f"{name}.blocks.{n}" for n, _ in m.blocks.named_children()]
    elif not isinstance(m, nn.ModuleDict) and len(kids) >= 2 and len({type(k) for _, k in kids}) == 1:
        units = [f"{name}.{n}" for n, _ in kids]  # timm RegNet's RegStage: b1, b2, ...
    else:
        units = []
    return tuple(units) if len(units) >= 2 else ()


def _stages_by_resolution(model, kids, name: str) -> tuple[list[Stage], list]:
    """A trunk of single blocks (MobileNet): a stage ends before each block that lowers the
    resolution. Measured by one dry run at 224 px (where every torchvision classifier runs) with forward hooks."""
    import torch

    blocks = [(n, m) for n, m in kids if _is_block(m)]
    if not blocks:
        raise BackboneStructureError(
            f"{name} cannot be cut: its trunk is a list of single layers, not stages of blocks "
            "(supported: ResNet, DenseNet, EfficientNet, MobileNet, ConvNeXt, RegNet, ShuffleNet, ViT, Swin)"
        )
    sizes: dict[str, tuple] = {}

    def record(name):
        def hook(_module, _inputs, output) -> None:
            sizes.setdefault(name, tuple(output.shape[-2:]))

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in blocks]
    was = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, 3, 224, 224))
    except RuntimeError as e:
        raise BackboneStructureError(f"{name} cannot be cut: its stages could not be measured at 224 px ({e})") from e
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    ran = [n for n, _ in blocks if n in sizes]  # blocks used in eval mode only (no auxiliary heads)
    groups: list[list[str]] = []
    for n in ran:
        if not groups or sizes[n] != sizes[groups[-1][-1]]:
            groups.append([])
        groups[-1].append(n)
    stages = [
        Stage(g[0] if len(g) == 1 else f"{g[0]}..{g[-1].rpartition('.')[2]}", g[-1], tuple(g) if len(g) > 1 else ())
        for g in groups
    ]
    last = next(i for i, (n, _) in enumerate(kids) if n == ran[-1])
    return stages, kids[last + 1 :]


def _tv_head(tail) -> str | None:
    """The end of the run of convolution layers right after the last stage (EfficientNet's and
    MobileNet's 1x1 head convolution, ShuffleNet's conv5); None if there is none."""
    import torch.nn as nn

    run = []
    for n, m in tail:
        if not _is_layer(m) or isinstance(m, (nn.Linear, nn.Dropout, nn.Flatten, nn.AdaptiveAvgPool2d)):
            break
        run.append((n, m))
    if any(isinstance(x, nn.Conv2d) for _, m in run for x in m.modules()):
        return run[-1][0]
    return None


# --- both -------------------------------------------------------------------------------------------


def _cut_points(model, name: str, stages: list[Stage], head: str | None, layout: dict) -> list[CutPoint]:
    """Cut points from stages: ``k.u`` for each unit, ``k`` for each stage end, ``n + 1`` the head."""
    if len(stages) < 2:
        raise BackboneStructureError(f"{name} cannot be cut: found {len(stages)} stage(s), not stages of blocks")
    outputs = module_outputs(model, name)
    missing = [m for s in stages for m in (s.module, *s.units) if m not in outputs]
    if missing:
        raise BackboneStructureError(f"{name} cannot be cut: module {missing[0]} is not in its traced graph")
    out = []
    for k, stage in enumerate(stages, start=1):
        for u, unit in enumerate(stage.units, start=1):
            out.append(CutPoint(f"{k}.{u}", unit, (Tap(unit, **layout),)))
        # a stage that ends with its last block: one tap for both, stored once
        aliased = stage.units and outputs[stage.units[-1]] == outputs[stage.module]
        out.append(CutPoint(f"{k}", stage.name, (Tap(stage.units[-1] if aliased else stage.module, **layout),)))
    if head and head in outputs and outputs[head] != outputs[stages[-1].module]:
        out.append(CutPoint(f"{len(stages) + 1}", head, (Tap(head, **layout),)))
    return out
