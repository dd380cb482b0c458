"""The truncated-finetuning arm: a backbone cut at a registry cut point, a new head, trained.

:func:`finetune` builds the backbone truncated at ``truncate`` (everything after the cut is
removed, not frozen; ``all`` keeps the whole network), adds global average pooling, dropout and a
linear head, and trains every kept layer with AdamW, a cosine or plateau schedule, a class-weighted
loss and radiograph-safe augmentation, stopping early on a validation metric. Baselines on the
same function: ``truncate="all"`` (full finetuning), ``weights="random"`` (from scratch),
``freeze_backbone=True`` (a linear head by SGD on frozen features), ``head_init=PROBE_DIR``
(the head starts from the fitted logistic-regression probe of the same cut point: LP-FT).

Training subsets are the probes' nested subsets (:mod:`tlmic_feats.subsets`) for the same seed and
fraction, and the metrics are the shared module's, so both arms sit in one table.

Determinism and resume: an epoch's batch order, augmentation and dropout are seeded from
``(seed, epoch)``; a checkpoint after every epoch holds model, optimizer, scheduler and early-stop
state, so ``resume`` continues to the same result as an uninterrupted run.

Run directory: ``run.json`` (config), ``last.pt`` / ``best.pt`` (state dicts; loaded with
``weights_only=True``), ``history.csv``, ``curves.png``, ``metrics.json``, ``predictions.csv``,
``model.onnx``, ``compactness.md`` / ``compactness.json``.
"""

from __future__ import annotations

import csv
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .augment import AugmentConfig, augment_batch, center_crop
from .data.readers import DataConfig, load_manifest
from .device import PRECISIONS
from .device import autocast as amp
from .errors import SubsetTooSmallError, UsageError, check_choice
from .metrics import METRICS, UndefinedMetricWarning, bootstrap, choose_thresholds, evaluate, write_predictions
from .paths import cache_root, slug
from .subsets import nested_subsets

SCHEDULES = ("cosine", "plateau")
# "truncated": the registry's backbone cut at --truncate. "hybrid" (TransFusion-style): the pretrained
# backbone up to the block end before the deepest, then a slimmer randomly initialised block. The CBR
# names: Transfusion's shallow networks, trained from scratch (backbones/cbr.py).
ARCHS = ("truncated", "hybrid", "cbr-tiny", "cbr-small", "cbr-larget", "cbr-largew")
MONITORS = ("auroc", "auprc", "loss")


@dataclass(frozen=True)
class FinetuneConfig:
    """A finetuning run. Recorded in ``run.json``; resuming requires the same values."""

    data: DataConfig
    backbone: str = "resnet50"
    weights: str = "imagenet"
    truncate: str = "all"
    out: str = ""
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    monitor: str = "auroc"
    patience: int = 5
    dropout: float = 0.2
    fraction: float = 1.0
    seed: int = 0
    freeze_backbone: bool = False
    head_init: str = ""
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # None: no augmentation
    precision: str = "auto"
    device: str = "auto"
    bootstrap: int = 1000
    export_onnx: bool = True
    workers: int = 0
    pixel_cache: bool = True
    arch: str = "truncated"
    freeze_until: str = ""  # layer-wise finetuning: the backbone up to this cut point stays frozen
    backbone_lr_mult: float = 1.0  # learning rate of the trainable backbone layers, relative to the head's
    compactness: bool = True  # measure parameters, MACs and CPU latency (a study measures one seed per arm)

    def validate(self) -> None:
        check_choice("--arch", self.arch, ARCHS)
        if self.arch != "truncated" and (self.freeze_backbone or self.head_init or self.freeze_until):
            raise UsageError(
                f"--arch {self.arch} trains its own layers; --freeze-backbone, --head-init and "
                "--freeze-until apply to --arch truncated only"
            )
        if not 0 < self.backbone_lr_mult <= 10:
            raise UsageError(f"--backbone-lr-mult {self.backbone_lr_mult} is not in (0, 10]")
        check_choice("--schedule", self.schedule, SCHEDULES)
        check_choice("--monitor", self.monitor, MONITORS)
        check_choice("--precision", self.precision, PRECISIONS)
        if not 0 < self.fraction <= 1:
            raise UsageError(f"--fraction {self.fraction} is not in (0, 1]")
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError(f"--epochs and --batch-size must be >= 1 (got {self.epochs}, {self.batch_size})")
        if self.freeze_backbone and self.head_init:
            raise UsageError("--freeze-backbone and --head-init together would train nothing new; choose one")


