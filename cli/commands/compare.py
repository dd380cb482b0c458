"""``tlmic compare``: two models on the same test images, paired."""

from __future__ import annotations

import click


@click.command()
@click.argument("pred_a", type=click.Path(exists=True, dir_okay=False))
@click.argument("pred_b", type=click.Path(exists=True, dir_okay=False))
@click.option("--split", default="test", show_default=True, help="The split both files score (test or val).")
@click.option("--bootstrap", default=2000, show_default=True, help="Paired bootstrap resamples for AUPRC.")
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap resamples.")
def compare(pred_a, pred_b, split, bootstrap, seed):
    """Compare two predictions files (probes, finetuning or a study) on the same images: AUROC by
    DeLong's test, AUPRC by a paired bootstrap; A minus B, with its 95% CI and p-value."""
    from pathlib import Path

    from tlmic_feats.metrics.paired import compare_prediction_files, format_comparison

    result = compare_prediction_files(pred_a, pred_b, split=split, n_resamples=bootstrap, seed=seed)
    click.echo(f"A: {pred_a}\nB: {pred_b}\n{result['n']} {split} images ({result['kind']} labels)")
    click.echo(format_comparison(result, Path(pred_a).stem, Path(pred_b).stem))
