"""open_clip image towers as backbones: ``openclip:hf-hub:ORG/NAME`` and ``openclip:DIR``
(``pip install 'tlmic[openclip]'``).

* ``openclip:hf-hub:ORG/NAME`` -- an open_clip repository in the local Hugging Face cache (its
  ``open_clip_config.json`` and ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``),
  e.g. ``openclip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``; nothing is
  downloaded when ``HF_HUB_OFFLINE`` is set. ``openclip:DIR`` (or ``openclip:local-dir:DIR``) -- a
  directory holding the same files, as open_clip's ``local-dir:`` schema reads it.
* Only the image tower is built (open_clip's own ``_build_vision_tower`` from the config's
  ``vision_cfg``; the text tower and its tokenizer are never needed). The tower's projection head is
  never part of the backbone. Three kinds of tower:

  - a timm trunk (BiomedCLIP's is timm's ``vit_base_patch16_224``): the trunk is the backbone, with
    timm's cut points (family ``timm``: each transformer block, then its final norm);
  - open_clip's own ``VisionTransformer`` (OpenAI's and LAION's ViT-B/32, ViT-B/16, ViT-L/14, and the
    models fine-tuned from them), family ``openclip_vit``: address ``k`` is the output of
    ``transformer.resblocks[k-1]`` (tokens: the class token, then the patch grid), ``N + 1`` its
    ``ln_post`` applied to every token (the final norm, what the tower pools; a config with
    ``final_ln_after_pool`` norms the pooled token instead, which tlmic's pooling then does not
    reproduce for ``avg``); another
    ``--input-size`` resamples the position embeddings as open_clip's ``resize_pos_embed`` does;
  - open_clip's ``ModifiedResNet`` (OpenAI's RN50, RN101, ...), family ``openclip_resnet``: the
    addresses of torchvision's ResNet (``k`` = ``layer{k}``, ``k.u`` its bottleneck ``u``) after its
    three-convolution stem; the attention pool is not part of it.
* Preprocessing: open_clip's own evaluation transform for the config's ``preprocess_cfg``
  (``image_transform_v2``): its resize, centre crop, mean and std, read off the transform.
* Weights: ``imagenet`` is the repository's checkpoint (its ``visual.`` tensors, loaded strictly,
  never unpickled); ``random`` the tower freshly initialized; a file an open_clip state dict.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..runtime.errors import BackboneStructureError, UsageError, WeightsUnavailableError
from .preprocess import Preprocess
from .spec import BackboneSpec
from .taps import CutPoint, Tap
from .weights import first_error_line, hf_cache_dir, hf_cached_file, hf_hub_reachable, hf_offline, read_state_dict

CONFIG = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _open_clip():
    from .extras import require

    return require("openclip:")


def openclip_spec(ref: str) -> BackboneSpec:
    """The recipe of ``openclip:REF`` (see the module docstring)."""
    _open_clip()
    name, folder, weights, where = resolve(ref)
    text = (folder / CONFIG).read_text()
    config = json.loads(text)
    model_cfg = config.get("model_cfg", config)
    vision_cfg = dict(model_cfg.get("vision_cfg", {}))
    timm_name = vision_cfg.get("timm_model_name")
    kind = "timm" if timm_name else "resnet" if isinstance(vision_cfg.get("layers"), (list, tuple)) else "vit"
    if kind == "vit" and vision_cfg.get("attentional_pool"):
        raise BackboneStructureError(
            f"{name}: its image tower ends in an attentional pooler (CoCa); tlmic cuts open_clip towers with a "
            "timm trunk, a VisionTransformer or a ModifiedResNet"
        )
    vision_cfg["timm_model_pretrained"] = False  # the checkpoint holds the trunk; nothing else is fetched
    # patch dropout regularizes CLIP's pretraining; tlmic finetunes no family with it (it drops tokens)
    vision_cfg["patch_dropout"] = 0.0
    native = vision_cfg.get("image_size", 224)
    native = int(native if isinstance(native, int) else native[0])

    def tower(size: int = 0):
        from open_clip.model import _build_vision_tower

        cfg = {**vision_cfg, "image_size": size} if size and kind == "vit" else vision_cfg
        return _build_vision_tower(model_cfg["embed_dim"], cfg, model_cfg.get("quick_gelu", False))

    def at_size(trunk, size: int):
        native = tuple(trunk.patch_embed.img_size) if hasattr(trunk, "patch_embed") else None
        if size and native and (size, size) != native:
            if not hasattr(trunk, "set_input_size"):
                raise UsageError(f"{name} is fixed to {native[0]} px inputs; use --input-size 0")
            trunk.set_input_size(img_size=size)  # timm resamples the position embeddings
        return trunk

    def build(size: int = 0):
        return at_size(tower().trunk, size) if kind == "timm" else tower(size)

    def preprocess(variant: str) -> Preprocess:
        if variant:
            raise UsageError(f"{name} has one checkpoint; use --weights imagenet, not imagenet:{variant}")
        from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

        merged = merge_preprocess_dict(PreprocessCfg(), config.get("preprocess_cfg", {}))
        cfg = PreprocessCfg(**{**merged, "size": native})  # open_clip sets it to the tower's image size
        if cfg.resize_mode != "shortest":
            raise UsageError(f"{name}: open_clip resize_mode {cfg.resize_mode!r} is not supported; valid: shortest")
        return transform_preprocess(image_transform_v2(cfg, is_train=False), f"open_clip transform of {name}")

    def from_state(state: dict, size: int, what: str):
        visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
        if not visual:
            raise WeightsUnavailableError(f"{what} holds no open_clip image tower (no visual.* tensors)")
        model = tower()
        try:
            model.load_state_dict(visual, strict=True)
        except RuntimeError as e:
            raise WeightsUnavailableError(f"{what} does not fit {name}'s image tower: {first_error_line(e)}") from e
        if kind == "timm":
            return at_size(model.trunk, size)
        if kind == "vit" and size and size != native:
            return vit_at_size(model, tower(size))
        return model

    def load_imagenet(variant: str, size: int):
        preprocess(variant)
        if weights is None:
            raise WeightsUnavailableError(not_cached_message(ref, folder))
        from ..data.manifest import file_sha256

        model = from_state(read_state_dict(weights), size, f"weights {weights}")
        return model, f"{name.removeprefix('openclip:')}/{weights.name}", file_sha256(weights)

    import hashlib

    trunk = {
        "timm": f"timm {timm_name} trunk",
        "vit": f"open_clip VisionTransformer, {vision_cfg.get('layers')} blocks, patch {vision_cfg.get('patch_size')}",
        "resnet": f"open_clip ModifiedResNet {vision_cfg.get('layers')}",
    }[kind]
    return BackboneSpec(
        name,
        {"timm": "timm", "vit": "openclip_vit", "resnet": "openclip_resnet"}[kind],
        build,
        preprocess,
        load_imagenet,
        from_state,
        f"open_clip image tower, {trunk} ({where})",
        table_key=hashlib.sha256(text.encode()).hexdigest()[:12],
    )


def transform_preprocess(transform, source: str) -> Preprocess:
    """A torchvision evaluation transform (Resize to the shorter side, CenterCrop, ..., Normalize) as a
    :class:`Preprocess`, read off its steps."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", [transform]))
    resize = next((s for s in steps if isinstance(s, T.Resize)), None)
    crop = next((s for s in steps if isinstance(s, T.CenterCrop)), None)
    norm = next((s for s in steps if isinstance(s, T.Normalize)), None)
    if resize is None or crop is None or norm is None or (not isinstance(resize.size, int) and len(resize.size) != 1):
        raise UsageError(f"{source}: tlmic reads a Resize(shorter side), CenterCrop, Normalize transform; got {steps}")
    size = resize.size if isinstance(resize.size, int) else resize.size[0]
    return Preprocess(
        input_size=int(crop.size[0]),
        resize_size=int(size),
        interpolation=str(resize.interpolation.value),
        mean=tuple(float(m) for m in norm.mean),
        std=tuple(float(s) for s in norm.std),
        source=source,
    )


