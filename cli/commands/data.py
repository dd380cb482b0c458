"""``tlmic data ...``."""

from __future__ import annotations

import click

from ..options import data_options


@click.group()
def data():
    """Inspect datasets."""


@data.command()
@data_options
@click.option("--decode", is_flag=True, help="Decode every image fully (slower) instead of checking headers.")
def check(data, decode):
    """Images, patients, label prevalence per split, missing/uncertain labels, unreadable files."""
    from tlmic_feats.data.check import check_dataset, format_check

    click.echo(format_check(check_dataset(data, decode=decode)))
    click.echo(f"\nnext: tlmic study --data {data.path} --preset quick --plan   (what a study of it costs here)")
