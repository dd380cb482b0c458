"""open_clip image towers as backbones: ``openclip:hf-hub:ORG/NAME`` and ``openclip:DIR``
(``pip install 'tlmic[openclip]'``).

* ``openclip:hf-hub:ORG/NAME`` -- an open_clip repository in the local Hugging Face cache (its
  ``open_clip_config.json`` and ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``),
  e.g. ``openclip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``; nothing is
  downloaded when ``HF_HUB_OFFLINE`` is set. ``openclip:DIR`` (or ``openclip:local-dir:DIR``) -- a
  directory holding the same files, as open_clip's ``local-dir:`` schema reads it.
* Only the image tower is built (open_clip's own ``_build_vision_tower`` from the config's
  ``vision_cfg``; the text tower and its tokenizer are never needed). Towers with a timm trunk are
  supported (BiomedCLIP's is timm's ``vit_base_patch16_224``): the trunk is the backbone, with timm's
  cut points (family ``timm``: each transformer block, then its final norm); the tower's projection
  head is not part of it.
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
    if not timm_name:
        raise BackboneStructureError(
            f"{name}: its image tower is open_clip's own transformer; tlmic cuts open_clip towers with a timm trunk "
            "(e.g. BiomedCLIP)"
        )
    vision_cfg["timm_model_pretrained"] = False  # the checkpoint holds the trunk; nothing else is fetched

    def tower():
        from open_clip.model import _build_vision_tower

        return _build_vision_tower(model_cfg["embed_dim"], vision_cfg, model_cfg.get("quick_gelu", False))

    def at_size(trunk, size: int):
        native = tuple(trunk.patch_embed.img_size) if hasattr(trunk, "patch_embed") else None
        if size and native and (size, size) != native:
            if not hasattr(trunk, "set_input_size"):
                raise UsageError(f"{name} is fixed to {native[0]} px inputs; use --input-size 0")
            trunk.set_input_size(img_size=size)  # timm resamples the position embeddings
        return trunk

    def build(size: int = 0):
        return at_size(tower().trunk, size)

    def preprocess(variant: str) -> Preprocess:
        if variant:
            raise UsageError(f"{name} has one checkpoint; use --weights imagenet, not imagenet:{variant}")
        from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

        cfg = PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(), config.get("preprocess_cfg", {})))
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
        return at_size(model.trunk, size)

    def load_imagenet(variant: str, size: int):
        preprocess(variant)
        if weights is None:
            raise WeightsUnavailableError(not_cached_message(ref, folder))
        from ..data.manifest import file_sha256

        model = from_state(read_state_dict(weights), size, f"weights {weights}")
        return model, f"{name.removeprefix('openclip:')}/{weights.name}", file_sha256(weights)

    import hashlib

    return BackboneSpec(
        name,
        "timm",
        build,
        preprocess,
        load_imagenet,
        from_state,
        f"open_clip image tower, timm {timm_name} trunk ({where})",
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
