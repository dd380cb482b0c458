"""The cut-point table of a backbone (what ``tlmic layers`` prints)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerRow:
    address: str
    module: str
    channels: int
    stride: int
    params: int  # parameters of the model truncated at this cut point (no head)


def layer_table(backbone: str, *, granularity: str = "all") -> list[LayerRow]:
    """Every cut point of ``backbone`` (``all``, ``blocks`` or ``units``) with the parameter count
    of the network truncated there. Weights do not change the table, so none are loaded."""
    from .cutpoints import select_cut_points
    from .registry import build_backbone

    b = build_backbone(backbone, "random")
    rows = []
    for cp in select_cut_points(b.cut_points, granularity, b.name):
        params = sum(p.numel() for p in b.truncated(cp.address).parameters())
        rows.append(LayerRow(cp.address, cp.module, cp.channels, cp.stride, params))
    return rows


def full_model_params(backbone: str) -> int:
    """Parameters of the whole backbone including its ImageNet classifier."""
    from .registry import build_backbone

    return sum(p.numel() for p in build_backbone(backbone, "random").model.parameters())


def format_layer_table(rows: list[LayerRow], *, full_params: int | None = None) -> str:
    head = ("address", "module", "channels", "stride", "params (truncated)")
    body = [(r.address, r.module, str(r.channels), str(r.stride), f"{r.params:,}") for r in rows]
    if full_params is not None:
        body.append(("full", "whole network incl. classifier", "", "", f"{full_params:,}"))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    align = ["<", "<", ">", ">", ">"]
    fmt = "  ".join(f"{{:{a}{w}}}" for a, w in zip(align, widths, strict=True))
    lines = [fmt.format(*head), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*b) for b in body]
    return "\n".join(lines)
