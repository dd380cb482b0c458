"""The step loop: one batch per optimizer step, validation every ``eval_every`` steps (rank 0
validates; every rank follows its decisions), early stopping after ``patience`` evaluations without
improvement, and the resume state on disk (:class:`Checkpoints`).

Every step is a function of ``(seed, step)`` (batch, augmentation, dropout), so a run resumed from
any checkpoint takes the same steps as one that was never interrupted: which evaluations write a
checkpoint decides how much work a kill loses, never the result."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable

import numpy as np

from ..backbones.preprocess import center_crop
from ..metrics.scores import UndefinedMetricWarning, evaluate
from ..runtime.devices import autocast
from ..runtime.files import save_torch
from ..runtime.progress import progress_bar
from .augment import augment_batch
from .budget import BatchStream, step_seed
from .losses import make_loss, scores_from_logits
from .outputs import predict_logits
from .setup import RunSetup, Training

# Seconds of work a kill may lose: the resume state is written at the first evaluation this long
# after the previous write, at the last evaluation and when the run is interrupted at one. Writing
# weights, optimizer and schedule at every evaluation cost short runs more than their training.
CHECKPOINT_SECONDS = 60.0


class Checkpoints:
    """``last.pt`` (weights, optimizer, schedule, loop state) and ``best.pt`` (the best weights),
    written together: the best weights wait in memory until the resume state that names them is
    written, so the two files on disk always belong to one evaluation (or ``best.pt`` is ahead of
    ``last.pt``, which a resumed run replays to the same weights)."""

    def __init__(self, out, every: float | None = None) -> None:
        self.out, self.every = out, CHECKPOINT_SECONDS if every is None else every
        self.written_at = time.perf_counter()
        self.best: dict | None = None  # best weights not yet on disk

    def keep_best(self, net) -> None:
        self.best = {k: v.detach().clone() for k, v in net.state_dict().items()}

    def due(self) -> bool:
        return time.perf_counter() - self.written_at >= self.every

    def write(self, tr: Training, state: dict) -> None:
        if self.best is not None:
            save_torch({"model": self.best}, self.out / "best.pt")
            self.best = None
        checkpoint = {"optimizer": tr.optimizer.state_dict(), "scheduler": tr.scheduler.state_dict()}
        save_torch({"model": tr.net.state_dict(), **checkpoint, "state": json.dumps(state)}, self.out / "last.pt")
        self.written_at = time.perf_counter()


def train(setup: RunSetup, tr: Training, *, progress: bool, log, on_eval: Callable[[int], None] | None) -> dict:
    """Train to the end of the budget (or an early stop); returns the loop's state."""
    import torch

    config, group, budget, device, size = setup.config, setup.group, setup.budget, setup.device, setup.input_size
    loss_fn = make_loss(setup.kind, setup.manifest.labels[setup.train])
    state = _start_state(setup, tr, log)
    resumed_from = state["step"]
    amp = autocast(device, setup.precision)
    stream = BatchStream(len(setup.train), budget.batch_size, config.seed, group.rank, group.world)
    log(f"budget: {budget.describe()}; {len(setup.train)} training images")
    bar = progress_bar(budget.steps, "finetune", "step", progress, initial=state["step"], leave=False)
    checkpoints = Checkpoints(setup.out)
    t_loop = time.perf_counter()
    total, seen, t = 0.0, 0, time.perf_counter()
    set_train_mode(tr, config)
    while state["step"] < budget.steps and not state["stopped"]:
        step = state["step"]
        seed = step_seed(config.seed, step, group.rank)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # dropout
        idx = stream.rows(step)
        x = setup.pixels["train"][idx].to(device)
        x = augment_batch(x, size, config.augment, gen) if config.augment else center_crop(x, size, setup.interpolation)
        y = setup.labels["train"][idx].to(device)
        with amp:
            logits = tr.model(x.contiguous(memory_format=torch.channels_last))
        loss = loss_fn(logits, y)
        tr.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        tr.optimizer.step()
        if config.schedule == "cosine":
            tr.scheduler.step()
        state["step"] = step + 1
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
        bar.update(1)
        bar.set_postfix(loss=f"{total / max(seen, 1):.4f}")
        if state["step"] % budget.eval_every == 0 or state["step"] == budget.steps:
            loss_seen = group.sum([total, seen])
            evaluate_and_checkpoint(setup, tr, loss_fn, state, loss_seen, time.perf_counter() - t, log, checkpoints)
            if on_eval and group.is_main:
                try:
                    on_eval(state["step"])
                except BaseException:  # interrupted at an evaluation: its state is whole, keep it
                    checkpoints.write(tr, state)
                    raise
            total, seen, t = 0.0, 0, time.perf_counter()
            set_train_mode(tr, config)
    bar.close()
    state["loop_seconds"] = time.perf_counter() - t_loop
    state["resumed_from"] = resumed_from
    return state