@dataclass
class FinetuneResult:
    out: Path
    metrics: dict
    history: list[dict]
    best_epoch: int
    compactness: list[dict] = field(default_factory=list)
    onnx: dict | None = None
    seconds: float = 0.0
    resumed_from: int = 0


# --- the network ------------------------------------------------------------------------------------


def build_network(backbone, address: str, n_outputs: int, dropout: float):
    """Normalization -> backbone truncated at ``address`` -> global average pool -> dropout -> linear.

    Input: uint8 or float pixels ``(N, 1, S, S)`` in 0..255 (grayscale; copied to 3 channels).
    """
    import torch.nn as nn

    from .backbones.preprocess import device_normalize

    cut = backbone.cut_point(address)

    class TruncatedClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.normalize = device_normalize(backbone.preprocess)
            self.backbone = backbone.truncated(cut.address)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(dropout)
            self.head = nn.Linear(cut.channels, n_outputs)

        def features(self, x):
            """The pooled features at the cut point (what ``extract --pool avg`` stores)."""
            return self.pool(self.backbone(self.normalize(x))).flatten(1)

        def forward(self, x):
            return self.head(self.dropout(self.features(x)))

    return TruncatedClassifier()


def build_model(config: FinetuneConfig, backbone, address: str, n_outputs: int):
    """The network ``config.arch`` names: truncated (:func:`build_network`), hybrid or a CBR net."""
    if config.arch.startswith("cbr-"):
        from .backbones.cbr import build_cbr

        return build_cbr(config.arch, n_outputs, dropout=config.dropout)
    if config.arch == "hybrid":
        return build_hybrid(backbone, n_outputs, config.dropout)
    return build_network(backbone, address, n_outputs, config.dropout)


def hybrid_address(backbone) -> str:
    """Where the hybrid keeps the pretrained backbone up to: the block end before the deepest."""
    from .backbones.cutpoints import address_key

    blocks = sorted((cp.address for cp in backbone.cut_points if cp.is_block), key=address_key)
    return blocks[-2]


