"""``tlmic study``."""

from __future__ import annotations

import click

from tlmic_feats.backbones.pooling import POOLS
from tlmic_feats.features.auto import ENGINE_CHOICES
from tlmic_feats.runtime.devices import PRECISIONS
from tlmic_feats.study.config import BASELINES, LPFT_ARMS

from ..options import (
    backbone_option,
    budget_options,
    data_options,
    float_list,
    input_size_option,
    precision_option,
    seeds_option,
)


def _names(ctx, param, value):
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value not in ("", "none") else ()


@click.command()
@data_options
@backbone_option
@click.option("--weights", default="imagenet", show_default=True, help="imagenet[:MEMBER] or a .pth/.safetensors file.")
@click.option("--fractions", default="0.05,0.1,1.0", show_default=True, callback=float_list, help="Training fractions.")
@seeds_option("Seeds per fraction and arm, paired across arms: a count (3: seeds 0, 1, 2) or a list (3,4,5).")
@click.option(
    "--rope", default=0.01, show_default=True, help="Verdicts: region of practical equivalence (AUROC, AUPRC)."
)
@click.option("--out", default="", help="Study directory (default: under cache/studies).")
@click.option("--top-blocks", default=2, show_default=True, help="Stage 1: block ends finetuned (best by probes).")
@click.option("--top-units", default=2, show_default=True, help="Stage 2: units of the best block finetuned.")
@click.option(
    "--baselines",
    default=",".join(BASELINES),
    show_default=True,
    callback=_names,
    help="Other arms (comma-separated, or none).",
)
@budget_options
@input_size_option
@click.option("--lr", default=1e-3, show_default=True, help="AdamW learning rate (peak, after warmup).")
@click.option(
    "--lpft",
    type=click.Choice(LPFT_ARMS),
    default="truncated",
    show_default=True,
    help="Arms whose head starts from the logistic-regression probe of their cut point (same subset): the "
    "truncated ones, every pretrained one (full and layer-wise too), or none.",
)
@click.option(
    "--pool",
    type=click.Choice(POOLS),
    default="avg",
    show_default=True,
    help="Pooling of the store's features and of every finetuned network's head.",
)
@click.option("--store", default="", help="Feature store to use or create (default: under cache/stores).")
@click.option("--bootstrap", default=1000, show_default=True)
@precision_option("auto", "Finetuning's precision (auto: fp32; bf16 autocast changed the demo's answer at 5%).")
@click.option(
    "--engine",
    type=click.Choice(ENGINE_CHOICES),
    default="torch",
    show_default=True,
    help="The extraction's engine (as in `tlmic extract`; openvino needs pip install 'tlmic[openvino]').",
)
@click.option(
    "--extract-precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="The extraction's precision (auto: the fastest validated for the backbone on this hardware).",
)
@click.option("--scratch/--no-scratch", default=True, show_default=True, help="Stage 1 also trains from scratch.")
@click.option("--device", default="auto", show_default=True)
@click.option("--cluster", default="", metavar="local:N|tcp://HOST:PORT", help="Extraction and probes on Dask.")
@click.option("--budget", default=0, show_default=True, help="Maximum finetuning runs in the study (0: no limit).")
@click.option("--max-minutes", default=0.0, show_default=True, help="Start no run after this long (0: no limit).")
@click.option("--keep-checkpoints", is_flag=True, help="Keep every run's last.pt (resume state) after it finished.")
@click.option(
    "--plan", is_flag=True, help="Print the runs and their estimated cost (measured calibration); run nothing."
)
@click.option("--quiet", is_flag=True)
def study(data, budget, max_minutes, plan, quiet, **kw):
    """The paper's experiment: extract, probe every layer, probe-guided truncation search, baselines, report."""
    from tlmic_feats.study.config import StudyConfig
    from tlmic_feats.study.plan import plan_study
    from tlmic_feats.study.run import run_study

    config = StudyConfig(data=data, **kw)
    log = None if not quiet else (lambda m: None)
    if plan:
        click.echo(plan_study(config, budget=budget, log=log))
        return
    result = run_study(config, budget=budget, max_minutes=max_minutes, progress=not quiet, log=log)
    text = result.report.read_text()
    click.echo(text.split("\n## Compute")[0].rstrip())
    if result.not_run:
        click.echo(f"\nnot run: {len(result.not_run)} (rerun the same command to continue)")
    click.echo(f"\nreport: {result.report} and {result.report.with_suffix('.html')}")
