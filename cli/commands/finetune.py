"""``tlmic finetune``."""

from __future__ import annotations

import click

from tlmic_feats.backbones.pooling import POOLS
from tlmic_feats.finetune.config import ARCHS, MONITORS, SCHEDULES

from ..options import backbone_option, budget_options, data_options, input_size_option, precision_option


@click.command()
@data_options
@backbone_option
@click.option(
    "--weights",
    default="imagenet",
    show_default=True,
    help="imagenet[:MEMBER], random[:SEED] (from scratch), or a file.",
)
@click.option(
    "--truncate", default="all", show_default=True, help="Cut point k or k.u (see `tlmic layers`), or all (full depth)."
)
@click.option("--out", default="", help="Run directory (default: under cache/runs).")
@budget_options
@input_size_option
@click.option("--lr", default=1e-3, show_default=True, help="AdamW learning rate (peak, after warmup).")
@click.option("--weight-decay", default=1e-4, show_default=True)
@click.option("--schedule", type=click.Choice(SCHEDULES), default="cosine", show_default=True)
@click.option(
    "--monitor",
    type=click.Choice(MONITORS),
    default="auroc",
    show_default=True,
    help="Validation metric for early stopping and the best checkpoint.",
)
@click.option("--dropout", default=0.2, show_default=True)
@click.option(
    "--pool",
    type=click.Choice(POOLS),
    default="avg",
    show_default=True,
    help="Global pooling before the head (the head's width follows): as the feature store pools.",
)
@click.option(
    "--fraction", default=1.0, show_default=True, help="Training fraction: the probes' nested subset for --seed."
)
@click.option("--seed", default=0, show_default=True)
@click.option("--freeze-backbone", is_flag=True, help="Baseline: train only a linear head (SGD) on frozen features.")
@click.option(
    "--arch",
    type=click.Choice(ARCHS),
    default="truncated",
    show_default=True,
    help="hybrid: pretrained bottom blocks + a slim random block; cbr-*: Transfusion's shallow nets from scratch.",
)
@click.option(
    "--freeze-until", default="", help="Layer-wise finetuning: keep the backbone up to this cut point frozen."
)
@click.option(
    "--backbone-lr-mult", default=1.0, show_default=True, help="Learning rate of the backbone relative to the head."
)
@click.option("--head-init", default="", help="LP-FT: start the head from this probe run's logistic-regression probe.")
@click.option("--hflip", is_flag=True, help="Allow horizontal flips in augmentation (off: anatomy is not symmetric).")
@click.option("--no-augment", is_flag=True, help="Train on center crops only.")
@precision_option("auto")
@click.option(
    "--compile",
    is_flag=True,
    help="torch.compile the training network (pays off on long runs: compiling takes ~1 min).",
)
@click.option("--device", default="auto", show_default=True)
@click.option("--bootstrap", default=1000, show_default=True)
@click.option("--no-onnx", is_flag=True, help="Skip the ONNX export.")
@click.option("--no-pixel-cache", is_flag=True, help="Decode images directly instead of through cache/pixels.")
@click.option("--keep-checkpoints", is_flag=True, help="Keep last.pt (the resume state) after the run has finished.")
@click.option("--resume", is_flag=True, help="Continue the run in --out (same configuration required).")
@click.option("--overwrite", is_flag=True, help="Replace whatever run is in --out.")
@click.option(
    "--nproc",
    default=0,
    show_default=True,
    help="Data-parallel: run as N processes under torchrun on this machine (gloo on CPU, nccl on GPU). "
    "Multi-node: start `torchrun ... -m tlmic_cli.main finetune ...` yourself (README).",
)
@click.option(
    "--max-restarts", default=0, show_default=True, help="With --nproc: times torchrun restarts a failed group."
)
@click.option("--quiet", is_flag=True)
def finetune(data, hflip, no_augment, no_onnx, no_pixel_cache, resume, overwrite, quiet, nproc, max_restarts, **kw):
    """Finetune a backbone truncated at a cut point, with a new head; test metrics, ONNX, compactness."""
    import sys
    from dataclasses import replace

    if nproc:
        from tlmic_feats.finetune.ddp import launch, strip_options

        args = sys.argv[sys.argv.index("finetune") :] if "finetune" in sys.argv else []
        if not args:
            raise click.UsageError("--nproc needs the command line of `tlmic finetune` (run it from a shell)")
        code = launch(strip_options(args, ("--nproc", "--max-restarts")), nproc, max_restarts=max_restarts)
        if code:
            raise SystemExit(f"tlmic: error: the torchrun group failed (exit {code}); see its log above")
        return

    from tlmic_feats.finetune.augment import AugmentConfig
    from tlmic_feats.finetune.config import FinetuneConfig
    from tlmic_feats.finetune.trainer import run_finetune

    config = FinetuneConfig(
        data=data,
        augment=replace(AugmentConfig(), hflip=hflip) if not no_augment else None,
        export_onnx=not no_onnx,
        **kw,
    )
    log = None if not quiet else (lambda m: None)
    r = run_finetune(config, resume=resume, overwrite=overwrite, progress=not quiet, log=log)
    if r is None:  # a torchrun rank other than 0: rank 0 reports
        return
    m = r.metrics
    if r.already_complete:
        click.echo(f"run {r.out} had finished: its stored result")
    click.echo(
        f"truncated at {m['address']}: best step {r.best_step} of {m['steps_run']} "
        f"({m['epochs_run']:g} epochs at batch {m['batch_size']}); test "
        f"AUROC {m['auroc']:.3f} [{m['auroc_lo']:.3f}, {m['auroc_hi']:.3f}], "
        f"AUPRC {m['auprc']:.3f} [{m['auprc_lo']:.3f}, {m['auprc_hi']:.3f}]"
    )
    click.echo((r.out / "compactness.md").read_text().rstrip())
    if r.onnx:
        click.echo(f"model.onnx: max |onnxruntime - torch| = {r.onnx['max_abs_diff']:.1e}")
    click.echo(f"run: {r.out}")
