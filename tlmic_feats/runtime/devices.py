"""Devices, CPU features and numeric precision: what the hardware can do, decided in one place."""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

from .errors import UsageError, check_choice

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Reduced precisions whose effect on the demo's per-layer probe AUROC the extraction benchmark has
# found within 0.005 on every layer (benchmarks/extract.py). `auto` extracts only in these. None
# qualifies: on the development CPU, bf16 features moved a logistic-regression probe's test AUROC
# by up to 0.030 on the demo (median 0.010 over 24 layers) and by up to 0.045 on 1,000 test images
# (10 of 24 layers over 0.005; fp16: 1 of 24). bf16 stays available explicitly, 3x faster.
VALIDATED_FOR_AUTO: tuple[str, ...] = ()


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


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available here; valid: auto, cpu")
    return device


def resolve_precision(precision: str, device: str, *, purpose: str = "extract") -> str:
    """The precision ``auto`` means here.

    Extraction: bf16 only where it has been validated for feature fidelity (see
    ``VALIDATED_FOR_AUTO``), else fp32. Training: bf16 mixed precision on a GPU or a CPU with bf16
    instructions (its rounding is one more source of training noise, not a change of the stored
    features), else fp32.
    """
    check_choice("--precision", precision, PRECISIONS)
    if precision != "auto":
        if precision == "fp16" and not device.startswith("cuda"):
            raise UsageError("--precision fp16 needs a CUDA device; on a CPU use bf16 or fp32")
        return precision
    fast = device.startswith("cuda") or cpu_has_fast_bf16()
    if fast and (purpose == "train" or "bf16" in VALIDATED_FOR_AUTO):
        return "bf16"
    return "fp32"


def autocast(device: str, precision: str):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=dtype)
