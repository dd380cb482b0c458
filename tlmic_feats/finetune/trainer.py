"""The truncated-finetuning arm: a backbone cut at a registry cut point, a new head, trained.

:func:`finetune` builds the backbone truncated at ``truncate`` (everything after the cut is
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

Determinism and resume: a step's batch, augmentation and dropout are seeded from ``(seed, step)``;
a checkpoint at every evaluation holds model, optimizer, scheduler and early-stop state, so
``resume`` continues to the same weights as an uninterrupted run. A finished run deletes its
resume state (``last.pt``) once its outputs are written (``keep_checkpoints`` keeps it); resuming
a finished run returns its result.

Run directory: ``run.json`` (config and budget), ``best.pt`` (state dict, loaded with
``weights_only=True``; ``last.pt`` while the run is unfinished), ``history.csv`` (one row per
evaluation), ``curves.png``, ``metrics.json``, ``predictions.csv``, ``model.onnx``,
``compactness.md`` / ``compactness.json``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..backbones.networks import build_hybrid, build_network, full_depth_address, hybrid_address
from ..data.readers import load_manifest
from ..data.subsets import nested_subsets
from ..metrics.scores import UndefinedMetricWarning, evaluate
from ..runtime.devices import autocast as amp
from ..runtime.errors import SubsetTooSmallError, UsageError
from ..runtime.paths import cache_root, slug
from .augment import augment_batch, center_crop
from .budget import BatchStream, StepBudget, lr_factor, resolve_budget, step_seed
from .config import FinetuneConfig, FinetuneResult
from .losses import make_loss, n_outputs_for, scores_from_logits
from .lpft import head_from_probe
from .outputs import _predict, _write_outputs, read_history

# Settings that change how a run is kept, not what it computes: a resumed run may change them.
_NOT_IDENTITY = ("keep_checkpoints",)


def build_model(config: FinetuneConfig, backbone, address: str, n_outputs: int):
    """The network ``config.arch`` names: truncated (:func:`build_network`), hybrid or a CBR net,
    each pooled with ``config.pool``."""
    if config.arch.startswith("cbr-"):
        from ..backbones.cbr import build_cbr

        return build_cbr(config.arch, n_outputs, dropout=config.dropout, pool=config.pool)
    if config.arch == "hybrid":
        return build_hybrid(backbone, n_outputs, config.dropout, config.pool)
    return build_network(backbone, address, n_outputs, config.dropout, config.pool)


def _claim_run_dir(out: Path, record: dict, *, resume: bool, overwrite: bool) -> bool:
    """Returns True when resuming an existing run of the same configuration."""
    import shutil

    run_file = out / "run.json"
    if run_file.is_file():
        old = json.loads(run_file.read_text())
        if overwrite:
            shutil.rmtree(out)
        else:
            if not resume:
                raise UsageError(
                    f"run directory {out} holds a finetuning run; pass --resume to continue it "
                    "or --overwrite to replace it"
                )
            diff = _diff_keys(_identity(old), _identity(record))
            if diff:
                raise UsageError(f"cannot resume {out}: configuration differs in {', '.join(diff)}")
            return True
    elif out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"run directory {out} exists and is not a finetuning run; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "run.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(run_file)
    return False


def _identity(record: dict) -> dict:
    config = {k: v for k, v in record.get("config", {}).items() if k not in _NOT_IDENTITY}
    return {**record, "config": config}


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k} ({va!r} -> {vb!r})")
    return out


def _save(obj, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _completed(out: Path) -> FinetuneResult:
    """The result of a run that finished before (its ``metrics.json`` is written last)."""
    metrics = json.loads((out / "metrics.json").read_text())
    comp_file = out / "compactness.json"
    return FinetuneResult(
        out,
        metrics,
        read_history(out / "history.csv"),
        int(metrics["best_step"]),
        json.loads(comp_file.read_text()) if comp_file.is_file() else [],
        metrics.get("onnx"),
        resumed_from=int(metrics["steps_run"]),
        already_complete=True,
    )


@dataclass
class _Setup:
    """What a run trains on and where it writes, resolved once."""

    config: FinetuneConfig
    group: object
    manifest: object
    backbone: object
    address: str
    kind: str
    names: list[str]
    out: Path
    device: str
    precision: str
    rows: dict
    train: np.ndarray
    budget: StepBudget
    resuming: bool = False
    complete: bool = False
    lock: object = None  # rank 0 holds the run directory's lock file while it writes there
    pixels: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)

    @property
    def n_outputs(self) -> int:
        return n_outputs_for(self.kind, len(self.names))


def finetune(
    config: FinetuneConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_eval: Callable[[int], None] | None = None,
) -> FinetuneResult | None:
    """Run (or resume) a finetuning run; see the module docstring. ``on_eval(step)`` is called after
    each evaluation's checkpoint (progress; tests use it to interrupt a run). In a torchrun group
    (see :mod:`tlmic_feats.finetune.ddp`) every rank calls this; rank 0 returns the result, the others None."""
    from .ddp import join

    config.validate()
    group = join(config.device)
    if not group.is_main:  # rank 0 alone logs and shows progress
        log, progress = (lambda m: None), False
    log = log or (lambda m: print(m, file=sys.stderr))
    if group.restarted:  # torchrun restarted the group after a failure: continue, never start over
        resume, overwrite = True, False
    setup = _set_up(config, group, resume=resume, overwrite=overwrite)
    try:
        if setup.complete:
            group.leave()
            if not config.keep_checkpoints and group.is_main:
                (setup.out / "last.pt").unlink(missing_ok=True)  # left by a crash after the outputs were written
            return _completed(setup.out) if group.is_main else None
        _load_data(setup, log)
        training = _build_training(setup)
        state = _train(setup, training, progress=progress, log=log, on_eval=on_eval)
        if not group.is_main:  # rank 0 alone evaluates on test and writes the outputs
            group.leave()
            return None
        metrics, comp, onnx = _write_outputs(setup, training, state)
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


def default_run_dir(config: FinetuneConfig, address: str) -> Path:
    return (
        cache_root()
        / "runs"
        / (
            f"finetune-{slug(Path(config.data.path).name)}-{config.backbone}-{slug(config.weights)}-t{address}"
            f"-f{config.fraction:g}-s{config.seed}"
        )
    )


def _set_up(config: FinetuneConfig, group, *, resume: bool, overwrite: bool) -> _Setup:
    """Data, subset, backbone, budget and the claimed run directory (every rank alike)."""
    from .. import __version__
    from ..backbones.registry import build_backbone
    from ..runtime.devices import resolve_device, resolve_precision

    manifest = load_manifest(config.data)
    backbone = build_backbone(config.backbone, config.weights, seed=config.seed, input_size=config.input_size)
    address = full_depth_address(backbone) if config.truncate == "all" else backbone.cut_point(config.truncate).address
    if config.arch == "hybrid":
        address = hybrid_address(backbone)
    elif config.arch.startswith("cbr-"):
        address = config.arch
    kind, names = manifest.label_kind, list(manifest.label_names)
    out = Path(config.out) if config.out else default_run_dir(config, address)
    device = resolve_device(config.device)
    if group.distributed and device.startswith("cuda"):
        device = f"cuda:{group.local_rank}"
    precision = resolve_precision(config.precision, device, purpose="train")

    rows = {s: np.flatnonzero(manifest.splits == s) for s in ("train", "val", "test")}
    if len(rows["val"]) == 0 or len(rows["test"]) == 0:
        raise UsageError("finetuning needs val and test rows; the data's split has none of one of them")
    train = nested_subsets(
        rows["train"], manifest.labels, kind, [config.fraction], seed=config.seed, patient_ids=manifest.patient_ids
    )[float(config.fraction)]
    if kind != "multilabel":
        counts = np.bincount(manifest.labels[train][:, 0].astype(int), minlength=len(names))
        if counts.min() < 1:
            raise SubsetTooSmallError(
                f"training subset (fraction {config.fraction}) has no '{names[int(np.argmin(counts))]}' "
                "image; use a larger --fraction"
            )
    budget = resolve_budget(
        n_train=len(train),
        batch_size=config.batch_size,
        epochs=config.epochs,
        min_steps=config.min_steps,
        steps=config.steps,
        eval_every=config.eval_every,
        world=group.world,
    )
    record = {
        "config": asdict(config),
        "address": address,
        "dataset": manifest.fingerprint(),
        "weights_sha256": backbone.weights.sha256,
        "preprocess": asdict(backbone.preprocess),
        "tlmic_version": __version__,
        "precision": precision,
        "budget": asdict(budget),
        "world_size": group.world,
    }
    record = json.loads(json.dumps(record))  # as run.json holds it (tuples as lists), so that records compare
    claimed: tuple[bool, bool, Exception | None] = (False, False, None)
    lock = None
    if group.is_main:
        from ..features.store import StoreLock

        try:
            lock = StoreLock(out).acquire()  # a second process writing the same run would corrupt it
            resuming = _claim_run_dir(out, record, resume=resume, overwrite=overwrite)
            claimed = (resuming, resuming and (out / "metrics.json").is_file(), None)
        except Exception as e:  # every rank must fail alike, not wait for rank 0 forever
            claimed = (False, False, e)
    resuming, complete, error = group.broadcast(claimed)
    if error is not None:
        if lock is not None:
            lock.release()
        group.leave()
        raise error
    return _Setup(
        config, group, manifest, backbone, address, kind, names, out, device, precision, rows, train, budget,
        resuming, complete, lock,
    )  # fmt: skip


def _load_data(setup: _Setup, log) -> None:
    """Decoded pixels (through the shared pixel cache) and float labels of train, val and test."""
    import torch

    config, manifest, pre = setup.config, setup.manifest, setup.backbone.preprocess
    splits = (("train", setup.train), ("val", setup.rows["val"]), ("test", setup.rows["test"]))
    t0 = time.perf_counter()
    setup.pixels = setup.group.first_then_rest(  # rank 0 builds the shared pixel cache; the others then read it
        lambda: {
            s: torch.from_numpy(load_pixels_for(manifest, r, pre, config.workers, use_cache=config.pixel_cache))[
                :, None
            ]
            for s, r in splits
        }
    )
    log(f"decoded {sum(len(p) for p in setup.pixels.values())} images in {time.perf_counter() - t0:.1f} s")
    setup.labels = {s: torch.from_numpy(manifest.labels[r].astype(np.float32)) for s, r in splits}


@dataclass
class _Training:
    """The network being trained and what trains it."""

    net: object  # the network (rank 0 saves and evaluates it)
    model: object  # what the steps call: ``net``, or its DistributedDataParallel wrapper
    optimizer: object
    scheduler: object
    frozen: object = None  # layer-wise finetuning: the bottom of ``net`` that stays frozen
    head_source: str | None = None  # LP-FT: the probe the head started from


def _build_training(setup: _Setup) -> _Training:
    """The network (head from a probe for LP-FT), what is frozen, the optimizer and the schedule."""
    import torch

    config, backbone = setup.config, setup.backbone
    torch.manual_seed(config.seed)
    net = build_model(config, backbone, setup.address, setup.n_outputs)
    head_source = None
    if config.head_init:
        w, b, head_source = head_from_probe(
            config.head_init,
            setup.address,
            config.fraction,
            config.seed,
            config.backbone,
            config.pool,
            backbone.preprocess.input_size,
        )
        if w.shape != tuple(net.head.weight.shape):
            raise UsageError(f"--head-init: probe head {w.shape} does not fit this head {tuple(net.head.weight.shape)}")
        with torch.no_grad():
            net.head.weight.copy_(torch.from_numpy(w))
            net.head.bias.copy_(torch.from_numpy(b))
    net.to(setup.device)
    frozen = backbone.truncated(config.freeze_until) if config.freeze_until else None  # shares net's modules
    if frozen is not None:
        frozen.requires_grad_(False)
    if config.freeze_backbone:
        net.backbone.requires_grad_(False)
        optimizer = torch.optim.SGD(
            list(net.head.parameters()), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
        )
    else:
        head = {id(p) for p in net.head.parameters()}
        rest = [p for p in net.parameters() if p.requires_grad and id(p) not in head]
        groups = [{"params": list(net.head.parameters()), "lr": config.lr}]
        if rest:
            groups.append({"params": rest, "lr": config.lr * config.backbone_lr_mult})
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    model = net
    if setup.group.distributed:  # wrapped after freezing: DDP must know which parameters receive gradients
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            net, device_ids=[setup.group.local_rank] if setup.device.startswith("cuda") else None
        )
    if config.compile:  # the training steps only: every batch has one shape; evaluation stays eager
        model = torch.compile(model)
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, setup.budget))
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=2)
    return _Training(net, model, optimizer, scheduler, frozen, head_source)


def _set_train_mode(tr: _Training, config: FinetuneConfig) -> None:
    tr.net.train()
    if config.freeze_backbone:
        tr.net.backbone.eval()  # frozen means frozen: BatchNorm statistics too
    if tr.frozen is not None:
        tr.frozen.eval()


def _train(setup: _Setup, tr: _Training, *, progress: bool, log, on_eval) -> dict:
    """The step loop: a batch per step, validation every ``eval_every`` steps, checkpoints, early stop."""
    import torch

    config, group, budget, device = setup.config, setup.group, setup.budget, setup.device
    out, size = setup.out, setup.backbone.preprocess.input_size
    loss_fn = make_loss(setup.kind, setup.manifest.labels[setup.train])
    state = {"step": 0, "best_score": -np.inf, "best_step": 0, "bad_evals": 0, "stopped": False, "history": []}
    if setup.resuming and (out / "last.pt").is_file():
        ckpt = torch.load(out / "last.pt", map_location=device, weights_only=True)
        tr.net.load_state_dict(ckpt["model"])
        tr.optimizer.load_state_dict(ckpt["optimizer"])
        tr.scheduler.load_state_dict(ckpt["scheduler"])
        state = json.loads(ckpt["state"])
        log(f"resuming {out} after step {state['step']}")
    resumed_from = state["step"]
    autocast = amp(device, setup.precision)
    stream = BatchStream(len(setup.train), budget.batch_size, config.seed, group.rank, group.world)
    log(f"budget: {budget.describe()}; {len(setup.train)} training images")
    bar = _bar(budget.steps, "finetune", progress, initial=state["step"])
    t_loop = time.perf_counter()
    total, seen, t = 0.0, 0, time.perf_counter()
    _set_train_mode(tr, config)
    while state["step"] < budget.steps and not state["stopped"]:
        step = state["step"]
        seed = step_seed(config.seed, step, group.rank)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # dropout
        idx = stream.rows(step)
        x = setup.pixels["train"][idx].to(device)
        x = augment_batch(x, size, config.augment, gen) if config.augment else center_crop(x, size)
        y = setup.labels["train"][idx].to(device)
        with autocast:
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
            train_seconds = time.perf_counter() - t
            _evaluate(setup, tr, loss_fn, state, group.sum([total, seen]), train_seconds, log)
            if on_eval and group.is_main:
                on_eval(state["step"])
            total, seen, t = 0.0, 0, time.perf_counter()
            _set_train_mode(tr, config)
    bar.close()
    state["loop_seconds"] = time.perf_counter() - t_loop
    state["resumed_from"] = resumed_from
    return state


def _evaluate(setup: _Setup, tr: _Training, loss_fn, state: dict, loss_seen, train_seconds, log) -> None:
    """Validate (rank 0), decide (best, early stop: every rank follows), log and checkpoint."""
    import torch

    config, group, budget, out, net = setup.config, setup.group, setup.budget, setup.out, tr.net
    total, seen = loss_seen
    group.sync_buffers(net)
    t = time.perf_counter()
    vm, val_loss = {}, float("nan")
    if group.is_main:
        val_logits = _predict(net, setup.pixels["val"], setup, config.batch_size)
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
    vm, val_loss = group.broadcast((vm, val_loss))
    step = state["step"]
    score = -val_loss if config.monitor == "loss" else vm[config.monitor]
    if config.schedule == "plateau":
        tr.scheduler.step(val_loss)
    improved = bool(np.isfinite(score) and score > state["best_score"] + 1e-6)
    if improved:
        state.update(best_score=float(score), best_step=step, bad_evals=0)
        if group.is_main:
            _save({"model": net.state_dict()}, out / "best.pt")
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
    if state["bad_evals"] >= config.patience and step < budget.steps:
        state["stopped"] = True
        log(f"early stop: no val {config.monitor} improvement for {config.patience} evaluations")
    if group.is_main:
        _save(
            {
                "model": net.state_dict(),
                "optimizer": tr.optimizer.state_dict(),
                "scheduler": tr.scheduler.state_dict(),
                "state": json.dumps(state),
            },
            out / "last.pt",
        )
    group.barrier()  # nobody takes the next step before the checkpoint of this one exists
    group.maybe_crash(step)


def load_pixels_for(manifest, rows, pre, workers: int, *, use_cache: bool = True) -> np.ndarray:
    """The rows' decoded squares: from the shared pixel cache (decoded once for every backbone,
    run and epoch), or decoded directly."""
    from ..features.pixels import build_pixel_cache, load_pixels
    from ..runtime.errors import BadImageError

    if not use_cache:
        return load_pixels(manifest.source, rows, pre.resize_size, pre.interpolation)
    cache = build_pixel_cache(manifest, pre.resize_size, pre.interpolation, cache_root() / "pixels", workers=workers)
    bad = [int(r) for r in rows if cache.bad[r]]
    if bad:
        raise BadImageError(f"{cache.errors[bad[0]]}; {len(bad)} unreadable image(s) among the rows to train on")
    return cache.read(np.sort(rows))[np.argsort(np.argsort(rows))]


def _bar(total: int, desc: str, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        disable=not enabled,
        dynamic_ncols=True,
        file=sys.stderr,
        leave=False,
    )
