"""The truncated-finetuning arm: a backbone cut at a registry cut point, a new head, trained.

:func:`run_finetune` builds the backbone truncated at ``truncate`` (everything after the cut is
removed, not frozen; ``all`` keeps the whole network), adds global pooling (``pool``: the same
``avg``/``max``/``avgmax`` as the feature store, so probes and finetuned heads see one
representation), dropout and a linear head, and trains every kept layer with AdamW, a warmup and
cosine schedule over optimizer steps (or a plateau schedule), a class-weighted loss and
radiograph-safe augmentation, stopping early on a validation metric. Baselines on the same
function: ``truncate="all"`` (full finetuning), ``weights="random"`` (from scratch),
``freeze_backbone=True`` (a linear head by SGD on frozen features), ``head_init=PROBE_DIR`` (the
head starts from the fitted logistic-regression probe of the same cut point: LP-FT).

The budget is counted in optimizer steps (:mod:`tlmic_feats.finetune.budget`): small subsets get enough
steps to learn, validation runs every ``eval_every`` steps and ``patience`` counts evaluations.

Training subsets are the probes' nested subsets (:mod:`tlmic_feats.data.subsets`) for the same seed and
fraction, and the metrics are the shared module's, so both arms sit in one table.

The pieces: :mod:`.setup` (data, subset, backbone, budget, run directory, network, optimizer),
:mod:`.loop` (the steps, validation, checkpoints, early stopping), :mod:`.outputs` (what a finished
run writes).

Determinism and resume: a step's batch, augmentation and dropout are seeded from ``(seed, step)``;
a checkpoint (written at most once a minute, at the last evaluation and when interrupted at an
evaluation: :class:`~.loop.Checkpoints`) holds model, optimizer, scheduler and early-stop state, so
``resume`` continues to the same weights as an uninterrupted run. A finished run deletes its
resume state (``last.pt``) once its outputs are written (``keep_checkpoints`` keeps it); resuming
a finished run returns its result.

Run directory: ``run.json`` (config and budget), ``best.pt`` (state dict, loaded with
``weights_only=True``; ``last.pt`` while the run is unfinished), ``history.csv`` (one row per
evaluation), ``curves.png``, ``metrics.json``, ``predictions.csv``, ``model.onnx``,
``compactness.md`` / ``compactness.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from ..runtime.progress import default_log
from .config import FinetuneConfig, FinetuneResult
from .loop import train
from .outputs import completed_result, write_outputs
from .setup import build_training, finished_run, load_data, set_up


def run_finetune(
    config: FinetuneConfig,
    *,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_eval: Callable[[int], None] | None = None,
) -> FinetuneResult | None:
    """Run (or resume) a finetuning run (``tlmic finetune``); see the module docstring.

    A rerun resumes the run in ``config.out``, or returns its stored result when it had finished
    (``already_complete``); ``resume=False`` refuses an existing run instead, ``overwrite`` replaces
    it. ``on_eval(step)`` is called after
    each evaluation's checkpoint (progress; tests use it to interrupt a run). In a torchrun group
    (see :mod:`tlmic_feats.finetune.ddp`) every rank calls this; rank 0 returns the result, the
    others None."""
    from .ddp import join

    config.validate()
    if resume and not overwrite:
        finished = finished_run(config)
        if finished is not None:
            return completed_result(finished)
    group = join(config.device)
    if not group.is_main:  # rank 0 alone logs and shows progress
        log, progress = (lambda m: None), False
    log = log or default_log(progress)
    if group.restarted:  # torchrun restarted the group after a failure: continue, never start over
        resume, overwrite = True, False
    setup = set_up(config, group, resume=resume, overwrite=overwrite)
    try:
        if setup.complete:
            group.leave()
            if not config.keep_checkpoints and group.is_main:
                (setup.out / "last.pt").unlink(missing_ok=True)  # left by a crash after the outputs were written
            return completed_result(setup.out) if group.is_main else None
        load_data(setup, log)
        training = build_training(setup)
        state = train(setup, training, progress=progress, log=log, on_eval=on_eval)
        if not group.is_main:  # rank 0 alone evaluates on test and writes the outputs
            group.leave()
            return None
        metrics, comp, onnx = write_outputs(setup, training, state)
        group.leave()
    finally:
        if setup.lock is not None:
            setup.lock.release()
    return FinetuneResult(
        setup.out,
        metrics,
        state["history"],
        state["best_step"],
        [asdict(c) for c in comp],
        onnx,
        state["loop_seconds"],
        state["resumed_from"],
    )
