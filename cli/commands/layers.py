"""``tlmic layers``."""

from __future__ import annotations

import click

from tlmic_feats.backbones.cutpoints import GRANULARITIES


@click.command()
@click.option("--backbone", default=None, help="Backbone whose cut points to list.")
@click.option("--granularity", type=click.Choice(GRANULARITIES), default="all", show_default=True)
@click.option("--list", "list_only", is_flag=True, help="List the available backbones.")
def layers(backbone, granularity, list_only):
    """Print a backbone's cut points: address, module, channels, stride, truncated parameters."""
    from tlmic_feats.backbones.registry import BACKBONES, get_spec

    if list_only or backbone is None:
        for name in sorted(BACKBONES):
            click.echo(f"{name:20s} {BACKBONES[name].description}")
        return
    get_spec(backbone)  # unknown names fail before torch loads
    from tlmic_feats.backbones.layers import format_layer_table, full_model_params, layer_table

    click.echo(
        format_layer_table(layer_table(backbone, granularity=granularity), full_params=full_model_params(backbone))
    )
