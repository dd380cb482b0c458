"""The cut-point table of a backbone (what ``tlmic layers`` prints)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerRow:
    address: str
    module: str
    channels: int
    stride: int  # for tokens: the patch size
    params: int  # parameters of the model truncated at this cut point (no head)
    grid: str = ""  # the map at the input size: "28x28", or "16x16+5 tokens" (patch grid + prefix tokens)


def layer_table(backbone: str, *, granularity: str = "all", input_size: int = 0) -> list[LayerRow]:
    """Every cut point of ``backbone`` (``all``, ``blocks`` or ``units``) with the parameter count
    of the network truncated there and its map at ``input_size`` (0: the weights' own). Weights do
    not change the table, so none are loaded."""
    from .cutpoints import select_cut_points
    from .registry import build_backbone

    b = build_backbone(backbone, "random", input_size=input_size)
    size = b.preprocess.input_size
    rows = []
    for cp in select_cut_points(b.cut_points, granularity, b.name):
        params = sum(p.numel() for p in b.truncated(cp).parameters())
        side = -(-size // cp.stride)  # ceil: "same" padding rounds up
        grid = f"{side}x{side}" + (f"+{cp.prefix} tokens" if cp.layout == "tokens" and cp.prefix else "")
        rows.append(LayerRow(cp.address, cp.module, cp.channels, cp.stride, params, grid))
    return rows


def table_input_size(backbone: str, input_size: int = 0) -> int:
    """The input size a table of ``backbone`` describes: ``input_size``, or 0 for the weights' own."""
    from .preprocess import at_input_size
    from .registry import get_spec

    return at_input_size(get_spec(backbone).preprocess(""), input_size).input_size


def full_model_params(backbone: str, input_size: int = 0) -> int:
    """Parameters of the whole backbone including its ImageNet classifier."""
    from .registry import get_spec

    spec = get_spec(backbone)
    return sum(p.numel() for p in spec.build(table_input_size(backbone, input_size)).parameters())


def format_layer_table(rows: list[LayerRow], *, full_params: int | None = None, input_size: int = 0) -> str:
    head = ("address", "module", "channels", "stride", f"map at {input_size} px" if input_size else "map")
    head = (*head, "params (truncated)")
    body = [(r.address, r.module, str(r.channels), str(r.stride), r.grid, f"{r.params:,}") for r in rows]
    if full_params is not None:
        body.append(("full", "whole network incl. classifier", "", "", "", f"{full_params:,}"))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    align = ["<", "<", ">", ">", ">", ">"]
    fmt = "  ".join(f"{{:{a}{w}}}" for a, w in zip(align, widths, strict=True))
    lines = [fmt.format(*head), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*b) for b in body]
    return "\n".join(lines)
