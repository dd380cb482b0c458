"""The cut-point registry: where a backbone can be cut, for both arms of tlmic.

An integer address ``k`` is the end of block ``k`` (the paper's truncation semantics); ``k.u`` is
a finer cut inside block ``k``. Each family defines, once, for every address:

* its **taps**: the module outputs whose (pooled) values make the cut point's features, used by
  ``extract`` through forward hooks in a single forward pass; and
* its **truncation**: the network with everything after the cut removed, used by ``finetune``.

Definitions (torchvision module names):

* ResNet: ``k`` = output of ``layer{k}``; ``k.u`` = output of bottleneck (or basic block) ``u`` of
  ``layer{k}``. The stem ends after ``maxpool``. ``k`` and its last unit are the same tensor.
* DenseNet121: ``k`` < 4 = output of ``transition{k}`` (after its average pool); ``4`` =
  ReLU(``norm5``), what torchvision's classifier pools; ``k.u`` = the concatenated map after dense
  layer ``u`` of dense block ``k`` (block input and the first ``u`` layers' new features).
* EfficientNet (timm): ``k`` = end of stage ``blocks[k-1]`` (k = 1..7); ``8`` = the head
  (``conv_head``, ``bn2`` with its activation), what the classifier pools; ``k.u`` = block ``u`` of
  stage ``k``.

Those are the curated families, written out by hand. Every other model (``timm:NAME``,
``tv:NAME``) gets its cut points from its own structure (:mod:`.structure`) and its taps and
truncations from its traced graph (:mod:`.graph`): families ``timm`` and ``tv``.

The other libraries' models are families of their own, written out by hand in their modules:
``hf`` (a transformers vision transformer: ``k`` = ``hidden_states[k]``, the output of encoder
block ``k``; ``N + 1`` = its final norm; :mod:`.hf`), ``hf_cnn`` (a transformers CNN: ``k`` = the
output of stage ``k``, ``hidden_states[k]``; ``k.u`` = its layer ``u``; :mod:`.hf_cnn`) and
``xrv_densenet`` (torchxrayvision's
DenseNet, whose dense layers return the concatenated map; the curated DenseNet's addresses;
:mod:`.xrv`), ``openclip_vit`` and ``openclip_resnet`` (open_clip's own ViT and ModifiedResNet towers:
``k`` = ``transformer.resblocks[k-1]``, ``N + 1`` = ``ln_post``; torchvision ResNet's addresses after
its three-convolution stem; :mod:`.openclip`). torchxrayvision's ResNet is torchvision's (``resnet``);
an open_clip image tower with a timm trunk is that timm model (``timm``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..runtime.errors import BackboneStructureError, UnknownCutPointError, choices
from .taps import CutPoint, Tap, address_key

_ADDRESS = re.compile(r"^\d+(\.\d+)?$")
GRANULARITIES = ("all", "blocks", "units")  # every cut point, block ends, units inside blocks


# --- family definitions ---------------------------------------------------------------------------


def resnet_cut_points(model, name: str = "") -> list[CutPoint]:
    out = []
    for k in range(1, 5):
        layer = getattr(model, f"layer{k}")
        n = len(layer)
        for u in range(1, n + 1):
            out.append(CutPoint(f"{k}.{u}", f"layer{k}.{u - 1}", (Tap(f"layer{k}.{u - 1}"),)))
        # layer{k}'s output is its last unit's output: one tap, stored once.
        out.append(CutPoint(f"{k}", f"layer{k}", (Tap(f"layer{k}.{n - 1}"),)))
    return out


def _densenet_cut_points(model, name: str = "") -> list[CutPoint]:
    out = []
    block_input = "features.pool0"
    for k in range(1, 5):
        block = getattr(model.features, f"denseblock{k}")
        n = len(block)
        for u in range(1, n + 1):
            taps = (Tap(block_input), *(Tap(f"features.denseblock{k}.denselayer{i}") for i in range(1, u + 1)))
            out.append(CutPoint(f"{k}.{u}", f"cat(features.denseblock{k}[:{u}])", taps))
        if k < 4:
            end = f"features.transition{k}"
            out.append(CutPoint(f"{k}", end, (Tap(end),)))
            block_input = end
        else:
            out.append(CutPoint("4", "relu(features.norm5)", (Tap("features.norm5", act="relu"),)))
    return out


def _efficientnet_cut_points(model, name: str = "") -> list[CutPoint]:
    out = []
    for k, stage in enumerate(model.blocks, start=1):
        n = len(stage)
        for u in range(1, n + 1):
            out.append(CutPoint(f"{k}.{u}", f"blocks.{k - 1}.{u - 1}", (Tap(f"blocks.{k - 1}.{u - 1}"),)))
        out.append(CutPoint(f"{k}", f"blocks.{k - 1}", (Tap(f"blocks.{k - 1}.{n - 1}"),)))
    out.append(CutPoint(f"{len(model.blocks) + 1}", "bn2", (Tap("bn2"),)))
    return out


def _resnet_truncate(model, cp: CutPoint):
    import torch.nn as nn

    parts = [model.conv1, model.bn1, model.relu, model.maxpool]
    for k in range(1, cp.block):
        parts.append(getattr(model, f"layer{k}"))
    layer = getattr(model, f"layer{cp.block}")
    parts.append(layer if cp.unit is None else layer[: cp.unit])
    return nn.Sequential(*parts)


class _PartialDenseBlock:
    """Factory for a module running the first ``u`` layers of a torchvision dense block."""

    @staticmethod
    def build(block, u: int):
        import torch
        import torch.nn as nn

        class PartialDenseBlock(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.layers = nn.ModuleList(list(block.values())[:u])

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                features = [x]
                for layer in self.layers:
                    features.append(layer(features))
                return torch.cat(features, 1)

        return PartialDenseBlock()


def _densenet_truncate(model, cp: CutPoint):
    import torch.nn as nn

    f = model.features
    parts = [f.conv0, f.norm0, f.relu0, f.pool0]
    for k in range(1, cp.block):
        parts += [getattr(f, f"denseblock{k}"), getattr(f, f"transition{k}")]
    block = getattr(f, f"denseblock{cp.block}")
    if cp.unit is not None:
        parts.append(_PartialDenseBlock.build(block, cp.unit))
    elif cp.block < 4:
        parts += [block, getattr(f, f"transition{cp.block}")]
    else:
        parts += [block, f.norm5, nn.ReLU(inplace=False)]
    return nn.Sequential(*parts)


def _efficientnet_truncate(model, cp: CutPoint):
    import torch.nn as nn

    parts = [model.conv_stem, model.bn1]
    n_stages = len(model.blocks)
    if cp.block > n_stages:  # the head
        parts += [model.blocks, model.conv_head, model.bn2]
        return nn.Sequential(*parts)
    parts += list(model.blocks[: cp.block - 1])
    stage = model.blocks[cp.block - 1]
    parts.append(stage if cp.unit is None else stage[: cp.unit])
    return nn.Sequential(*parts)


# --- tapping forwards: the network run up to its deepest tap, yielding every tap's map ---------------
# Written out (not forward hooks) so that one traceable graph serves the torch engine, torch.compile
# and the ONNX export alike. Each yields (module name, output) in depth order; the tests check the
# maps against torchvision's own forward and against the truncated networks.


def _resnet_tap_forward(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for k in range(1, 5):
        for u, block in enumerate(getattr(model, f"layer{k}")):
            x = block(x)
            yield f"layer{k}.{u}", x


def _densenet_tap_forward(model, x):
    import torch

    f = model.features
    x = f.pool0(f.relu0(f.norm0(f.conv0(x))))
    yield "features.pool0", x
    for k in range(1, 5):
        features = [x]
        for i, layer in enumerate(getattr(f, f"denseblock{k}").values(), start=1):
            new = layer(features)
            features.append(new)
            yield f"features.denseblock{k}.denselayer{i}", new
        x = torch.cat(features, 1)
        if k < 4:
            x = getattr(f, f"transition{k}")(x)
            yield f"features.transition{k}", x
    yield "features.norm5", f.norm5(x)


def _efficientnet_tap_forward(model, x):
    x = model.bn1(model.conv_stem(x))
    for i, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            x = block(x)
            yield f"blocks.{i}.{j}", x
    yield "bn2", model.bn2(model.conv_head(x))


@dataclass(frozen=True)
class Family:
    """How a family defines, taps and truncates its cut points.

    ``tapper(model, modules)`` returns ``(held, taps)``: the module a tapping network holds, and
    ``taps(held, x)``, which yields ``(module, output)`` in depth order for at least ``modules``.
    """

    cut_points: Callable  # (model, name) -> [CutPoint]
    truncate: Callable  # (model, cut point) -> module
    tapper: Callable  # (model, [tap module]) -> (held module, taps)


def _forward_tapper(tap_forward):
    """A hand-written tapping forward: the network stops once every tap was seen (see tap_network)."""
    return lambda model, modules: (model, tap_forward)


def _graph_tapper(model, modules):
    from .graph import graph_taps

    return graph_taps(model, list(modules)), lambda held, x: held(x).items()


def _graph_truncate(model, cp: CutPoint):
    from .graph import graph_truncation

    tap = cp.taps[-1]
    return graph_truncation(model, tap.module, tap.layout)


def _timm_cut_points(model, name: str = ""):
    from .structure import timm_cut_points

    return timm_cut_points(model, name)


def _tv_cut_points(model, name: str = ""):
    from .structure import tv_cut_points

    return tv_cut_points(model, name)


def _lazy(module: str, attr: str):
    """``module.attr`` (a sibling module), imported when first called: those import their libraries."""

    def call(*args):
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{module}"), attr)(*args)

    return call


FAMILIES = {
    "resnet": Family(resnet_cut_points, _resnet_truncate, _forward_tapper(_resnet_tap_forward)),
    "densenet": Family(_densenet_cut_points, _densenet_truncate, _forward_tapper(_densenet_tap_forward)),
    "efficientnet": Family(
        _efficientnet_cut_points, _efficientnet_truncate, _forward_tapper(_efficientnet_tap_forward)
    ),
    "timm": Family(_timm_cut_points, _graph_truncate, _graph_tapper),
    "tv": Family(_tv_cut_points, _graph_truncate, _graph_tapper),
    "hf": Family(_lazy("hf", "hf_cut_points"), _lazy("hf", "hf_truncate"), _lazy("hf", "hf_tapper")),
    "hf_cnn": Family(*(_lazy("hf_cnn", f"hf_cnn_{f}") for f in ("cut_points", "truncate", "tapper"))),
    "openclip_vit": Family(*(_lazy("openclip", f"openclip_vit_{f}") for f in ("cut_points", "truncate", "tapper"))),
    # torchvision ResNet's addresses (layer{k}, its bottlenecks); open_clip's own stem in its tapper and truncation
    "openclip_resnet": Family(
        resnet_cut_points, _lazy("openclip", "openclip_resnet_truncate"), _lazy("openclip", "openclip_resnet_tapper")
    ),
    "xrv_densenet": Family(*(_lazy("xrv", f"xrv_densenet_{f}") for f in ("cut_points", "truncate", "tapper"))),
}
CURATED_FAMILIES = ("resnet", "densenet", "efficientnet")
GRAPH_FAMILIES = ("timm", "tv")  # taps from a traced graph; the others' are written out
ANY_SIZE_FAMILIES = (*CURATED_FAMILIES, "hf_cnn", "openclip_resnet", "xrv_densenet")  # convolutional: measured at 64 px


def tap_network(family: str, model, cut_points: tuple[CutPoint, ...], pool: str, preprocess=None):
    """A module mapping pixels to the pooled features of ``cut_points``: a tuple of ``(N, C')``
    tensors in the order given (``C' = 2C`` for ``avgmax``: average-pooled, then max-pooled).

    It runs the backbone only as deep as the deepest tap and pools each map right after it is made,
    so no full-size map outlives its block. With ``preprocess``, the input is uint8 grayscale
    ``(N, 1, H, W)`` and normalization is part of the module (and of an exported graph). Token
    maps pool over their patch tokens (``cls``: the class token; see :mod:`.pooling`).
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from .pooling import pool_modes, pool_tap
    from .preprocess import device_normalize

    taps_of = [cp.taps for cp in cut_points]
    layout = {t.module: (t.layout, t.prefix) for taps in taps_of for t in taps}
    needed = list(layout)
    modes = pool_modes(pool)
    held, tap_outputs = FAMILIES[family].tapper(model, needed)

    class TapNetwork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.normalize = device_normalize(preprocess) if preprocess is not None else nn.Identity()
            self.model = held

        def forward(self, x):
            x = self.normalize(x)
            pooled = {}
            for name, out in tap_outputs(self.model, x):
                if name in layout:
                    for act in {t.act for cp in taps_of for t in cp if t.module == name}:
                        y = F.relu(out) if act == "relu" else out
                        for m in modes:
                            pooled[(name, act, m)] = pool_tap(y, m, *layout[name]).float()
                    if len({k[0] for k in pooled}) == len(needed):
                        break  # every tap seen: nothing deeper is computed
            return tuple(
                torch.cat([torch.cat([pooled[(t.module, t.act, m)] for t in taps], 1) for m in modes], 1)
                for taps in taps_of
            )

    return TapNetwork()


# --- the registry's geometry: block ends, units, full depth ------------------------------------------
# Functions of a built backbone (anything with ``cut_points``), shared by both arms and the study.


def block_ends(backbone) -> list[str]:
    """The block ends ``k``, shallow to deep."""
    return sorted((cp.address for cp in backbone.cut_points if cp.is_block), key=address_key)


def units_of(backbone, block: str) -> list[str]:
    """The unit-level cut points inside ``block`` that differ from its block end."""
    groups = storage_groups(backbone.cut_points)
    end = groups[block]
    inside = [cp.address for cp in backbone.cut_points if not cp.is_block and cp.block == int(block)]
    return sorted((a for a in inside if groups[a] != end and a != end), key=address_key)


def hybrid_address(backbone) -> str:
    """Where the hybrid keeps the pretrained backbone up to: the block end before the deepest."""
    return block_ends(backbone)[-2]


def full_depth_address(backbone) -> str:
    """The deepest block end: ``--truncate all``."""
    return block_ends(backbone)[-1]


# --- public helpers -------------------------------------------------------------------------------


def describe_cut_points(
    family: str, model, probe_size: int = 64, name: str = "", channels: int = 3
) -> tuple[CutPoint, ...]:
    """Every cut point of ``model`` in depth order, with channels and stride measured by a dry run
    at ``probe_size`` px on a ``channels``-channel input (a token map's stride is its patch size).

    Measuring (rather than typing) channel counts keeps the table true to the actual module.
    """
    import math

    import torch

    fam = FAMILIES[family]
    cps = fam.cut_points(model, name)
    taps = {t.module: t for cp in cps for t in cp.taps}
    # The same tapping forward that extraction runs: a tap the registry names but the forward
    # never produces fails here, when the backbone is built.
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            x = torch.zeros(1, channels, probe_size, probe_size)
            if family not in GRAPH_FAMILIES:
                held, forward = fam.tapper(model, list(taps))
                shapes = {n: tuple(out.shape) for n, out in forward(held, x)}
            else:  # the traced graph has every tap (checked by its family): shapes from hooks, no second trace
                shapes = _hooked_shapes(model, list(taps), x)
    except RuntimeError as e:  # e.g. an input too small for the model's pooling or windows
        from ..runtime.errors import UsageError

        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UsageError(
            f"{name or family} does not run at {probe_size} px ({first}); try a larger --input-size"
        ) from e
    finally:
        model.train(was_training)
    geometry = {}  # module -> (channels, height of the map or side of the token grid)
    for module, tap in taps.items():
        shape = shapes[module]
        if len(shape) != (3 if tap.layout == "tokens" else 4):
            raise BackboneStructureError(
                f"{name or family} cannot be cut: {module} gives a {len(shape)}-d output, not the {tap.layout} "
                "layout its family declares"
            )
        if tap.layout == "tokens":
            side = math.isqrt(shape[1] - tap.prefix)
            geometry[module] = (shape[2], side)
        else:
            geometry[module] = (shape[3], shape[1]) if tap.layout == "nhwc" else (shape[1], shape[2])
    out = []
    for cp in cps:
        channels = sum(geometry[t.module][0] for t in cp.taps)
        height = geometry[cp.taps[-1].module][1]
        out.append(CutPoint(cp.address, cp.module, cp.taps, channels=channels, stride=probe_size // height))
    return tuple(out)


def _hooked_shapes(model, modules: list[str], x) -> dict[str, tuple]:
    """Output shapes of ``modules`` in one forward of ``model`` (forward hooks, removed after)."""
    shapes: dict[str, tuple] = {}

    def record(name):
        def hook(_module, _inputs, output) -> None:
            shapes.setdefault(name, tuple(output.shape))

        return hook

    hooks = [model.get_submodule(m).register_forward_hook(record(m)) for m in modules]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def select_addresses(spec: str | list[str] | tuple[str, ...], addresses: list[str], unknown) -> list[str]:
    """The layer grammar, one for every command: ``all``, ``blocks`` (addresses ``k``), ``units``
    (addresses ``k.u``), or addresses (``"3,3.4"`` or a list), among ``addresses`` (in their order,
    without repeats). ``unknown(address)`` gives the error message for an address not among them."""
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key == "all":
            return list(addresses)
        if key == "blocks":
            return [a for a in addresses if "." not in a]
        if key == "units":
            return [a for a in addresses if "." in a]
        wanted = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        wanted = [str(s).strip() for s in spec]
    if not wanted:
        raise UnknownCutPointError("no layers requested; valid: all, blocks, units, or addresses")
    missing = [w for w in wanted if w not in addresses]
    if missing:
        raise UnknownCutPointError(unknown(missing[0]))
    return [a for a in addresses if a in wanted]


def select_cut_points(
    cut_points: tuple[CutPoint, ...], spec: str | list[str] | tuple[str, ...], backbone: str = ""
) -> tuple[CutPoint, ...]:
    """Resolve a layer request (:func:`select_addresses`) against a backbone's cut points, in depth
    order. Unknown addresses raise :class:`UnknownCutPointError` listing the valid ones."""
    by_addr = {cp.address: cp for cp in cut_points}
    in_depth_order = sorted(by_addr, key=address_key)
    chosen = select_addresses(spec, in_depth_order, lambda bad: unknown_cut_point_message(bad, cut_points, backbone))
    return tuple(by_addr[a] for a in chosen)


def unknown_cut_point_message(bad: str, cut_points, backbone: str = "") -> str:
    of = f" of {backbone}" if backbone else ""
    kind = "not a cut point" if _ADDRESS.match(bad) else "not a cut-point address"
    hint = f" (see `tlmic layers --backbone {backbone}`)" if backbone else ""
    return (
        f"layer {bad} is {kind}{of}; valid: all, blocks, units, "
        f"{choices([cp.address for cp in cut_points], limit=10)}{hint}"
    )


def truncate(family: str, model, cut_point: CutPoint):
    """The network cut at ``cut_point``: a module mapping the normalized input to the feature map
    there (N, C, H, W), or to the tokens (N, L, C) of a transformer. It shares parameters with
    ``model``; everything after the cut is absent.
    """
    return FAMILIES[family].truncate(model, cut_point)


def storage_groups(cut_points: tuple[CutPoint, ...]) -> dict[str, str]:
    """Map each address to the address whose array stores it (cut points with identical taps,
    such as ResNet's ``2`` and ``2.4``, are stored once, under the first in depth order)."""
    first: dict[tuple[Tap, ...], str] = {}
    out = {}
    for cp in cut_points:
        out[cp.address] = first.setdefault(cp.taps, cp.address)
    return out
