"""Extraction engines: the tapping network run by torch (eager or compiled) or by onnxruntime.

Both run the same graph, :func:`~tlmic_feats.backbones.cutpoints.tap_network`: uint8 grayscale
pixels in, one pooled ``(N, C)`` output per stored cut point out, normalization included.

* :class:`TorchEngine`: ``inference_mode``, channels_last, bf16/fp16 autocast where chosen,
  pinned memory and non-blocking copies on GPU, optional ``torch.compile``.
* :class:`OnnxEngine`: the graph exported once (one named output per cut point) and cached under
  ``cache/onnx/`` by its fingerprint; run with onnxruntime. When CUDA is asked for, the session's
  providers are checked: onnxruntime falls back to the CPU silently otherwise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.errors import RunError, UsageError

ENGINES = ("torch", "onnx")


class TorchEngine:
    name = "torch"

    def __init__(self, backbone, cut_points, pool: str, device: str, precision: str, compile: bool = False) -> None:
        import torch

        from ..backbones.cutpoints import tap_network
        from ..runtime.devices import autocast

        self.device = device
        self.net = tap_network(backbone.family, backbone.model, cut_points, pool, backbone.preprocess)
        # channels_last: about 2x faster convolutions on CPU (oneDNN) and on GPU tensor cores.
        self.net.eval().to(device, memory_format=torch.channels_last)
        self._autocast = lambda: autocast(device, precision)
        self._run = torch.compile(self.net, dynamic=True) if compile else self.net

    def __call__(self, pixels) -> list[np.ndarray]:
        import torch

        x = pixels.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            outs = self._run(x)
        return [o.float().cpu().numpy() for o in outs]


class OnnxEngine:
    name = "onnx"

    def __init__(self, backbone, cut_points, pool: str, device: str, cache_dir: Path, key: dict) -> None:
        import onnxruntime as ort
        import torch

        from ..backbones.cutpoints import tap_network
        from ..backbones.export import write_onnx

        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"{backbone.name}-{pool}-{digest}.onnx"
        self.output_names = [f"layer_{cp.address}" for cp in cut_points]
        if not path.is_file():
            net = tap_network(backbone.family, backbone.model, cut_points, pool, backbone.preprocess).eval()
            size = backbone.preprocess.input_size
            example = torch.zeros(2, 1, size, size, dtype=torch.uint8)
            write_onnx(net, example, path, output_names=self.output_names)
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), providers=providers)
        if device.startswith("cuda") and "CUDAExecutionProvider" not in self.session.get_providers():
            raise RunError(
                f"onnxruntime did not start its CUDA provider (it runs on {self.session.get_providers()}); check "
                "that onnxruntime-gpu (not onnxruntime) is installed with CUDA and cuDNN libraries it can load "
                "(`tlmic doctor`), or use --engine torch"
            )
        self.path = path
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, pixels) -> list[np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(pixels.numpy())})
        return [np.asarray(o, dtype=np.float32) for o in outs]


def make_engine(
    name: str,
    backbone,
    cut_points,
    pool: str,
    device: str,
    precision: str,
    *,
    compile: bool = False,
    cache_dir: Path | None = None,
    key: dict | None = None,
):
    if name == "torch":
        return TorchEngine(backbone, cut_points, pool, device, precision, compile)
    if name == "onnx":
        if precision != "fp32":
            raise UsageError(f"--engine onnx runs fp32; got --precision {precision} (use --engine torch for it)")
        return OnnxEngine(backbone, cut_points, pool, device, cache_dir, key or {})
    raise UsageError(f"--engine {name!r} is not valid; valid: {', '.join(ENGINES)}")


# --- built once per worker process (Dask) ---

_ENGINES: dict[str, object] = {}


@dataclass(frozen=True)
class EngineSpec:
    """What a worker needs to build the extraction engine (once per process)."""

    backbone: str
    weights: str
    seed: int
    input_size: int
    addresses: tuple[str, ...]
    pool: str
    engine: str
    precision: str
    device: str
    compile: bool
    cache_dir: str
    key: str  # JSON of the fingerprint parts that define the network (ONNX cache key)


def worker_engine(spec: EngineSpec, threads: int = 0):
    """The engine for ``spec``, built on first use in this process and kept for later tasks."""
    import json
    from pathlib import Path

    import torch

    from ..backbones.registry import build_backbone
    from ..runtime.devices import resolve_device
    from .engines import make_engine

    if threads:
        torch.set_num_threads(threads)
    key = repr(spec)
    if key not in _ENGINES:
        _ENGINES.clear()  # one backbone at a time per worker
        backbone = build_backbone(spec.backbone, spec.weights, seed=spec.seed, input_size=spec.input_size)
        stored = tuple(backbone.cut_point(a) for a in spec.addresses)
        engine = make_engine(
            spec.engine,
            backbone,
            stored,
            spec.pool,
            resolve_device(spec.device),
            spec.precision,
            compile=spec.compile,
            cache_dir=Path(spec.cache_dir),
            key=json.loads(spec.key),
        )
        _ENGINES[key] = (backbone, engine)
    return _ENGINES[key]