def build_hybrid(backbone, n_outputs: int, dropout: float):
    """TransFusion-style hybrid: pretrained bottom blocks (up to :func:`hybrid_address`), then one
    randomly initialised slim block (two 3x3 conv-BN-ReLU, stride 2, half the channels) in place of
    the top block, global average pooling, dropout and a linear head."""
    import torch.nn as nn

    from .backbones.preprocess import device_normalize

    cut = backbone.cut_point(hybrid_address(backbone))
    width = max(8, cut.channels // 2)

    def cbr(cin: int, cout: int, stride: int) -> list:
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

    class HybridClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.normalize = device_normalize(backbone.preprocess)
            self.backbone = backbone.truncated(cut.address)
            self.slim = nn.Sequential(*cbr(cut.channels, width, 2), *cbr(width, width, 1))
            for m in self.slim.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(dropout)
            self.head = nn.Linear(width, n_outputs)

        def features(self, x):
            return self.pool(self.slim(self.backbone(self.normalize(x)))).flatten(1)

        def forward(self, x):
            return self.head(self.dropout(self.features(x)))

    return HybridClassifier()


def full_depth_address(backbone) -> str:
    """The deepest block end: ``--truncate all``."""
    from .backbones.cutpoints import address_key

    return max((cp.address for cp in backbone.cut_points if cp.is_block), key=address_key)


def head_from_probe(probe_dir: str | Path, address: str, fraction: float, seed: int, backbone_name: str):
    """(weight, bias) for the head from a probe run's logistic-regression probe at ``address``.

    The probe standardizes (z = (x - mean) / scale) before its linear map; folding that in gives
    a head on raw pooled features. The probe run must be on average-pooled features of the same
    backbone (checked from its run record).
    """
    from .probes import load_probe

    probe_dir = Path(probe_dir)
    record_file = probe_dir / "run.json"
    if not record_file.is_file():
        raise UsageError(f"--head-init {probe_dir}: not a probe run directory (no run.json)")
    fp = json.loads(record_file.read_text())["store_fingerprint"]
    if fp.get("backbone") != backbone_name or fp.get("pool") != "avg":
        raise UsageError(
            f"--head-init {probe_dir}: its probes are on {fp.get('backbone')} features pooled "
            f"{fp.get('pool')!r}; LP-FT needs {backbone_name} with --pool avg"
        )
    candidates = sorted((probe_dir / "probes").glob(f"L{address}-logreg-f*-s*"))
    wanted = probe_dir / "probes" / f"L{address}-logreg-f{fraction:g}-s{seed}"
    chosen = wanted if wanted.is_dir() else (candidates[0] if candidates else None)
    if chosen is None:
        raise UsageError(f"--head-init {probe_dir}: no logistic-regression probe at layer {address}")
    probe = load_probe(chosen)
    singles = probe.estimators_ if probe.kind_ == "multilabel" else [probe]
    ws, bs = [], []
    for e in singles:
        if e is None:
            raise UsageError(f"--head-init: probe {chosen.name} has an unfitted label")
        w = e.coef_ / e.scaler_scale_[None, :]
        b = e.intercept_ - (e.coef_ * (e.scaler_mean_ / e.scaler_scale_)[None, :]).sum(1)
        ws.append(w)
        bs.append(b)
    return np.concatenate(ws).astype(np.float32), np.concatenate(bs).astype(np.float32), chosen.name


# --- loss and targets --------------------------------------------------------------------------------


def n_outputs_for(kind: str, n_names: int) -> int:
    return 1 if kind == "binary" else n_names


def make_loss(kind: str, y_train: np.ndarray):
    """Class-weighted loss: BCE-with-logits (binary; multi-label masked where labels are NaN) or
    cross-entropy (multi-class), weights from the training subset's class frequencies."""
    import torch
    import torch.nn.functional as F

    if kind == "multiclass":
        counts = np.bincount(y_train[:, 0].astype(int), minlength=int(np.nanmax(y_train)) + 1).astype(float)
        w = torch.tensor(len(y_train) / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)

        def ce(logits, y):
            return F.cross_entropy(logits.float(), y[:, 0].long(), weight=w.to(logits.device))

        return ce
    pos = np.nansum(y_train == 1, 0).astype(float)
    neg = np.nansum(y_train == 0, 0).astype(float)
    pos_weight = torch.tensor(neg / np.maximum(pos, 1), dtype=torch.float32)

    def bce(logits, y):
        mask = ~torch.isnan(y)
        target = torch.nan_to_num(y, nan=0.0)
        loss = F.binary_cross_entropy_with_logits(
            logits.float(), target, pos_weight=pos_weight.to(logits.device), reduction="none"
        )
        return (loss * mask).sum() / mask.sum().clamp(min=1)

    return bce


def scores_from_logits(kind: str, logits: np.ndarray) -> np.ndarray:
    """Probabilities in the metrics module's layout."""
    if kind == "binary":
        return 1 / (1 + np.exp(-logits[:, 0]))
    if kind == "multiclass":
        z = logits - logits.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)
    return 1 / (1 + np.exp(-logits))


# --- the run -----------------------------------------------------------------------------------------


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
            diff = _diff_keys(old, record)
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