def resolve(ref: str) -> tuple[str, Path, Path | None, str]:
    """``(name, folder with open_clip_config.json, weights file or None, where)`` of ``openclip:REF``."""
    if ref.startswith("hf-hub:"):
        repo = ref.removeprefix("hf-hub:")
        config = hf_cached_file(repo, (CONFIG,))
        if config is None and not hf_offline():
            _download(repo)
            config = hf_cached_file(repo, (CONFIG,))
        if config is None:
            raise WeightsUnavailableError(not_cached_message(ref, None))
        weights = next((config.parent / f for f in WEIGHT_FILES if (config.parent / f).is_file()), None)
        return f"openclip:{ref}", config.parent, weights, f"Hugging Face cache {hf_cache_dir()}"
    path = Path(ref.removeprefix("local-dir:")).expanduser()
    if not path.is_dir():
        raise UsageError(f"openclip:{ref} is neither hf-hub:ORG/NAME nor a directory")
    if not (path / CONFIG).is_file():
        raise UsageError(f"openclip:{ref}: the directory has no {CONFIG}")
    path = path.resolve()
    weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
    return f"openclip:{path}", path, weights, f"directory {path}"


def not_cached_message(ref: str, folder: Path | None) -> str:
    repo = ref.removeprefix("hf-hub:")
    what = (
        f"its weights ({' or '.join(WEIGHT_FILES)}) are not in {folder}"
        if folder
        else (f"it is not in the Hugging Face cache {hf_cache_dir()}")
    )
    offline = " and HF_HUB_OFFLINE is set" if hf_offline() and ref.startswith("hf-hub:") else ""
    return (
        f"openclip:{ref}: {what}{offline}: download it where there is a network (`hf download {repo}`, then copy "
        "the cache or set HF_HUB_CACHE), or put open_clip_config.json and the weights in a directory and use "
        "openclip:DIR"
    )


