"""Any timm or torchvision classification model as a backbone: ``timm:NAME`` and ``tv:NAME``.

* ``timm:NAME`` (``NAME`` as ``timm.list_models`` spells it, optionally ``NAME.TAG`` for one of its
  pretrained weight sets): preprocessing from timm's pretrained config of that tag (its test-time
  input size where it has one, as timm's own validation); ``--weights imagenet`` loads that tag's
  weights from the local Hugging Face cache, and downloads them only when ``HF_HUB_OFFLINE`` is
  unset; ``--weights PATH`` goes through timm's own checkpoint filter (a ViT's position
  embeddings are resampled to the input size).
* ``tv:NAME`` (``torchvision.models.list_models``): preprocessing from the chosen weights
  member's own ``transforms()`` (``imagenet`` is ``IMAGENET1K_V1``; ``imagenet:IMAGENET1K_V2``
  or ``imagenet:DEFAULT`` pick another); weights from the ``TORCH_HOME`` cache or a download, as
  torchvision does.

Fixed-size models (vision transformers) are built for the input size they will see.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from ..runtime.errors import UnknownBackboneError, UsageError, WeightsUnavailableError, choices
from .preprocess import Preprocess
from .spec import BackboneSpec
from .weights import first_error_line, hf_cache_dir, hf_cached_file, hf_offline, load_state, read_state_dict

# torchvision's fixed-size families and the builder argument that sets their input size
_TV_FIXED = {"vit_": "image_size"}


# --- timm -------------------------------------------------------------------------------------------


def timm_spec(name: str) -> BackboneSpec:
    """The recipe of ``timm:NAME`` (``NAME`` or ``NAME.TAG``)."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        import difflib

        near = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        raise UnknownBackboneError(
            f"unknown timm model {name!r}"
            + (f"; did you mean {choices('timm:' + n for n in near)}" if near else "")
            + f" (see `tlmic backbones '{arch[:5]}*'`)"
        )
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # "Invalid pretrained tag"
        cfg = None
    if cfg is None:
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
        raise UnknownBackboneError(f"timm model {arch} has no pretrained tag {tag!r}; valid: {choices(tags)}")
    cfg = cfg.to_dict()
    full = f"{arch}.{cfg.get('tag') or tag}" if (cfg.get("tag") or tag) else arch
    native = int(cfg["input_size"][-1])

    def kwargs(size: int) -> dict:
        return {"img_size": size} if cfg.get("fixed_input_size") and size and size != native else {}

    def build(size: int):
        return timm.create_model(name, pretrained=False, **kwargs(size))

    def preprocess(variant: str) -> Preprocess:
        _no_variant(name, variant)
        from timm.data import resolve_data_config

        data = resolve_data_config(pretrained_cfg=cfg, use_test_size=True)
        return Preprocess.from_timm(data, source=f"timm pretrained cfg of {full}")

    def from_state(state: dict, size: int, what: str):
        try:
            # through timm's loader: its checkpoint filter adapts original checkpoints and resamples
            # a ViT's position embeddings to the model's input size
            return timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay={"state_dict": state, "source": ""}, **kwargs(size)
            )
        except Exception as e:
            raise WeightsUnavailableError(f"{what} does not fit timm:{name}: {first_error_line(e)}") from e

    def load_imagenet(variant: str, size: int):
        _no_variant(name, variant)
        path = _timm_weights_file(name, cfg)
        from ..data.manifest import file_sha256

        model = from_state(read_state_dict(path), size, f"weights {path}")
        return model, f"{cfg['hf_hub_id']}/{path.name}", file_sha256(path)

    return BackboneSpec(
        f"timm:{name}", "timm", build, preprocess, load_imagenet, from_state, f"timm {full} ({native} px)"
    )


def _no_variant(name: str, variant: str) -> None:
    if variant:
        raise UsageError(
            f"timm:{name}: weights are chosen by the model's tag (timm:NAME.TAG, e.g. timm:resnet50.a1_in1k), "
            f"not imagenet:{variant}; use --weights imagenet"
        )