def finetune(
    config: FinetuneConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> FinetuneResult | None:
    """Run (or resume) a finetuning run; see the module docstring. In a torchrun group (see
    :mod:`tlmic_feats.ddp`) every rank calls this; rank 0 returns the result, the others None."""
    import torch

    from . import __version__
    from .backbones.registry import build_backbone
    from .ddp import join
    from .device import resolve_device, resolve_precision

    config.validate()
    group = join(config.device)
    if not group.is_main:  # rank 0 alone logs and shows progress
        log, progress = (lambda m: None), False
    log = log or (lambda m: print(m, file=sys.stderr))
    if group.restarted:  # torchrun restarted the group after a failure: continue, never start over
        resume, overwrite = True, False
    manifest = load_manifest(config.data)
    backbone = build_backbone(config.backbone, config.weights, seed=config.seed)
    address = full_depth_address(backbone) if config.truncate == "all" else backbone.cut_point(config.truncate).address
    if config.arch == "hybrid":
        address = hybrid_address(backbone)
    elif config.arch.startswith("cbr-"):
        address = config.arch
    kind, names = manifest.label_kind, list(manifest.label_names)
    out = (
        Path(config.out)
        if config.out
        else cache_root()
        / "runs"
        / (
            f"finetune-{slug(Path(config.data.path).name)}-{config.backbone}-{slug(config.weights)}-t{address}"
            f"-f{config.fraction:g}-s{config.seed}"
        )
    )
    device = resolve_device(config.device)
    if group.distributed and device.startswith("cuda"):
        device = f"cuda:{group.local_rank}"
    precision = resolve_precision(config.precision, device, purpose="train")
    record = {
        "config": json.loads(json.dumps(asdict(config))),
        "address": address,
        "dataset": manifest.fingerprint(),
        "weights_sha256": backbone.weights.sha256,
        "tlmic_version": __version__,
        "precision": precision,
    }
    record["world_size"] = group.world
    claimed: tuple[bool, Exception | None] = (False, None)
    if group.is_main:
        try:
            claimed = (_claim_run_dir(out, record, resume=resume, overwrite=overwrite), None)
        except Exception as e:  # every rank must fail alike, not wait for rank 0 forever
            claimed = (False, e)
    resuming, error = group.broadcast(claimed)
    if error is not None:
        group.leave()
        raise error

    rows = {s: np.flatnonzero(manifest.splits == s) for s in ("train", "val", "test")}
    if len(rows["val"]) == 0 or len(rows["test"]) == 0:
        raise UsageError("finetuning needs val and test rows; the data's split has none of one of them")
    train = nested_subsets(
        rows["train"], manifest.labels, kind, [config.fraction], seed=config.seed, patient_ids=manifest.patient_ids
    )[float(config.fraction)]
    y_train = manifest.labels[train]
    if kind != "multilabel":
        counts = np.bincount(y_train[:, 0].astype(int), minlength=len(names))
        if counts.min() < 1:
            raise SubsetTooSmallError(
                f"training subset (fraction {config.fraction}) has no '{names[int(np.argmin(counts))]}' "
                "image; use a larger --fraction"
            )

    pre = backbone.preprocess
    t0 = time.perf_counter()
    pixels = group.first_then_rest(  # rank 0 builds the shared pixel cache; the others then read it
        lambda: {
            s: torch.from_numpy(load_pixels_for(manifest, r, pre, config.workers, use_cache=config.pixel_cache))[
                :, None
            ]
            for s, r in (("train", train), ("val", rows["val"]), ("test", rows["test"]))
        }
    )
    log(f"decoded {sum(len(p) for p in pixels.values())} images in {time.perf_counter() - t0:.1f} s")
    labels = {
        s: torch.from_numpy(manifest.labels[r].astype(np.float32))
        for s, r in (("train", train), ("val", rows["val"]), ("test", rows["test"]))
    }

    torch.manual_seed(config.seed)
    net = build_model(config, backbone, address, n_outputs_for(kind, len(names)))
    head_source = None
    if config.head_init:
        w, b, head_source = head_from_probe(config.head_init, address, config.fraction, config.seed, config.backbone)
        if w.shape != tuple(net.head.weight.shape):
            raise UsageError(f"--head-init: probe head {w.shape} does not fit this head {tuple(net.head.weight.shape)}")
        with torch.no_grad():
            net.head.weight.copy_(torch.from_numpy(w))
            net.head.bias.copy_(torch.from_numpy(b))
    net.to(device)
    frozen = backbone.truncated(config.freeze_until) if config.freeze_until else None  # shares net's modules
    if frozen is not None:
        frozen.requires_grad_(False)
    if config.freeze_backbone:
        net.backbone.requires_grad_(False)
        params = list(net.head.parameters())
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    else:
        head = {id(p) for p in net.head.parameters()}
        rest = [p for p in net.parameters() if p.requires_grad and id(p) not in head]
        groups = [{"params": list(net.head.parameters()), "lr": config.lr}]
        if rest:
            groups.append({"params": rest, "lr": config.lr * config.backbone_lr_mult})
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    model = net
    if group.distributed:  # wrapped after freezing: DDP must know which parameters receive gradients
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[group.local_rank] if device.startswith("cuda") else None)
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=2)
    loss_fn = make_loss(kind, y_train)

    state = {"epoch": 0, "best_score": -np.inf, "best_epoch": 0, "bad_epochs": 0, "history": []}
    if resuming and (out / "last.pt").is_file():
        ckpt = torch.load(out / "last.pt", map_location=device, weights_only=True)
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = json.loads(ckpt["state"])
        log(f"resuming {out} after epoch {state['epoch']}")
    resumed_from = state["epoch"]
    autocast = amp(device, precision)
    t_start = time.perf_counter()

    while state["epoch"] < config.epochs and not state.get("stopped"):
        epoch = state["epoch"] + 1
        gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch + 7_919 * group.rank)
        torch.manual_seed(config.seed * 100_003 + epoch + 7_919 * group.rank)  # dropout
        order = _epoch_order(len(train), config.seed, epoch, gen, group)
        net.train()
        if config.freeze_backbone:
            net.backbone.eval()  # frozen means frozen: BatchNorm statistics too
        if frozen is not None:
            frozen.eval()
        total, seen = 0.0, 0
        t = time.perf_counter()
        bar = _bar(len(order), f"epoch {epoch}/{config.epochs}", progress)
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            if len(idx) < 2 and len(order) > 1:
                continue  # BatchNorm cannot train on one image
            x = pixels["train"][idx].to(device)
            x = (
                augment_batch(x, pre.input_size, config.augment, gen)
                if config.augment
                else center_crop(x, pre.input_size)
            )
            y = labels["train"][idx].to(device)
            with autocast:
                logits = model(x.contiguous(memory_format=torch.channels_last))
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            bar.update(len(idx))
            bar.set_postfix(loss=f"{total / max(seen, 1):.4f}")
        bar.close()
        train_seconds = time.perf_counter() - t
        total, seen = group.sum([total, seen])
        group.sync_buffers(net)
        vm, val_loss = {}, float("nan")
        if group.is_main:  # rank 0 validates and decides; every rank follows
            val_logits = _predict(net, pixels["val"], pre.input_size, config.batch_size, device, autocast)
            with torch.no_grad():
                val_loss = float(loss_fn(torch.from_numpy(val_logits), labels["val"]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                vm = evaluate(
                    manifest.labels[rows["val"]], scores_from_logits(kind, val_logits), kind, label_names=names
                )
        vm, val_loss = group.broadcast((vm, val_loss))
        score = -val_loss if config.monitor == "loss" else vm[config.monitor]
        if config.schedule == "cosine":
            scheduler.step()
        else:
            scheduler.step(val_loss)
        improved = np.isfinite(score) and score > state["best_score"] + 1e-6
        if improved:
            state.update(best_score=float(score), best_epoch=epoch, bad_epochs=0)
            if group.is_main:
                _save({"model": net.state_dict()}, out / "best.pt")
        else:
            state["bad_epochs"] += 1
        row = {
            "epoch": epoch,
            "train_loss": total / max(seen, 1),
            "val_loss": val_loss,
            "val_auroc": vm["auroc"],
            "val_auprc": vm["auprc"],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(train_seconds, 3),
            "best": improved,
        }
        state["history"].append(row)
        log(
            f"epoch {epoch}: train loss {row['train_loss']:.4f}, val loss {val_loss:.4f}, "
            f"val AUROC {vm['auroc']:.4f}, AUPRC {vm['auprc']:.4f}{' *' if improved else ''}"
        )
        state["epoch"] = epoch
        if state["bad_epochs"] >= config.patience:
            state["stopped"] = True
            log(f"early stop: no val {config.monitor} improvement for {config.patience} epochs")
        if group.is_main:
            _save(
                {
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "state": json.dumps(state),
                },
                out / "last.pt",
            )
        group.barrier()  # nobody starts the next epoch before the checkpoint of this one exists
        group.maybe_crash(epoch)
        if on_epoch and group.is_main:
            on_epoch(epoch)
    seconds = time.perf_counter() - t_start
    if not group.is_main:  # rank 0 alone evaluates on test and writes the outputs
        group.leave()
        return None

    # --- final model: the best epoch, evaluated once on test --------------------------------------
    best = torch.load(out / "best.pt", map_location=device, weights_only=True) if (out / "best.pt").exists() else None
    if best is not None:
        net.load_state_dict(best["model"])
    val_logits = _predict(net, pixels["val"], pre.input_size, config.batch_size, device, autocast)
    test_logits = _predict(net, pixels["test"], pre.input_size, config.batch_size, device, autocast)
    s_val, s_test = scores_from_logits(kind, val_logits), scores_from_logits(kind, test_logits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        thresholds = choose_thresholds(manifest.labels[rows["val"]], s_val, kind)
        test_m = evaluate(manifest.labels[rows["test"]], s_test, kind, thresholds=thresholds, label_names=names)
        ci = bootstrap(
            manifest.labels[rows["test"]],
            s_test,
            kind,
            thresholds=thresholds,
            n_resamples=config.bootstrap,
            seed=config.seed,
        )
    metrics = {m: test_m[m] for m in METRICS}
    metrics.update({f"{m}_lo": ci[m][0] for m in METRICS})
    metrics.update({f"{m}_hi": ci[m][1] for m in METRICS})
    metrics.update(
        n_labels=test_m["n_labels"],
        n_labels_total=test_m["n_labels_total"],
        per_label=test_m["per_label"],
        threshold=None if thresholds is None else thresholds.tolist(),
        best_epoch=state["best_epoch"],
        epochs_run=state["epoch"],
        address=address,
        n_train=len(train),
        head_init=head_source,
        arch=config.arch,
        train_seconds=round(sum(h["seconds"] for h in state["history"]), 2),
        precision=precision,
    )
    write_predictions(
        out / "predictions.csv",
        ids=manifest.ids,
        labels=manifest.labels,
        rows={"val": rows["val"], "test": rows["test"]},
        scores={"val": s_val, "test": s_test},
        label_kind=kind,
        label_names=names,
    )
    _write_history(out / "history.csv", state["history"])
    plot_curves(state["history"], out / "curves.png", config.monitor)

    net_cpu = net.float().to("cpu").eval()
    example = pixels["val"][: min(4, len(pixels["val"]))]
    example = center_crop(example, pre.input_size).contiguous()
    onnx = None
    if config.export_onnx:
        from .export import export_onnx

        onnx = export_onnx(net_cpu, example, out / "model.onnx")
    comp = []
    if config.compactness:
        from .compactness import format_compactness

        comp = compactness_pair(
            backbone,
            address,
            net_cpu,
            example[:1],
            n_outputs_for(kind, len(names)),
            name="" if config.arch == "truncated" else arm_name(config, backbone.name, address),
        )
        (out / "compactness.json").write_text(json.dumps([asdict(c) for c in comp], indent=1))
        (out / "compactness.md").write_text(format_compactness(comp) + "\n")
    metrics["onnx"] = onnx
    metrics["world_size"] = group.world
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1, default=float))
    tmp.replace(out / "metrics.json")
    group.leave()
    return FinetuneResult(
        out, metrics, state["history"], state["best_epoch"], [asdict(c) for c in comp], onnx, seconds, resumed_from
    )


def _epoch_order(n: int, seed: int, epoch: int, gen, group):
    """This rank's training rows for ``epoch``, in order: a seeded permutation in a single process;
    a :class:`~torch.utils.data.DistributedSampler` share (padded so that every rank runs the same
    number of equal-sized batches) in a torchrun group."""
    import torch

    if not group.distributed:
        return torch.randperm(n, generator=gen)
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=group.world, rank=group.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler))