def _download(repo: str) -> None:
    from huggingface_hub import hf_hub_download

    if not hf_hub_reachable():  # no network: the caller reports what is missing, at once
        return
    for filename in (CONFIG, *WEIGHT_FILES):
        try:
            hf_hub_download(repo, filename, cache_dir=str(hf_cache_dir()))
        except Exception:  # offline, no such file: the caller reports what is missing
            if filename == CONFIG:
                return
        else:
            if filename in WEIGHT_FILES:
                return


def cached_openclip_models() -> list[tuple[str, str]]:
    """``(openclip:hf-hub:ORG/NAME, snapshot)`` of open_clip repositories whose config and weights are in
    the Hugging Face cache (read from its folders; nothing imported)."""
    root = hf_cache_dir()
    out = []
    for repo in sorted(root.glob("models--*--*")) if root.is_dir() else []:
        for snap in sorted((repo / "snapshots").glob("*")):
            if (snap / CONFIG).is_file() and any((snap / f).is_file() for f in WEIGHT_FILES):
                out.append(("openclip:hf-hub:" + repo.name.removeprefix("models--").replace("--", "/", 1), str(snap)))
                break
    return out


# --- families "openclip_vit" and "openclip_resnet": open_clip's own image towers -------------------------


def vit_at_size(tower, resized):
    """``tower``'s weights in ``resized`` (the same tower built for another input size), its position
    embeddings resampled by open_clip's own ``resize_pos_embed`` (bicubic, antialiased)."""
    from types import SimpleNamespace

    from open_clip.model import resize_pos_embed

    state = {f"visual.{k}": v for k, v in tower.state_dict().items()}
    resize_pos_embed(state, SimpleNamespace(visual=resized))
    resized.load_state_dict({k.removeprefix("visual."): v for k, v in state.items()}, strict=True)
    return resized


