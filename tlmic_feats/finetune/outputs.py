"""A finished run's outputs: test metrics, predictions, history, curves, ONNX export, compactness."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..backbones.networks import build_network, full_depth_address
from ..runtime.devices import autocast as amp
from .config import FinetuneConfig
from .losses import scores_from_logits

if TYPE_CHECKING:
    from .trainer import _Setup, _Training

import csv
import json
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..metrics.predictions import write_predictions
from ..metrics.scores import METRICS, UndefinedMetricWarning, bootstrap, choose_thresholds, evaluate
from .augment import center_crop


def read_history(path: Path) -> list[dict]:
    """``history.csv`` as written: one dict per evaluation, numbers as numbers."""

    def value(k: str, v: str):
        if k == "best":
            return v == "True"
        return int(v) if k == "step" else float(v)

    with open(path, newline="") as f:
        return [{k: value(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def _write_outputs(setup: _Setup, tr: _Training, state: dict):
    """The best checkpoint evaluated once on test; metrics, predictions, history, curves, ONNX,
    compactness. ``metrics.json`` is written last (it marks the run finished); the resume state
    is deleted after it."""
    import torch

    config, out, manifest, kind, names, net = setup.config, setup.out, setup.manifest, setup.kind, setup.names, tr.net
    if (out / "best.pt").exists():
        net.load_state_dict(torch.load(out / "best.pt", map_location=setup.device, weights_only=True)["model"])
    s_val = scores_from_logits(kind, _predict(net, setup.pixels["val"], setup, config.batch_size))
    s_test = scores_from_logits(kind, _predict(net, setup.pixels["test"], setup, config.batch_size))
    y_val, y_test = manifest.labels[setup.rows["val"]], manifest.labels[setup.rows["test"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        thresholds = choose_thresholds(y_val, s_val, kind)
        test_m = evaluate(y_test, s_test, kind, thresholds=thresholds, label_names=names)
        ci = bootstrap(y_test, s_test, kind, thresholds=thresholds, n_resamples=config.bootstrap, seed=config.seed)
    history, budget = state["history"], setup.budget
    metrics = {m: test_m[m] for m in METRICS}
    metrics.update({f"{m}_lo": ci[m][0] for m in METRICS})
    metrics.update({f"{m}_hi": ci[m][1] for m in METRICS})
    metrics.update(
        n_labels=test_m["n_labels"],
        n_labels_total=test_m["n_labels_total"],
        per_label=test_m["per_label"],
        threshold=None if thresholds is None else thresholds.tolist(),
        best_step=state["best_step"],
        steps_run=state["step"],
        steps=budget.steps,
        budget_policy=budget.policy,
        eval_every=budget.eval_every,
        batch_size=budget.batch_size,
        epochs_run=round(state["step"] / budget.steps_per_epoch, 3),
        best_val=state["best_score"] if np.isfinite(state["best_score"]) else None,
        address=setup.address,
        pool=config.pool,
        input_size=setup.backbone.preprocess.input_size,
        n_train=len(setup.train),
        head_init=tr.head_source,
        arch=config.arch,
        train_seconds=round(sum(h["seconds"] for h in history), 2),
        eval_seconds=round(sum(h["eval_seconds"] for h in history), 2),
        precision=setup.precision,
    )
    write_predictions(
        out / "predictions.csv",
        ids=manifest.ids,
        labels=manifest.labels,
        rows={"val": setup.rows["val"], "test": setup.rows["test"]},
        scores={"val": s_val, "test": s_test},
        label_kind=kind,
        label_names=names,
    )
    _write_history(out / "history.csv", history)
    plot_curves(history, out / "curves.png", config.monitor)

    net_cpu = net.float().to("cpu").eval()
    example = center_crop(setup.pixels["val"][: min(4, len(setup.pixels["val"]))], setup.backbone.preprocess.input_size)
    example = example.contiguous()
    onnx = None
    if config.export_onnx:
        from .export import export_onnx

        onnx = export_onnx(net_cpu, example, out / "model.onnx")
    comp = []
    if config.compactness:
        from .compactness import format_compactness

        comp = compactness_pair(
            setup.backbone,
            setup.address,
            net_cpu,
            example[:1],
            setup.n_outputs,
            name="" if config.arch == "truncated" else arm_name(config, setup.backbone.name, setup.address),
            pool=config.pool,
        )
        (out / "compactness.json").write_text(json.dumps([asdict(c) for c in comp], indent=1))
        (out / "compactness.md").write_text(format_compactness(comp) + "\n")
    metrics["onnx"] = onnx
    metrics["world_size"] = setup.group.world
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1, default=float))
    tmp.replace(out / "metrics.json")
    if not config.keep_checkpoints:  # finished: the resume state is of no further use
        (out / "last.pt").unlink(missing_ok=True)
    return metrics, comp, onnx


def arm_name(config: FinetuneConfig, backbone_name: str, address: str) -> str:
    """What the trained network is, in words (compactness tables, reports)."""
    if config.arch.startswith("cbr-"):
        return f"{config.arch} (from scratch)"
    if config.arch == "hybrid":
        return f"{backbone_name} hybrid (to {address} + slim block)"
    return f"{backbone_name} truncated at {address}"


def compactness_pair(backbone, address: str, net, example, n_out: int, name: str = "", pool: str = "avg"):
    """Compactness of the trained network and of the full-depth one (same head shape)."""
    from .compactness import measure

    rows = [measure(name or f"{backbone.name} truncated at {address}", net, example)]
    full = full_depth_address(backbone)
    if address != full or name:
        full_net = build_network(backbone, full, n_out, 0.0, pool).eval()
        rows.append(measure(f"{backbone.name} full ({full})", full_net, example))
    return rows


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
    ep = [h["step"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["val_loss"] for h in history], "o-", label="val")
    a.set_title("loss")
    a.set_xlabel("optimizer step")
    a.legend()
    b.plot(ep, [h["val_auroc"] for h in history], "o-", label="val AUROC")
    b.plot(ep, [h["val_auprc"] for h in history], "o-", label="val AUPRC")
    best = [h["step"] for h in history if h["best"]]
    if best:
        b.axvline(best[-1], color="grey", ls=":", label=f"best ({monitor})")
    b.set_title("validation")
    b.set_xlabel("optimizer step")
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _predict(net, pixels, setup: _Setup, batch_size: int) -> np.ndarray:
    """Logits of ``pixels`` (center crops) at inference speed: no autograd, the training precision,
    batches at least 64 images."""
    import torch

    size, device = setup.backbone.preprocess.input_size, setup.device
    batch = max(batch_size, 64)
    net.eval()
    out = []
    with torch.inference_mode(), amp(device, setup.precision):
        for start in range(0, len(pixels), batch):
            x = center_crop(pixels[start : start + batch], size).to(device)
            out.append(net(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.cat(out).numpy().astype(np.float64)
