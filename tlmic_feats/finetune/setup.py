"""Setting a finetuning run up: what it trains on (data, subset, backbone, budget), where it writes
(the claimed run directory), the decoded pixels, and the network with its optimizer and schedule.
Every rank of a torchrun group sets up alike; rank 0 alone claims the directory."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..backbones.cutpoints import full_depth_address, hybrid_address
from ..backbones.networks import build_hybrid, build_network
from ..data.readers import load_manifest
from ..data.subsets import nested_subsets
from ..runtime.errors import BadImageError, SubsetTooSmallError, UsageError
from ..runtime.paths import cache_root, slug
from ..runtime.rundir import claim_run_dir, finetune_run_name
from .budget import StepBudget, lr_factor, resolve_budget
from .config import FinetuneConfig
from .losses import n_outputs_for
from .lpft import head_from_probe

# Settings that change how a run is kept, not what it computes: a resumed run may change them.
NOT_IDENTITY = ("config.keep_checkpoints",)


@dataclass
class RunSetup:
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
    cut: object = None  # the resolved cut point (None for a CBR network)
    pixels: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)

    @property
    def n_outputs(self) -> int:
        return n_outputs_for(self.kind, len(self.names))

    @property
    def input_size(self) -> int:
        return self.backbone.preprocess.input_size

    @property
    def interpolation(self) -> str:
        """How the host resized and cropped (the evaluation view's crop offsets follow it)."""
        return self.backbone.preprocess.interpolation


def default_run_dir(config: FinetuneConfig, address: str) -> Path:
    name = finetune_run_name(
        slug(Path(config.data.path).name),
        slug(config.backbone),
        slug(config.weights),
        address,
        config.fraction,
        config.seed,
    )
    return cache_root() / "runs" / name


def set_up(config: FinetuneConfig, group, *, resume: bool, overwrite: bool) -> RunSetup:
    """Data, subset, backbone, budget and the claimed run directory (every rank alike)."""
    from ..backbones.registry import build_backbone
    from ..runtime.devices import resolve_device, resolve_precision

    manifest = load_manifest(config.data)
    backbone = build_backbone(config.backbone, config.weights, seed=config.seed, input_size=config.input_size)
    cut = trained_cut(config, backbone)  # the one resolution of --truncate
    address = cut.address if cut is not None else config.arch
    out = Path(config.out) if config.out else default_run_dir(config, address)
    device = resolve_device(config.device)
    if group.distributed and device.startswith("cuda"):
        device = f"cuda:{group.local_rank}"
    precision = resolve_precision(config.training.precision, device, purpose="train")
    rows, train = _rows(config, manifest)
    budget = resolve_budget(
        n_train=len(train),
        batch_size=config.training.batch_size,
        epochs=config.training.epochs,
        min_steps=config.training.min_steps,
        steps=config.training.steps,
        eval_every=config.training.eval_every,
        world=group.world,
    )
    record = _record(config, manifest, backbone, address, precision, budget, group.world)
    resuming, complete, lock = _claim(out, record, group, resume=resume, overwrite=overwrite)
    kind, names = manifest.label_kind, list(manifest.label_names)
    return RunSetup(
        config, group, manifest, backbone, address, kind, names, out, device, precision, rows, train, budget,
        resuming, complete, lock, cut,
    )  # fmt: skip


def trained_cut(config: FinetuneConfig, backbone):
    """Where the trained network is cut: ``--truncate`` (``all``: the deepest block end), the
    hybrid's cut; None for a CBR network (its address is its name)."""
    if config.arch.startswith("cbr-"):
        return None
    if config.arch == "hybrid":
        return backbone.cut_point(hybrid_address(backbone))
    return backbone.cut_point(full_depth_address(backbone) if config.truncate == "all" else config.truncate)


def _rows(config: FinetuneConfig, manifest) -> tuple[dict, np.ndarray]:
    """The split's rows, and the training subset of ``fraction`` and ``seed`` (the probes' own)."""
    kind, names = manifest.label_kind, list(manifest.label_names)
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
    return rows, train


def _record(config, manifest, backbone, address: str, precision: str, budget: StepBudget, world: int) -> dict:
    """What ``run.json`` holds: everything that decides the run's result."""
    from .. import __version__

    return {
        "config": asdict(config),
        "address": address,
        "dataset": manifest.fingerprint(),
        "weights_sha256": backbone.weights.sha256,
        "preprocess": asdict(backbone.preprocess),
        "tlmic_version": __version__,
        "precision": precision,
        "budget": asdict(budget),
        "world_size": world,
    }


def finished_run(config: FinetuneConfig) -> Path | None:
    """The finished run directory of ``config``, found without building the network (a rerun's
    stored result in a second instead of the time it takes to import torch and build it): the same
    recorded configuration, data (the manifest's fingerprint), weights file and tlmic version. None
    when that cannot be told without the network (random or downloaded weights) or inside a torchrun
    group; :func:`set_up` then claims the directory with the full record, as before."""
    import glob
    import json
    import os

    from .. import __version__
    from ..backbones.availability import weights_sha256_without_building

    if os.environ.get("WORLD_SIZE", "1") != "1":
        return None
    sha = weights_sha256_without_building(config.backbone, config.weights)
    if sha is None:
        return None
    if config.out:
        candidates = [Path(config.out)]
    else:  # the default directory's name holds the resolved cut point: any address, then the record decides
        before, _, after = str(default_run_dir(config, "\0")).partition("\0")
        candidates = [Path(p) for p in sorted(glob.glob(glob.escape(before) + "*" + glob.escape(after)))]
    wanted = json.loads(json.dumps(asdict(config)))
    ignored = {k.removeprefix("config.") for k in NOT_IDENTITY}
    manifest_print = None
    for out in candidates:
        if not (out / "metrics.json").is_file() or not (out / "run.json").is_file():
            continue
        try:
            record = json.loads((out / "run.json").read_text())
        except ValueError:
            continue
        recorded = {k: v for k, v in record.get("config", {}).items() if k not in ignored}
        if recorded != {k: v for k, v in wanted.items() if k not in ignored}:
            continue
        if record.get("weights_sha256") != sha or record.get("tlmic_version") != __version__:
            continue
        manifest_print = manifest_print or load_manifest(config.data).fingerprint()
        if record.get("dataset") == manifest_print:
            return out
    return None


def _claim(out: Path, record: dict, group, *, resume: bool, overwrite: bool) -> tuple[bool, bool, object]:
    """Rank 0 locks and claims the run directory; every rank learns whether it resumes a run, and
    whether that run had finished. Returns ``(resuming, complete, lock)``."""
    from ..runtime.locks import StoreLock

    claimed: tuple[bool, bool, Exception | None] = (False, False, None)
    lock = None
    if group.is_main:
        try:
            lock = StoreLock(out).acquire()  # a second process writing the same run would corrupt it
            resuming = claim_run_dir(
                out,
                record,
                what="finetuning run",
                resume=resume,
                overwrite=overwrite,
                ignore=NOT_IDENTITY,
                replace_hint="choose another --out, or --overwrite to replace it",
            )
            claimed = (resuming, resuming and (out / "metrics.json").is_file(), None)
        except Exception as e:  # every rank must fail alike, not wait for rank 0 forever
            claimed = (False, False, e)
    resuming, complete, error = group.broadcast(claimed)
    if error is not None:
        if lock is not None:
            lock.release()
        group.leave()
        raise error
    return resuming, complete, lock


def load_data(setup: RunSetup, log) -> None:
    """Decoded pixels (through the shared pixel cache) and float labels of train, val and test;
    first, what the run's subset and the evaluation splits leave too small to trust, said out loud
    (:mod:`~tlmic_feats.data.sample_size`)."""
    import torch

    from ..data.sample_size import small_sample_warnings

    config, manifest, pre = setup.config, setup.manifest, setup.backbone.preprocess
    for warning in small_sample_warnings(manifest, [config.fraction], [config.seed]):
        log(warning)
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


def load_pixels_for(manifest, rows, pre, workers: int, *, use_cache: bool = True) -> np.ndarray:
    """The rows' decoded squares: from the shared pixel cache (decoded once for every backbone,
    run and epoch), or decoded directly."""
    from ..features.pixels import build_pixel_cache, load_pixels

    if not use_cache:
        return load_pixels(manifest.source, rows, pre.resize_size, pre.interpolation, crop=pre.input_size)
    cache = build_pixel_cache(
        manifest, pre.resize_size, pre.interpolation, cache_root() / "pixels", crop=pre.input_size, workers=workers
    )
    bad = [int(r) for r in rows if cache.bad[r]]
    if bad:
        raise BadImageError(f"{cache.errors[bad[0]]}; {len(bad)} unreadable image(s) among the rows to train on")
    return cache.read(np.sort(rows))[np.argsort(np.argsort(rows))]


# --- the network and what trains it ------------------------------------------------------------------


@dataclass
class Training:
    """The network being trained and what trains it."""

    net: object  # the network (rank 0 saves and evaluates it)
    model: object  # what the steps call: ``net``, or its DistributedDataParallel (and compiled) wrapper
    optimizer: object
    scheduler: object
    frozen: object = None  # layer-wise finetuning: the bottom of ``net`` that stays frozen
    head_source: str | None = None  # LP-FT: the probe the head started from


def build_model(config: FinetuneConfig, backbone, address, n_outputs: int):
    """The network ``config.arch`` names: truncated (:func:`build_network`), hybrid or a CBR net,
    each pooled with ``config.pool``."""
    if config.arch.startswith("cbr-"):
        from ..backbones.cbr import build_cbr

        return build_cbr(config.arch, n_outputs, dropout=config.dropout, pool=config.pool)
    if config.arch == "hybrid":
        return build_hybrid(backbone, n_outputs, config.dropout, config.pool)
    return build_network(backbone, address, n_outputs, config.dropout, config.pool)


def build_training(setup: RunSetup) -> Training:
    """The network (head from a probe for LP-FT), what is frozen, the optimizer and the schedule."""
    import torch

    config, backbone = setup.config, setup.backbone
    torch.manual_seed(config.seed)
    net = build_model(config, backbone, setup.cut or setup.address, setup.n_outputs)
    head_source = _init_head(net, setup) if config.head_init else None
    net.to(setup.device)
    frozen = backbone.truncated(config.freeze_until) if config.freeze_until else None  # shares net's modules
    if frozen is not None:
        frozen.requires_grad_(False)
    if config.freeze_backbone:
        net.backbone.requires_grad_(False)
    optimizer = _optimizer(net, config)
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
    return Training(net, model, optimizer, scheduler, frozen, head_source)


def _init_head(net, setup: RunSetup) -> str:
    """LP-FT: the head's weights from the probe of this cut point and subset; returns its name."""
    import torch

    config = setup.config
    w, b, source = head_from_probe(
        config.head_init, setup.address, config.fraction, config.seed, config.backbone, config.pool, setup.input_size
    )
    if w.shape != tuple(net.head.weight.shape):
        raise UsageError(f"--head-init: probe head {w.shape} does not fit this head {tuple(net.head.weight.shape)}")
    with torch.no_grad():
        net.head.weight.copy_(torch.from_numpy(w))
        net.head.bias.copy_(torch.from_numpy(b))
    return source


def _optimizer(net, config: FinetuneConfig):
    """SGD on the head alone for a frozen backbone; else AdamW, the backbone at its own rate."""
    import torch

    if config.freeze_backbone:
        return torch.optim.SGD(
            list(net.head.parameters()), lr=config.training.lr, momentum=0.9, weight_decay=config.weight_decay
        )
    head = {id(p) for p in net.head.parameters()}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in head]
    groups = [{"params": list(net.head.parameters()), "lr": config.training.lr}]
    if rest:
        groups.append({"params": rest, "lr": config.training.lr * config.backbone_lr_mult})
    return torch.optim.AdamW(groups, lr=config.training.lr, weight_decay=config.weight_decay)
