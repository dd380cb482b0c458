"""``tlmic demo``."""

from __future__ import annotations

import click


@click.command()
@click.option("--root", default=None, help="Where the demo writes (default: cache/demo).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def demo(root, quiet):
    """Phantom chest X-rays: features of every cut point, probes per layer, truncated vs full finetuning."""
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
    click.echo("")
    run = result.probes
    click.echo((run.out / "summary.md").read_text().split("\n## Per layer")[0].rstrip())
    click.echo(
        f"\nprobes: {len(run.rows)} results in {run.seconds:.1f} s; "
        f"report: {run.out / 'summary.md'}, plot: {run.out / 'layers.png'}"
    )
    click.echo("")
    click.echo(result.report.read_text().rstrip())
    click.echo(f"\nreport: {result.report}")
    click.echo(f"demo finished in {time.perf_counter() - t0:.1f} s")
