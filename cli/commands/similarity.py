"""``tlmic similarity``."""

from __future__ import annotations

import click

from tlmic_feats.features.similarity_run import SimilarityConfig

from ..options import config_options


@click.command()
@config_options(SimilarityConfig)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def similarity(config, quiet):
    """Layer similarity (CKA, SVCCA) between the cut points of a store, between two stores on the same
    images, or (--run) between a finetuned network and its pretrained backbone, per cut point."""
    config.validate()
    if config.run:
        from tlmic_feats.finetune.reuse import feature_reuse

        reuse = feature_reuse(config, progress=not quiet)
        values = ", ".join(f"{k} {v:.3f}" for k, v in zip(reuse.addresses, reuse.values, strict=True))
        click.echo(f"{reuse.method}, pretrained vs finetuned, {reuse.n_images} {reuse.split} images: {values}")
        click.echo(f"wrote {reuse.csv} and {reuse.plot}")
        return
    from tlmic_feats.features.similarity_run import run_similarity, summarize

    result = run_similarity(config, progress=not quiet)
    rows, cols = result.values.shape
    click.echo(
        f"{result.method} ({result.estimator} estimator) on {result.n_images} images: {rows} x {cols} cut points "
        f"in {result.seconds:.1f} s"
    )
    for line in summarize(result):
        click.echo(line)
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"wrote {result.csv} and {result.plot}")
