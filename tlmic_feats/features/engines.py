"""Extraction engines: the tapping network run by torch (eager or compiled), onnxruntime or OpenVINO.

All run the same graph, :func:`~tlmic_feats.backbones.cutpoints.tap_network`: uint8 grayscale
pixels in (a numpy array or a tensor, ``(N, 1, S, S)``), one pooled ``(N, C)`` output per stored cut
point out, normalization included.

* :class:`TorchEngine`: ``inference_mode``, channels_last, bf16/fp16 autocast where chosen,
  non-blocking copies to the GPU, optional ``torch.compile``.
* :class:`OnnxEngine`: the graph exported once (one named output per cut point) and cached under
  ``cache/onnx/`` by its fingerprint; run with onnxruntime. When CUDA is asked for, the session's
  providers are checked: onnxruntime falls back to the CPU silently otherwise.
* :class:`OpenVinoEngine`: the ONNX engine's graph converted once by OpenVINO
  (``openvino.convert_model``) and cached as IR under ``cache/openvino/`` by the same fingerprint;
  compiled for the CPU with the precision as its ``INFERENCE_PRECISION_HINT``, the thread count
  torch would use, and the throughput hint (each batch split over the compiled model's parallel requests).
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

        x = torch.as_tensor(pixels).to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            outs = self._run(x)
        return [o.float().cpu().numpy() for o in outs]


GRAPH_SUFFIXES = {"onnx": ".onnx", "openvino": ".xml"}


def graph_path(cache_dir: Path, engine: str, backbone: str, pool: str, key: dict) -> Path:
    """Where an engine keeps the graph of one fingerprint:
    ``<cache_dir>/<engine>/<backbone>-<pool>-<digest><suffix>``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / engine / f"{slug(backbone)}-{pool}-{digest}{GRAPH_SUFFIXES[engine]}"


def onnx_graph(backbone, cut_points, pool: str, cache_dir: Path, key: dict) -> Path:
    """The tapping network exported to ONNX (one named output per cut point), exported on first use
    and cached under ``<cache_dir>/onnx/`` by ``key``."""
    path = graph_path(cache_dir, "onnx", backbone.name, pool, key)
    if not path.is_file():
        import torch

        from ..backbones.cutpoints import tap_network
        from ..backbones.export import write_onnx

        net = tap_network(backbone.family, backbone.model, cut_points, pool, backbone.preprocess).eval()
        size = backbone.preprocess.input_size
        example = torch.from_numpy(np.zeros((2, 1, size, size), backbone.preprocess.pixel_dtype))
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
        outs = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(np.asarray(pixels))})
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

    def __init__(
        self, backbone, cut_points, pool: str, precision: str, cache_dir: Path, key: dict, threads: int = 0
    ) -> None:
        from ..runtime.devices import cpu_threads

        ov = import_openvino()
        core = ov.Core()
        offered = openvino_precisions(core)
        if precision not in offered:
            raise UsageError(
                f"--engine openvino --precision {precision}: this CPU's OpenVINO plugin offers "
                f"{', '.join(offered)} (see `tlmic doctor`)"
            )
        self.path = graph_path(cache_dir, "openvino", backbone.name, pool, key)
        if not self.path.is_file():
            _save_openvino_ir(ov, onnx_graph(backbone, cut_points, pool, cache_dir, key), self.path)
        hint, _ = OPENVINO_PRECISIONS[precision]
        settings = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "THROUGHPUT"}
        threads = threads or cpu_threads()
        if threads:
            settings["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(str(self.path), "CPU", settings)
        # OpenVINO ignores a hint it cannot honour instead of failing: check what it compiled.
        got = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        if got != getattr(ov.Type, hint):
            raise RunError(f"OpenVINO compiled for {got} where {hint} ({precision}) was asked; use --precision fp32")
        self.n_requests = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.queue = ov.AsyncInferQueue(self.compiled, self.n_requests)
        self.outputs = list(self.compiled.outputs)

    def __call__(self, pixels) -> list[np.ndarray]:
        x = np.ascontiguousarray(np.asarray(pixels))
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
    threads: int = 0,
):
    """The engine ``name`` running ``backbone`` tapped at ``cut_points``; onnx and openvino keep their
    graph under ``cache_dir`` by ``key``; ``threads``: openvino's CPU threads (0: as torch would)."""
    if name == "torch":
        return TorchEngine(backbone, cut_points, pool, device, precision, compile)
    if name == "onnx":
        if precision != "fp32":
            raise UsageError(f"--engine onnx runs fp32; got --precision {precision} (use --engine torch for it)")
        return OnnxEngine(backbone, cut_points, pool, device, cache_dir, key or {})
    if name == "openvino":
        if device != "cpu":
            raise UsageError(f"--engine openvino runs on the CPU; got --device {device} (use --device cpu)")
        return OpenVinoEngine(backbone, cut_points, pool, precision, cache_dir, key or {}, threads)
    raise UsageError(f"--engine {name!r} is not valid; valid: {', '.join(ENGINES)}")


