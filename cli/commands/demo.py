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
def demo(root, quiet, seeds, precision):
    """A miniature study on phantom chest X-rays: probes per layer, probe-guided truncation search, baselines."""
    import time

    from tlmic_feats.demo import run_demo

    t0 = time.perf_counter()
    result = run_demo(root, progress=not quiet, seeds=seeds, precision=precision)
    click.echo(f"dataset: {result.dataset}")
    click.echo("")
    click.echo(result.report.read_text().rstrip())
    click.echo(f"\nreport: {result.report} and {result.report.with_suffix('.html')}")
    click.echo(f"demo finished in {time.perf_counter() - t0:.1f} s")
    click.echo("next: your own data, `tlmic study --data FOLDER_OR_CSV --preset quick --plan` (then without --plan)")
