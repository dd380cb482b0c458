"""``tlmic probe`` and ``tlmic report``."""

from __future__ import annotations

import click

from tlmic_feats.probes.config import CONTROLS, MODELS
from tlmic_feats.probes.permutation import DEFAULT_PERMUTATIONS

from ..options import float_list, seeds_option


@click.command()
@click.option("--store", required=True, type=click.Path(), help="A finished feature store (from `tlmic extract`).")
@click.option(
    "--layer", "layers", default="all", show_default=True, help="all, blocks, units, or addresses like 3,3.4."
)
@click.option("--model", type=click.Choice([*MODELS, "both"]), default="both", show_default=True)
@click.option(
    "--fractions",
    default="1.0",
    show_default=True,
    callback=float_list,
    help="Training-set fractions (nested subsets), e.g. 0.05,0.1,0.2,0.5,1.0.",
)
@seeds_option("Seeds per fraction (subset draw and probe): a count (3: seeds 0, 1, 2) or a list (3,4,5).")
@click.option("--out", default="", help="Run directory (default: under cache/runs).")
@click.option(
    "--control",
    type=click.Choice(CONTROLS),
    default="none",
    show_default=True,
    help="shuffle: also fit permutation draws (permuted training and validation labels) and judge their "
    "test AUROC against its own null (a leak lifts it above chance).",
)
@click.option(
    "--permutations",
    default=DEFAULT_PERMUTATIONS,
    show_default=True,
    help="With --control shuffle: permutation draws per model x fraction, each refitted on every layer with "
    "one permutation (p-values down to 1/(N+1), per layer and corrected for picking the best layer).",
)
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples for test CIs.")
@click.option("--jobs", "n_jobs", default=0, show_default=True, help="Parallel fits (0: one per core).")
@click.option(
    "--cluster",
    default="",
    metavar="local:N|tcp://HOST:PORT",
    help="Fit the cells as Dask tasks (same results as a local run); workers must see the store and --out.",
)
@click.option(
    "--distributed-fit",
    is_flag=True,
    help="With --cluster and --model lightgbm: train each LightGBM on row chunks across the workers "
    "(a layer too large for one machine's memory).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def probe(model, quiet, **kw):
    """Train a probe per layer x model x fraction x seed on stored features; report per-layer metrics."""
    from tlmic_feats.probes.config import ProbeConfig
    from tlmic_feats.probes.grid import run_probes

    models = ("logreg", "lightgbm") if model == "both" else (model,)
    run = run_probes(ProbeConfig(models=models, **kw), progress=not quiet)
    click.echo((run.out / "summary.md").read_text().split("\n## ")[0].rstrip())
    click.echo(f"\n{len(run.rows)} fits in {run.seconds:.1f} s; {len(run.skipped)} cells skipped")
    click.echo(f"run: {run.out}  (results.csv, summary.md, layers.png)")


@click.command()
@click.option(
    "--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False), help="A probe run directory."
)
def report(run_dir):
    """Re-render summary.md and layers.png of a probe run from its saved results."""
    from tlmic_feats.probes.report import render_report

    summary, plot = render_report(run_dir)
    click.echo(f"wrote {summary} and {plot}")
