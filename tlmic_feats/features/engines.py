"""Extraction engines: the tapping network run by torch (eager or compiled), onnxruntime or OpenVINO.

All run the same graph, :func:`~tlmic_feats.backbones.cutpoints.tap_network`: uint8 grayscale
pixels in, one pooled ``(N, C)`` output per stored cut point out, normalization included.

* :class:`TorchEngine`: ``inference_mode``, channels_last, bf16/fp16 autocast where chosen,
  pinned memory and non-blocking copies on GPU, optional ``torch.compile``.
* :class:`OnnxEngine`: the graph exported once (one named output per cut point) and cached under
  ``cache/onnx/`` by its fingerprint; run with onnxruntime. When CUDA is asked for, the session's
  providers are checked: onnxruntime falls back to the CPU silently otherwise.
* :class:`OpenVinoEngine`: the ONNX engine's graph converted once by OpenVINO
  (``openvino.convert_model``) and cached as IR under ``cache/openvino/`` by the same fingerprint;
  compiled for the CPU with the precision as its ``INFERENCE_PRECISION_HINT``, torch's thread
  count, and the throughput hint (each batch split over the compiled model's parallel requests).
  An optional dependency: ``pip install tlmic[openvino]``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.errors import MissingDependencyError, RunError, UsageError
from ..runtime.paths import slug

ENGINES = ("torch", "onnx", "openvino")
OPENVINO_EXTRA = "pip install 'tlmic[openvino]'"
# tlmic's precision names -> OpenVINO's inference precision, and the CPU capability it needs.
OPENVINO_PRECISIONS = {"fp32": ("f32", "FP32"), "bf16": ("bf16", "BF16"), "fp16": ("f16", "FP16")}


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


def graph_path(cache_dir: Path, engine: str, backbone, pool: str, key: dict, suffix: str) -> Path:
    """Where an engine keeps the graph of one fingerprint:
    ``<cache_dir>/<engine>/<backbone>-<pool>-<digest><suffix>``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / engine / f"{slug(backbone.name)}-{pool}-{digest}{suffix}"


def onnx_graph(backbone, cut_points, pool: str, cache_dir: Path, key: dict) -> Path:
    """The tapping network exported to ONNX (one named output per cut point), exported on first use
    and cached under ``<cache_dir>/onnx/`` by ``key``."""
    import torch

    from ..backbones.cutpoints import tap_network
    from ..backbones.export import write_onnx

    path = graph_path(cache_dir, "onnx", backbone, pool, key, ".onnx")
    if not path.is_file():
        net = tap_network(backbone.family, backbone.model, cut_points, pool, backbone.preprocess).eval()
        size = backbone.preprocess.input_size
        example = torch.zeros(2, 1, size, size, dtype=torch.uint8)
        write_onnx(net, example, path, output_names=[f"layer_{cp.address}" for cp in cut_points])
    return path


class OnnxEngine:
    name = "onnx"

    def __init__(self, backbone, cut_points, pool: str, device: str, cache_dir: Path, key: dict) -> None:
        import onnxruntime as ort

        path = onnx_graph(backbone, cut_points, pool, cache_dir, key)
        self.output_names = [f"layer_{cp.address}" for cp in cut_points]
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), providers=providers)
        if device.startswith("cuda") and "CUDAExecutionProvider" not in self.session.get_providers():
            raise RunError(
                f"onnxruntime did not start its CUDA provider (it runs on {self.session.get_providers()}); it needs "
                "onnxruntime-gpu installed alone (tlmic[gpu]; it shares one module with the CPU onnxruntime: pip "
                "uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu) and CUDA and cuDNN libraries "
                "it can load (`tlmic doctor` checks both), or use --engine torch"
            )
        self.path = path
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, pixels) -> list[np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(pixels.numpy())})
        return [np.asarray(o, dtype=np.float32) for o in outs]


def import_openvino():
    """The ``openvino`` module, or a one-line error naming the extra that installs it."""
    try:
        import openvino
    except ImportError as e:
        raise MissingDependencyError(
            f"--engine openvino needs the openvino package, which is not installed ({e}); {OPENVINO_EXTRA}"
        ) from None
    return openvino


def openvino_precisions(core=None) -> tuple[str, ...]:
    """tlmic's precisions that OpenVINO's CPU plugin offers on this CPU (its ``OPTIMIZATION_CAPABILITIES``)."""
    core = core or import_openvino().Core()
    offered = set(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return tuple(p for p, (_, capability) in OPENVINO_PRECISIONS.items() if capability in offered)


class OpenVinoEngine:
    name = "openvino"

    def __init__(self, backbone, cut_points, pool: str, precision: str, cache_dir: Path, key: dict) -> None:
        import torch

        ov = import_openvino()
        core = ov.Core()
        offered = openvino_precisions(core)
        if precision not in offered:
            raise UsageError(
                f"--engine openvino --precision {precision}: this CPU's OpenVINO plugin offers "
                f"{', '.join(offered)} (see `tlmic doctor`)"
            )
        self.path = graph_path(cache_dir, "openvino", backbone, pool, key, ".xml")
        if not self.path.is_file():
            _save_openvino_ir(ov, onnx_graph(backbone, cut_points, pool, cache_dir, key), self.path)
        hint, _ = OPENVINO_PRECISIONS[precision]
        self.compiled = core.compile_model(
            str(self.path),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": hint,
                "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                "PERFORMANCE_HINT": "THROUGHPUT",
            },
        )
        # OpenVINO ignores a hint it cannot honour instead of failing: check what it compiled.
        got = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        if got != getattr(ov.Type, hint):
            raise RunError(f"OpenVINO compiled for {got} where {hint} ({precision}) was asked; use --precision fp32")
        self.n_requests = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.queue = ov.AsyncInferQueue(self.compiled, self.n_requests)
        self.outputs = list(self.compiled.outputs)

    def __call__(self, pixels) -> list[np.ndarray]:
        x = np.ascontiguousarray(pixels.numpy() if hasattr(pixels, "numpy") else pixels)
        parts = np.array_split(x, min(self.n_requests, len(x)))
        results: list[list[np.ndarray] | None] = [None] * len(parts)

        def done(request, i) -> None:  # copies: a request's output tensors are reused by its next run
            results[i] = [np.array(request.get_tensor(o).data, dtype=np.float32) for o in self.outputs]

        self.queue.set_callback(done)
        for i, part in enumerate(parts):
            self.queue.start_async({0: part}, i)
        self.queue.wait_all()
        return [np.concatenate([r[j] for r in results]) for j in range(len(self.outputs))]


def _save_openvino_ir(ov, onnx_path: Path, path: Path) -> None:
    """Convert the cached ONNX graph to OpenVINO IR (``.xml`` + ``.bin``) at ``path``, atomically: both
    files are written in a temporary folder and moved in, the ``.xml`` (what marks a complete entry) last.

    From the ONNX graph rather than the torch module: OpenVINO's torch frontend cannot convert the
    whole-map pooling of some backbones (EfficientNet-Lite0: ``avg_pool2d`` with a kernel read from
    the map's shape), which the ONNX exporter turns into constants.
    """
    import tempfile

    model = ov.convert_model(str(onnx_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        ov.save_model(model, str(staged), compress_to_fp16=False)  # its default would halve the weights' precision
        staged.with_suffix(".bin").replace(path.with_suffix(".bin"))
        staged.replace(path)


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
    if name == "openvino":
        if device != "cpu":
            raise UsageError(f"--engine openvino runs on the CPU; got --device {device} (use --device cpu)")
        return OpenVinoEngine(backbone, cut_points, pool, precision, cache_dir, key or {})
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