def load_pixels_for(manifest, rows, pre, workers: int, *, use_cache: bool = True) -> np.ndarray:
    """The rows' decoded squares: from the shared pixel cache (decoded once for every backbone,
    run and epoch), or decoded directly."""
    from .errors import BadImageError
    from .pixels import build_pixel_cache, load_pixels

    if not use_cache:
        return load_pixels(manifest.source, rows, pre.resize_size, pre.interpolation)
    cache = build_pixel_cache(manifest, pre.resize_size, pre.interpolation, cache_root() / "pixels", workers=workers)
    bad = [int(r) for r in rows if cache.bad[r]]
    if bad:
        raise BadImageError(f"{cache.errors[bad[0]]}; {len(bad)} unreadable image(s) among the rows to train on")
    return cache.read(np.sort(rows))[np.argsort(np.argsort(rows))]


def arm_name(config: FinetuneConfig, backbone_name: str, address: str) -> str:
    """What the trained network is, in words (compactness tables, reports)."""
    if config.arch.startswith("cbr-"):
        return f"{config.arch} (from scratch)"
    if config.arch == "hybrid":
        return f"{backbone_name} hybrid (to {address} + slim block)"
    return f"{backbone_name} truncated at {address}"


def compactness_pair(backbone, address: str, net, example, n_out: int, name: str = ""):
    """Compactness of the trained network and of the full-depth one (same head shape)."""
    from .compactness import measure

    rows = [measure(name or f"{backbone.name} truncated at {address}", net, example)]
    full = full_depth_address(backbone)
    if address != full or name:
        rows.append(
            measure(f"{backbone.name} full ({full})", build_network(backbone, full, n_out, 0.0).eval(), example)
        )
    return rows


def _predict(net, pixels, size: int, batch_size: int, device: str, autocast) -> np.ndarray:
    import torch

    net.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            x = center_crop(pixels[start : start + batch_size], size).to(device)
            with autocast:
                out.append(net(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.cat(out).numpy().astype(np.float64)


def _write_history(path: Path, history: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]) if history else ["epoch"])
        w.writeheader()
        w.writerows(history)
    tmp.replace(path)


def plot_curves(history: list[dict], path: Path, monitor: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    a.set_title("loss")
    a.set_xlabel("epoch")
    a.legend()
    b.plot(ep, [h["val_auroc"] for h in history], "o-", label="val AUROC")
    b.plot(ep, [h["val_auprc"] for h in history], "o-", label="val AUPRC")
    best = [h["epoch"] for h in history if h["best"]]
    if best:
        b.axvline(best[-1], color="grey", ls=":", label=f"best ({monitor})")
    b.set_title("validation")
    b.set_xlabel("epoch")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True, file=sys.stderr, leave=False
    )