def _start_state(setup: RunSetup, tr: Training, log) -> dict:
    """A fresh loop state, or the one of the last checkpoint (with weights, optimizer and schedule)."""
    import torch

    last = setup.out / "last.pt"
    if not (setup.resuming and last.is_file()):
        return {"step": 0, "best_score": -np.inf, "best_step": 0, "bad_evals": 0, "stopped": False, "history": []}
    ckpt = torch.load(last, map_location=setup.device, weights_only=True)
    tr.net.load_state_dict(ckpt["model"])
    tr.optimizer.load_state_dict(ckpt["optimizer"])
    tr.scheduler.load_state_dict(ckpt["scheduler"])
    state = json.loads(ckpt["state"])
    log(f"resuming {setup.out} after step {state['step']}")
    return state


def set_train_mode(tr: Training, config) -> None:
    tr.net.train()
    if config.freeze_backbone:
        tr.net.backbone.eval()  # frozen means frozen: BatchNorm statistics too
    if tr.frozen is not None:
        tr.frozen.eval()


def evaluate_and_checkpoint(
    setup: RunSetup,
    tr: Training,
    loss_fn,
    state: dict,
    loss_seen,
    train_seconds: float,
    log,
    checkpoints: Checkpoints,
) -> None:
    """Validate (rank 0), decide (best, early stop: every rank follows), log, and checkpoint when
    ``checkpoints`` says it is due (always at the last evaluation)."""
    config, group, budget = setup.config, setup.group, setup.budget
    total, seen = loss_seen
    group.sync_buffers(tr.net)
    t = time.perf_counter()
    vm, val_loss = group.broadcast(_validate(setup, tr, loss_fn) if group.is_main else ({}, float("nan")))
    step = state["step"]
    score = -val_loss if config.training.monitor == "loss" else vm[config.training.monitor]
    if config.schedule == "plateau":
        tr.scheduler.step(val_loss)
    improved = bool(np.isfinite(score) and score > state["best_score"] + 1e-6)
    if improved:
        state.update(best_score=float(score), best_step=step, bad_evals=0)
        if group.is_main:
            checkpoints.keep_best(tr.net)
    else:
        state["bad_evals"] += 1
    row = {
        "step": step,
        "epoch": round(step / budget.steps_per_epoch, 3),
        "train_loss": total / max(seen, 1),
        "val_loss": val_loss,
        "val_auroc": vm["auroc"],
        "val_auprc": vm["auprc"],
        "lr": tr.optimizer.param_groups[0]["lr"],
        "seconds": round(train_seconds, 3),
        "eval_seconds": round(time.perf_counter() - t, 3),
        "best": improved,
    }
    state["history"].append(row)
    log(
        f"step {step}/{budget.steps} (epoch {row['epoch']:.1f}): train loss {row['train_loss']:.4f}, "
        f"val loss {val_loss:.4f}, val AUROC {vm['auroc']:.4f}, AUPRC {vm['auprc']:.4f}{' *' if improved else ''}"
    )
    if state["bad_evals"] >= config.training.patience and step < budget.steps:
        state["stopped"] = True
        log(f"early stop: no val {config.training.monitor} improvement for {config.training.patience} evaluations")
    if group.is_main and (state["stopped"] or step >= budget.steps or checkpoints.due()):
        checkpoints.write(tr, state)
    group.barrier()  # every rank waits for rank 0's evaluation (and its checkpoint, when one is due)


def _validate(setup: RunSetup, tr: Training, loss_fn) -> tuple[dict, float]:
    """Validation metrics and loss of the current weights."""
    import torch

    val_logits = predict_logits(tr.net, setup.pixels["val"], setup, setup.config.training.batch_size)
    with torch.no_grad():
        val_loss = float(loss_fn(torch.from_numpy(val_logits), setup.labels["val"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        vm = evaluate(
            setup.manifest.labels[setup.rows["val"]],
            scores_from_logits(setup.kind, val_logits),
            setup.kind,
            label_names=setup.names,
        )
    return vm, val_loss
