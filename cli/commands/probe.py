"""``tlmic probe`` and ``tlmic report``."""

from __future__ import annotations

import dataclasses

import click

from tlmic_feats.probes.config import ProbeConfig

from ..options import config_options


@click.command()
@config_options(ProbeConfig)
@click.option(
    "--data",
    "data_path",
    default="",
    help="Instead of --store: the dataset whose feature store (from `tlmic extract`) to probe.",
)
@click.option("--backbone", default="", help="With --data: the backbone of the store, when several were made.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def probe(config, data_path, backbone, quiet):
    """Train a probe per layer x model x fraction x seed on stored features; report per-layer metrics."""
    from tlmic_feats.probes.grid import run_probes

    if not config.store:
        if not data_path:
            raise click.UsageError("give --store (a feature store) or --data (the dataset it was made from)")
        from tlmic_feats.features.locate import find_store

        config = dataclasses.replace(config, store=str(find_store(data_path, backbone=backbone)))
        click.echo(f"store: {config.store}")
    run = run_probes(config, progress=not quiet)
    click.echo((run.out / "summary.md").read_text().split("\n## ")[0].rstrip())
    click.echo(f"\n{len(run.rows)} fits in {run.seconds:.1f} s; {len(run.skipped)} cells skipped")
    click.echo(f"run: {run.out}  (results.csv, summary.md, layers.png)")
    from tlmic_feats.features.store import FeatureStore

    made = FeatureStore.open(config.store).config
    data, net = made.get("data", {}).get("path", "DATA"), made.get("backbone", "BACKBONE")
    click.echo(
        f"next: finetune truncated at the best layer above, `tlmic finetune --data {data} --backbone {net} "
        f"--truncate K`, or the whole comparison, `tlmic study --data {data} --backbone {net}`"
    )


@click.command()
@click.option(
    "--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False), help="A probe run directory."
)
def report(run_dir):
    """Re-render summary.md and layers.png of a probe run from its saved results."""
    from tlmic_feats.probes.report import render_report

    summary, plot = render_report(run_dir)
    click.echo(f"wrote {summary} and {plot}")
