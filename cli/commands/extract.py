"""``tlmic extract``."""

from __future__ import annotations

import click

from tlmic_feats.features.config import ExtractConfig

from ..options import config_options


@click.command()
@config_options(ExtractConfig)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract(config, quiet):
    """Extract pooled features of every requested cut point into a Zarr feature store."""
    from tlmic_feats.features.extract import extract_features

    report = extract_features(config, progress=not quiet)
    store = report.store
    if report.already_complete:
        click.echo(f"store is complete already (nothing to do): {store.path}")
    else:
        click.echo(
            f"extracted {report.computed_images} images in {report.seconds:.1f} s "
            f"({report.images_per_second:.1f} img/s); {len(store.layers)} layers, "
            f"{len(report.skipped_ids)} skipped"
        )
    click.echo(f"store: {store.path}")
    click.echo(f"next: tlmic probe --data {config.data.path}   (or --store {store.path})")