def _lnd(tower) -> bool:
    """open_clip's transformer runs sequence-first (L, N, D) unless ``batch_first`` (open_clip before 2.32;
    not exercised by the tests, which run open_clip 3)."""
    return not getattr(tower.transformer, "batch_first", True)


def openclip_vit_cut_points(model, name: str = "") -> list[CutPoint]:
    tokens = {"layout": "tokens", "prefix": 1, "class_token": True}
    n = len(model.transformer.resblocks)
    out = [
        CutPoint(f"{k}", f"transformer.resblocks.{k - 1}", (Tap(f"transformer.resblocks.{k - 1}", **tokens),))
        for k in range(1, n + 1)
    ]
    out.append(CutPoint(f"{n + 1}", "ln_post (final norm)", (Tap("ln_post", **tokens),)))
    return out


def openclip_vit_tapper(model, modules):
    lnd = _lnd(model)

    def taps(held, x):
        h = held._embeds(x)  # open_clip's own: patches, class token, position embeddings, ln_pre
        h = h.transpose(0, 1) if lnd else h
        for i, block in enumerate(held.transformer.resblocks):
            h = block(h)
            yield f"transformer.resblocks.{i}", h.transpose(0, 1) if lnd else h
        yield "ln_post", held.ln_post(h.transpose(0, 1) if lnd else h)

    return model, taps


def _tower_part(tower, parts: tuple[str, ...], method: str):
    """A module holding ``tower``'s own ``parts`` (its modules and parameters, shared, not copied) whose
    forward is open_clip's own ``method`` of the tower's class run on them (``_embeds``, ``stem``)."""
    import torch.nn as nn

    class TowerPart(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for part in parts:
                setattr(self, part, getattr(tower, part))

        def forward(self, x):
            return getattr(type(tower), method)(self, x)

    return TowerPart()


def openclip_vit_truncate(model, cp: CutPoint):
    """The tower's embedding (open_clip's ``_embeds`` on its own parameters), its first ``k`` blocks, and for
    the last address ``ln_post``: tokens ``(N, L, C)``."""
    import torch.nn as nn

    blocks = model.transformer.resblocks
    k, lnd = cp.block, _lnd(model)

    class TruncatedTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            parts = ("conv1", "class_embedding", "positional_embedding", "patch_dropout", "ln_pre")
            self.embeddings = _tower_part(model, parts, "_embeds")
            self.blocks = nn.ModuleList(list(blocks)[: min(k, len(blocks))])
            self.norm = model.ln_post if k > len(blocks) else None

        def forward(self, x):
            h = self.embeddings(x)
            h = h.transpose(0, 1) if lnd else h
            for block in self.blocks:
                h = block(h)
            h = h.transpose(0, 1) if lnd else h
            return self.norm(h) if self.norm is not None else h

    return TruncatedTower()


def openclip_resnet_tapper(model, modules):
    def taps(held, x):
        x = held.stem(x)  # open_clip's own: three convolutions and an average pool
        for k in range(1, 5):
            for u, block in enumerate(getattr(held, f"layer{k}")):
                x = block(x)
                yield f"layer{k}.{u}", x

    return model, taps


def openclip_resnet_truncate(model, cp: CutPoint):
    """The tower's stem (open_clip's ``stem`` on its own modules), ``layer1`` .. ``layer{k}`` (its first ``u``
    bottlenecks for ``k.u``): a map ``(N, C, H, W)``."""
    import torch.nn as nn

    parts = ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3", "bn3", "act3", "avgpool")
    stem = _tower_part(model, parts, "stem")
    layers = [getattr(model, f"layer{k}") for k in range(1, cp.block + 1)]
    if cp.unit is not None:
        layers[-1] = layers[-1][: cp.unit]
    return nn.Sequential(stem, *layers)
