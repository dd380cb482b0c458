"""The cut-point table of a backbone (what ``tlmic layers`` prints).

Building a network to list its cut points costs seconds of imports (torch, timm, torchvision)
for a table that never changes: the curated backbones' tables ship with tlmic
(:mod:`.layer_tables`, checked against a fresh build by the tests), and any other backbone's is
computed once and kept under ``cache/tables/`` per name (and its config, for ``hf:`` and
``openclip:`` models), input size and library versions. Neither path imports torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


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
    from .cutpoints import select_addresses, unknown_cut_point_message
    from .taps import CutPoint, Tap

    entry = table_entry(backbone, input_size)
    size = _input_size(entry, input_size)
    by_addr = {row[0]: dict(zip(CUT_POINT_FIELDS, row, strict=True)) for row in entry["cut_points"]}

    def unknown(bad: str) -> str:  # the message select_cut_points gives, from the table alone
        cps = [CutPoint(a, c["module"], (Tap(c["module"]),)) for a, c in by_addr.items()]
        return unknown_cut_point_message(bad, cps, backbone)

    rows = []
    for address in select_addresses(granularity, list(by_addr), unknown):
        c = by_addr[address]
        side = -(-size // c["stride"])  # ceil: "same" padding rounds up
        grid = f"{side}x{side}" + (f"+{c['prefix']} tokens" if c["layout"] == "tokens" and c["prefix"] else "")
        rows.append(LayerRow(address, c["module"], c["channels"], c["stride"], c["params"], grid))
    return rows


def table_input_size(backbone: str, input_size: int = 0) -> int:
    """The input size a table of ``backbone`` describes: ``input_size``, or 0 for the weights' own."""
    return _input_size(table_entry(backbone, input_size), input_size)


def full_model_params(backbone: str, input_size: int = 0) -> int:
    """Parameters of the whole backbone including its ImageNet classifier."""
    return table_entry(backbone, input_size)["full_params"]


def _input_size(entry: dict, input_size: int) -> int:
    from .preprocess import Preprocess, at_input_size

    pre = entry["preprocess"]
    pre = Preprocess(**{**pre, "mean": tuple(pre["mean"]), "std": tuple(pre["std"])})
    return at_input_size(pre, input_size).input_size


# --- where a table comes from: shipped, cached, or computed -------------------------------------------

CUT_POINT_FIELDS = ("address", "module", "channels", "stride", "params", "layout", "prefix")


def table_entry(backbone: str, input_size: int = 0) -> dict:
    """The table of ``backbone`` as stored: the weights' preprocessing, every cut point in depth
    order (a list of :data:`CUT_POINT_FIELDS`) and the full network's parameters. Curated backbones:
    the shipped table (their cut points and parameters do not depend on the input size); others:
    cached per input size and library versions."""
    from .registry import BACKBONES, get_spec

    spec = get_spec(backbone)  # unknown names fail here, before anything is built
    if backbone in BACKBONES:
        from .layer_tables import TABLES

        if backbone in TABLES:
            return TABLES[backbone]
        return compute_table_entry(backbone)
    path = _cache_file(spec.name + (f"-{spec.table_key}" if spec.table_key else ""), input_size)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    entry = compute_table_entry(backbone, input_size)
    from ..runtime.files import write_json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, entry)
    except OSError:  # a read-only cache: the table is still right, only not kept
        pass
    return entry


def _cache_file(name: str, input_size: int) -> Path:
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__
    from ..runtime.paths import cache_root, slug

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "none"

    versions = f"tlmic{__version__}-torch{v('torch')}-timm{v('timm')}-tv{v('torchvision')}"
    for prefix, package in (("hf:", "transformers"), ("openclip:", "open_clip_torch"), ("xrv:", "torchxrayvision")):
        if name.startswith(prefix):
            versions += f"-{package}{v(package)}"
    return cache_root() / "tables" / f"{slug(name)}-{input_size}px-{slug(versions)}.json"


def compute_table_entry(backbone: str, input_size: int = 0) -> dict:
    """Build ``backbone`` (random weights) and measure its table: what :func:`table_entry` stores."""
    from .cutpoints import select_cut_points
    from .registry import build_backbone, get_spec

    b = build_backbone(backbone, "random", input_size=input_size)
    size = b.preprocess.input_size
    cut_points = [
        [
            cp.address,
            cp.module,
            cp.channels,
            cp.stride,
            sum(p.numel() for p in b.truncated(cp).parameters()),
            cp.layout,
            cp.prefix,
        ]
        for cp in select_cut_points(b.cut_points, "all", b.name)
    ]
    full = sum(p.numel() for p in get_spec(backbone).build(size).parameters())
    return {"preprocess": asdict(b.preprocess), "cut_points": cut_points, "full_params": full}


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


def write_shipped_tables(path: str | Path | None = None) -> Path:
    """Regenerate :mod:`.layer_tables` from fresh builds of the curated backbones."""
    from .registry import BACKBONES

    path = Path(path) if path else Path(__file__).with_name("layer_tables.py")
    lines = [
        '"""The curated backbones\' cut-point tables (see :mod:`.layers`), generated by',
        "``python -c 'from tlmic_feats.backbones.layers import write_shipped_tables; write_shipped_tables()'``;",
        "a test compares them with fresh builds. Cut points: address, module, channels, stride, truncated",
        'parameters, layout, prefix tokens."""',
        "",
        "# ruff: noqa: E501",
        "# fmt: off",
        "TABLES = {",
    ]
    for name in sorted(BACKBONES):
        entry = compute_table_entry(name)
        lines += [f"    {name!r}: {{", f"        'preprocess': {entry['preprocess']!r},"]
        lines += [f"        'full_params': {entry['full_params']!r},", "        'cut_points': ["]
        lines += [f"            {row!r}," for row in entry["cut_points"]]
        lines += ["        ],", "    },"]
    path.write_text("\n".join([*lines, "}", ""]))
    return path
