"""``tlmic finetune``."""

from __future__ import annotations

import click

from tlmic_feats.finetune.config import FinetuneConfig

from ..options import config_options


@click.command()
@config_options(FinetuneConfig)
@click.option("--hflip", is_flag=True, help="Allow horizontal flips in augmentation (off: anatomy is not symmetric).")
@click.option("--no-augment", is_flag=True, help="Train on center crops only.")
@click.option("--resume", is_flag=True, hidden=True, help="Kept for old scripts: a rerun resumes (or shows a finished run).")
@click.option("--overwrite", is_flag=True, help="Replace whatever run is in --out.")
@click.option(
    "--nproc",
    default=0,
    show_default=True,
    help="Data-parallel: run as N processes under torchrun on this machine (gloo on CPU, nccl on GPU). "
    "Multi-node: start `torchrun ... -m tlmic_cli.main finetune ...` yourself (docs: scale-out).",
)
@click.option(
    "--max-restarts", default=0, show_default=True, help="With --nproc: times torchrun restarts a failed group."
)
@click.option("--quiet", is_flag=True)
def finetune(config, hflip, no_augment, resume, overwrite, quiet, nproc, max_restarts):
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
    from tlmic_feats.finetune.trainer import run_finetune

    config = replace(config, augment=replace(AugmentConfig(), hflip=hflip) if not no_augment else None)
    r = run_finetune(config, resume=True, overwrite=overwrite, progress=not quiet, log=None if not quiet else (lambda m: None))
    if r is None:  # a torchrun rank other than 0: rank 0 reports
        return
    m = r.metrics
    if r.already_complete:
        click.echo(f"run {r.out} is complete: its stored result (--overwrite to train it again)")
    click.echo(
        f"truncated at {m['address']}: best step {r.best_step} of {m['steps_run']} "
        f"({m['epochs_run']:g} epochs at batch {m['batch_size']}); test "
        f"AUROC {m['auroc']:.3f} [{m['auroc_lo']:.3f}, {m['auroc_hi']:.3f}], "
        f"AUPRC {m['auprc']:.3f} [{m['auprc_lo']:.3f}, {m['auprc_hi']:.3f}]"
    )
    compactness = r.out / "compactness.md"
    if compactness.is_file():  # absent with --no-compactness
        click.echo(compactness.read_text().rstrip())
    if r.onnx:
        click.echo(f"model.onnx: max |onnxruntime - torch| = {r.onnx['max_abs_diff']:.1e}")
    click.echo(f"run: {r.out}")
    click.echo(
        f"next: compare seeds and arms with `tlmic study --data {config.data.path} --backbone {config.backbone}"
        f"{'' if config.weights == FinetuneConfig.weights else f' --weights {config.weights}'}`, "
        f"or this run against another on the same test images with `tlmic compare {r.out} OTHER_RUN`"
    )
