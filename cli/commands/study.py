"""``tlmic study``."""

from __future__ import annotations

import click

from tlmic_feats.study.config import PRESET_NAMES, StudyConfig

from ..options import config_fields, config_options, given


@click.command()
@config_options(StudyConfig)
@click.option(
    "--preset",
    type=click.Choice(PRESET_NAMES),
    default="standard",
    show_default=True,
    help="Study size: quick (about 15 min for 1,000 images on 2 CPU cores), standard, or paper (the paper's "
    "protocol; a GPU's). Options given beside it win.",
)
@click.option("--budget", default=0, show_default=True, help="Maximum finetuning runs in the study (0: no limit).")
@click.option("--max-minutes", default=0.0, show_default=True, help="Start no run after this long (0: no limit).")
@click.option(
    "--plan", is_flag=True, help="Print the runs and their estimated cost (measured calibration); run nothing."
)
@click.option("--quiet", is_flag=True)
@click.pass_context
def study(ctx, config, preset, budget, max_minutes, plan, quiet):
    """The paper's experiment: extract, probe every layer, truncation search (--search), baselines, report."""
    from tlmic_feats.study.plan import plan_study
    from tlmic_feats.study.run import run_study

    config = with_preset(ctx, config, preset)
    log = None if not quiet else (lambda m: None)
    if plan:
        click.echo(plan_study(config, budget=budget, log=log))
        click.echo("\nnext: the same command without --plan runs it (rerun it to resume)")
        return
    result = run_study(config, budget=budget, max_minutes=max_minutes, progress=not quiet, log=log)
    text = result.report.read_text()
    click.echo(text.split("\n## Compute")[0].rstrip())
    if result.not_run:
        click.echo(f"\nnot run: {len(result.not_run)} (rerun the same command to continue)")
    click.echo(f"\nreport: {result.report} and {result.report.with_suffix('.html')}")
    click.echo(
        f"next: rerun with more seeds to narrow an inconclusive verdict (--seeds 3,4,5 into another --out, then "
        f"`tlmic compare`), or open {result.report.with_suffix('.html')}"
    )


def with_preset(ctx: click.Context, config: StudyConfig, preset: str) -> StudyConfig:
    """The study of ``preset`` with the options the user typed on top (typed options win)."""
    if preset == "standard":
        return config
    names = [p[-1] for p, _f, _o in config_fields(StudyConfig) if p[0] != "data"]
    return StudyConfig.from_preset(preset, config.data, **{n: ctx.params[n] for n in names if given(ctx, n)})
