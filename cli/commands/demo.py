"""``tlmic demo``."""

from __future__ import annotations

import click


@click.command()
@click.option("--root", default=None, help="Where the demo writes (default: cache/demo).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def demo(root, quiet):
    """Generate the phantom chest X-ray dataset and extract every cut point of EfficientNet-Lite0."""
    import time

    from tlmic_feats.demo import run_demo
    from tlmic_feats.layers import format_layer_table, layer_table

    t0 = time.perf_counter()
    result = run_demo(root, progress=not quiet)
    store = result.extract.store
    click.echo(f"dataset: {result.dataset} ({len(store)} images, labels {', '.join(store.label_names)})")
    click.echo(format_layer_table(layer_table(store.fingerprint["backbone"])))
    r = result.extract
    if r.already_complete:
        click.echo("features: reused the finished store")
    else:
        click.echo(f"features: {r.computed_images} images at {r.images_per_second:.1f} img/s")
    click.echo(f"store: {store.path}")
    click.echo(f"demo finished in {time.perf_counter() - t0:.1f} s")
