"""Size and speed of a network: parameters, MACs and CPU latency per image."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


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


def cpu_latency_ms(model, example, *, runs: int = 30, warmup: int = 5, rounds: int = 3) -> float:
    """CPU wall time of ``model(example)`` in milliseconds: the lowest of ``rounds`` medians of
    ``runs // rounds`` calls each (a median resists outliers; the minimum over rounds resists
    another process taking the CPU for a while)."""
    import torch

    model = model.eval().to("cpu")
    example = example.to("cpu")
    per_round = max(1, runs // rounds)
    medians = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(example)
        for _ in range(rounds):
            times = []
            for _ in range(per_round):
                t = time.perf_counter()
                model(example)
                times.append((time.perf_counter() - t) * 1000)
            medians.append(float(np.median(times)))
    return min(medians)


def measure(name: str, model, example, *, runs: int = 30) -> Compactness:
    params = sum(p.numel() for p in model.parameters())
    return Compactness(name, params, count_macs(model, example), cpu_latency_ms(model, example, runs=runs))


def format_compactness(rows: list[Compactness]) -> str:
    """A Markdown table, with ratios to the last row (the full model)."""
    ref = rows[-1]
    lines = [
        "| model | params | MACs | CPU latency / image | vs full (params, MACs, latency) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.params / 1e6:.2f} M | {r.macs / 1e9:.2f} G | {r.latency_ms:.1f} ms | "
            f"{r.params / ref.params:.2f}, {r.macs / ref.macs:.2f}, {r.latency_ms / ref.latency_ms:.2f} |"
        )
    return "\n".join(lines)
