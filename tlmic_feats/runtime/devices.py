"""Devices, CPU features and numeric precision: what the hardware can do, decided in one place."""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

from .errors import UsageError, check_choice

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Hardware classes: where a precision's speed and rounding are alike. Extraction's `auto` is decided
# per backbone and hardware class by tlmic_feats.features.auto, from measured choices.
HARDWARE_CLASSES = ("cuda", "cpu-amx", "cpu-avx512-bf16", "cpu")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matrix instructions, where bf16 autocast pays on the CPU."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def hardware_class(device: str) -> str:
    """The class of ``device`` (see ``HARDWARE_CLASSES``): a GPU, or a CPU by its bf16 instructions."""
    if device.startswith("cuda"):
        return "cuda"
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "cpu-amx"
    return "cpu-avx512-bf16" if "avx512_bf16" in flags else "cpu"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; an explicit device is checked."""
    if device == "cpu" or (device == "auto" and no_gpu_here()):
        return "cpu"  # told without importing torch (seconds on a small machine)
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available here; valid: auto, cpu")
    return device


def no_gpu_here() -> bool:
    """True when this Linux machine has no device torch could compute on: no NVIDIA driver, no ROCm
    or WSL GPU device. Then torch's ``cuda.is_available()`` is False, without importing torch."""
    import sys

    if not sys.platform.startswith("linux"):
        return False
    nodes = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
    return not any(Path(n).exists() for n in nodes)


def cpu_threads() -> int:
    """The CPU threads ``$OMP_NUM_THREADS`` asks for (torch's own setting), or 0 when it is unset:
    an engine's own default then, one per physical core as torch's."""
    import os

    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return 0


def resolve_precision(precision: str, device: str, *, purpose: str = "train") -> str:
    """The precision ``auto`` means for training: fp32, on every device. bf16 autocast changed the
    study's answer (the demo at 5% of its data on a CPU with AVX512-BF16, 3 seeds: every truncated
    run lost 0.04-0.09 test AUROC and every full finetuning run gained 0.03-0.08, turning "truncated
    better" into "full better"), and a precision is only chosen for the user where it was shown not
    to change results; ``--precision bf16`` (or fp16 on CUDA) remains, as a choice the run records.
    An explicit precision is checked and returned.

    Extraction's ``auto`` is not decided here: it depends on the backbone and the engine, and only
    choices measured to keep the probes' results are taken (``tlmic_feats.features.auto``).
    """
    check_choice("--precision", precision, PRECISIONS)
    if precision != "auto":
        if precision == "fp16" and not device.startswith("cuda"):
            raise UsageError("--precision fp16 needs a CUDA device; on a CPU use bf16 or fp32")
        return precision
    if purpose != "train":
        raise ValueError(f"resolve_precision decides auto for training only (got purpose {purpose!r})")
    return "fp32"


def autocast(device: str, precision: str):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=dtype)