def _timm_files(cfg: dict) -> tuple[str, ...]:
    return (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else ("model.safetensors", "pytorch_model.bin")


def _timm_weights_file(name: str, cfg: dict) -> Path:
    """The pretrained weights file of a timm model from the local Hugging Face cache; downloaded
    into it first only when ``HF_HUB_OFFLINE`` is unset."""
    repo = cfg.get("hf_hub_id")
    if not repo:
        raise WeightsUnavailableError(
            f"timm:{name} has no pretrained weights on the Hugging Face hub; pass --weights PATH (.safetensors or .pth)"
        )
    files = _timm_files(cfg)
    found = hf_cached_file(repo, files)
    if found is not None:
        return found
    where = f"{repo} ({' or '.join(files)}) is not in the Hugging Face cache {hf_cache_dir()}"
    how = (
        f"download it where there is a network (`hf download {repo}`, then copy the cache or set HF_HUB_CACHE) "
        "or pass --weights PATH (.safetensors or .pth)"
    )
    if hf_offline():
        raise WeightsUnavailableError(f"{where} and HF_HUB_OFFLINE is set: {how}")
    from huggingface_hub import hf_hub_download

    errors = []
    for filename in files:
        try:
            hf_hub_download(repo, filename, cache_dir=str(hf_cache_dir()))
        except Exception as e:  # offline, missing file, hub errors: all reported in one line below
            errors.append(type(e).__name__)
            continue
        found = hf_cached_file(repo, files)
        if found is not None:
            return found
    raise WeightsUnavailableError(f"{where} and the download failed ({', '.join(errors)}): {how}")


# --- torchvision ------------------------------------------------------------------------------------


def tv_family(name: str) -> str:
    """The cut-point family of a torchvision model: its ResNets and DenseNets have curated ones."""
    if name.startswith(("resnet", "resnext", "wide_resnet")):
        return "resnet"
    return "densenet" if name.startswith("densenet") else "tv"


def tv_spec(name: str, *, display: str = "", description: str = "", check: bool = True) -> BackboneSpec:
    """The recipe of ``tv:NAME`` (and of the curated torchvision names, ``display`` being theirs;
    those skip the name check, which imports torchvision)."""
    if check:
        _check_tv_name(name)
    display = display or f"tv:{name}"
    size_arg = next((a for p, a in _TV_FIXED.items() if name.startswith(p)), "")

    def member(variant: str):
        import torchvision.models as tvm

        enum = tvm.get_model_weights(name)
        m = variant or ("IMAGENET1K_V1" if "IMAGENET1K_V1" in enum.__members__ else "DEFAULT")
        if m not in enum.__members__:
            valid = choices("imagenet:" + w for w in enum.__members__)
            raise UsageError(f"weights imagenet:{m} unknown for {display}; valid: {valid}")
        return enum[m]

    def native() -> int:
        return Preprocess.from_torchvision(member("")).input_size

    def build(size: int):
        import torchvision.models as tvm

        kw = {size_arg: size} if size_arg and size and size != native() else {}
        return tvm.get_model(name, weights=None, **kw)

    def preprocess(variant: str) -> Preprocess:
        return Preprocess.from_torchvision(member(variant))

    def load_imagenet(variant: str, size: int):
        w = member(variant)
        own = Preprocess.from_torchvision(w).input_size
        if size_arg and size and size != own:
            raise UsageError(
                f"{display}'s {w.name} weights are for {own} px inputs, not --input-size {size}; use random weights, "
                "or a timm ViT (timm resamples position embeddings)"
            )
        return _torchvision_weights(w, name), f"{type(w).__name__}.{w.name}", _url_sha(w.url)

    def from_state(state: dict, size: int, what: str):
        model = build(size)
        load_state(model, state, what)
        return model

    return BackboneSpec(
        display, tv_family(name), build, preprocess, load_imagenet, from_state, description or f"torchvision {name}"
    )


def _check_tv_name(name: str) -> None:
    import torchvision.models as tvm

    valid = tvm.list_models(module=tvm)
    if name not in valid:
        import difflib

        near = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
        raise UnknownBackboneError(
            f"unknown torchvision classification model {name!r}"
            + (f"; did you mean {choices('tv:' + n for n in near)}" if near else f"; valid: {choices(valid)}")
        )


def _torchvision_weights(weights, name: str):
    import urllib.error

    import torchvision.models as tvm
    from torch.hub import get_dir

    try:
        # The builder, not a bare load_state_dict: DenseNet checkpoints need torchvision's key remapping.
        return tvm.get_model(name, weights=weights, progress=False)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        cache = Path(get_dir()) / "checkpoints" / os.path.basename(weights.url)
        raise WeightsUnavailableError(
            f"cannot get ImageNet weights for {name} ({os.path.basename(weights.url)}): not in "
            f"the cache {cache} and the download failed ({type(e).__name__}); when offline, "
            "pass --weights PATH to a state dict file"
        ) from e


def _url_sha(url: str) -> str:
    # torchvision checkpoints carry the first hex digits of their sha256 in the file name
    # (resnet50-0676ba61.pth); the full file hash is computed when the file is local.
    from torch.hub import get_dir

    from ..data.manifest import file_sha256

    path = Path(get_dir()) / "checkpoints" / os.path.basename(url)
    return file_sha256(path) if path.exists() else "url:" + os.path.basename(url)


# --- listing ----------------------------------------------------------------------------------------


def matching_models(pattern: str) -> list[tuple[str, str]]:
    """``(name, note)`` of the timm and torchvision models matching ``pattern`` (shell-style, or a
    substring when it has no wildcard; ``timm:``/``tv:`` restricts to one library). A timm model
    whose default pretrained weights are in the local Hugging Face cache says so."""
    import timm
    import torchvision.models as tvm

    out = []
    for prefix, names in (("timm:", lambda: timm.list_models()), ("tv:", lambda: tvm.list_models(module=tvm))):
        if pattern.startswith(("timm:", "tv:")) and not pattern.startswith(prefix):
            continue
        pat = pattern.removeprefix(prefix)
        pat = pat if any(c in pat for c in "*?[") else f"*{pat}*"
        for n in names():
            if fnmatch.fnmatch(n, pat):
                out.append((prefix + n, _note(prefix, n)))
    return out


def _note(prefix: str, name: str) -> str:
    if prefix == "tv:":
        return "torchvision"
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    repo = cfg.hf_hub_id if cfg is not None else None
    if repo and hf_cached_file(repo, _timm_files(cfg.to_dict())) is not None:
        return f"timm; weights in the local HF cache ({repo})"
    return "timm"
