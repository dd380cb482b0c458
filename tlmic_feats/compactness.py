"""Size and speed of a network: parameters, MACs and CPU latency per image."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Compactness:
    name: str
    params: int
    macs: int  # multiply-accumulates of one image's forward pass
    latency_ms: float  # median CPU latency of one image (batch 1, fp32, eager)


def count_macs(model, example) -> int:
    """Multiply-accumulates of ``model(example)`` per example (FLOPs / 2, torch's FLOP counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(example)
    return int(counter.get_total_flops() // 2 // example.shape[0])


def cpu_latency_ms(model, example, *, runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``model(example)`` on the CPU, in milliseconds."""
    import torch

    model = model.eval().to("cpu")
    example = example.to("cpu")
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            t = time.perf_counter()
            model(example)
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return float(times[len(times) // 2])


def measure(name: str, model, example, *, runs: int = 20) -> Compactness:
    params = sum(p.numel() for p in model.parameters())
    return Compactness(name, params, count_macs(model, example), cpu_latency_ms(model, example, runs=runs))


def format_compactness(rows: list[Compactness]) -> str:
    """A Markdown table, with ratios to the last row (the full model)."""
    ref = rows[-1]
    lines = ["| model | params | MACs | CPU latency / image | vs full (params, MACs, latency) |",
             "| --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.params / 1e6:.2f} M | {r.macs / 1e9:.2f} G | {r.latency_ms:.1f} ms | "
            f"{r.params / ref.params:.2f}, {r.macs / ref.macs:.2f}, {r.latency_ms / ref.latency_ms:.2f} |"
        )
    return "\n".join(lines)