# --- from a spec: in this process, or once per worker process (Dask) ---

_ENGINES: dict[str, object] = {}


@dataclass(frozen=True)
class EngineSpec:
    """Which engine runs which network: what builds an extraction's engine in any process."""

    backbone: str
    weights: str
    seed: int
    input_size: int
    addresses: tuple[str, ...]  # the stored cut points, one output each
    pool: str
    engine: str
    precision: str
    device: str
    compile: bool
    cache_dir: str
    key: str  # JSON of the fingerprint parts that define the network (ONNX cache key)


def engine_from_spec(spec: EngineSpec, *, backbone=None, threads: int = 0):
    """The engine ``spec`` describes. ``backbone``: the spec's backbone, built or described (see
    :mod:`~tlmic_feats.backbones.described`), when the caller has it. The network is built only when
    the engine needs it: torch always, onnx and openvino when their graph is not in the cache yet."""
    from ..backbones.described import described_backbone, description
    from ..backbones.registry import build_backbone
    from ..runtime.devices import resolve_device
    from ..runtime.paths import cache_root

    if backbone is None:
        backbone = described_backbone(spec.backbone, spec.weights, seed=spec.seed, input_size=spec.input_size)
    if backbone is None or (backbone.model is None and needs_network(spec)):
        built = build_backbone(spec.backbone, spec.weights, seed=spec.seed, input_size=spec.input_size)
        if backbone is not None and description(built) != description(backbone):
            raise RunError(
                f"{spec.backbone} built with --weights {spec.weights} differs from its description under "
                f"{cache_root() / 'backbones'}; delete that folder and rerun"
            )
        backbone = built
    return make_engine(
        spec.engine,
        backbone,
        tuple(backbone.cut_point(a) for a in spec.addresses),
        spec.pool,
        resolve_device(spec.device),
        spec.precision,
        compile=spec.compile,
        cache_dir=Path(spec.cache_dir),
        key=json.loads(spec.key),
        threads=threads,
    )


def needs_network(spec: EngineSpec) -> bool:
    """Whether ``spec``'s engine needs the backbone's network: torch always; onnx to export its graph,
    openvino to export the ONNX graph it converts, when the cache holds neither yet."""
    if spec.engine not in GRAPH_SUFFIXES:
        return True
    key = json.loads(spec.key)
    graphs = ("onnx",) if spec.engine == "onnx" else ("openvino", "onnx")
    return not any(graph_path(Path(spec.cache_dir), g, key["backbone"], spec.pool, key).is_file() for g in graphs)


def worker_engine(spec: EngineSpec, threads: int = 0):
    """The engine for ``spec``, built on first use in this process and kept for later tasks;
    ``threads``: this worker's share of the cores (0: torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    key = repr(spec)
    if key not in _ENGINES:
        _ENGINES.clear()  # one network at a time per worker
        _ENGINES[key] = engine_from_spec(spec, threads=threads)
    return _ENGINES[key]
