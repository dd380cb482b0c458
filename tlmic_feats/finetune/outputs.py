"""A finished run's outputs: the best checkpoint scored once on test, metrics with CIs, predictions,
the history and its curves, the ONNX export and the compactness table. ``metrics.json`` is written
last (it marks the run finished), then the resume state is deleted; a finished run's result can
be read back without training (:func:`completed_result`)."""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..backbones.cutpoints import full_depth_address
from ..backbones.networks import build_network
from ..backbones.preprocess import center_crop
from ..metrics.predictions import write_predictions
from ..metrics.scores import METRICS, UndefinedMetricWarning, bootstrap, choose_thresholds, evaluate
from ..runtime.devices import autocast
from ..runtime.files import atomic_path, save_figure, write_json, write_text
from .config import FinetuneConfig, FinetuneResult
from .losses import scores_from_logits

if TYPE_CHECKING:
    from .setup import RunSetup, Training


def predict_logits(net, pixels, setup: RunSetup, batch_size: int) -> np.ndarray:
    """Logits of ``pixels`` (center crops) at inference speed: no autograd, the training precision,
    batches of at least 64 images."""
    import torch

    batch = max(batch_size, 64)
    net.eval()
    out = []
    with torch.inference_mode(), autocast(setup.device, setup.precision):
        for start in range(0, len(pixels), batch):
            x = center_crop(pixels[start : start + batch], setup.input_size, setup.interpolation).to(setup.device)
            out.append(net(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.cat(out).numpy().astype(np.float64)


def write_outputs(setup: RunSetup, tr: Training, state: dict) -> tuple[dict, list, dict | None]:
    """Every output of a finished run; returns ``(metrics, compactness rows, ONNX check)``."""
    import torch

    config, out, net = setup.config, setup.out, tr.net
    if (out / "best.pt").exists():
        net.load_state_dict(torch.load(out / "best.pt", map_location=setup.device, weights_only=True)["model"])
    s_val = scores_from_logits(setup.kind, predict_logits(net, setup.pixels["val"], setup, config.training.batch_size))
    s_test = scores_from_logits(setup.kind, predict_logits(net, setup.pixels["test"], setup, config.training.batch_size))
    metrics = {**_test_metrics(setup, s_val, s_test), **_run_facts(setup, tr, state)}
    write_predictions(
        out / "predictions.csv",
        ids=setup.manifest.ids,
        labels=setup.manifest.labels,
        rows={"val": setup.rows["val"], "test": setup.rows["test"]},
        scores={"val": s_val, "test": s_test},
        label_kind=setup.kind,
        label_names=setup.names,
    )
    write_history(out / "history.csv", state["history"])
    plot_curves(state["history"], out / "curves.png", config.training.monitor)
    onnx, comp = _export_and_measure(setup, net)
    metrics["onnx"] = onnx
    metrics["world_size"] = setup.group.world
    write_json(out / "metrics.json", metrics, default=float)
    if not config.keep_checkpoints:  # finished: the resume state is of no further use
        (out / "last.pt").unlink(missing_ok=True)
    return metrics, comp, onnx


def _test_metrics(setup: RunSetup, s_val: np.ndarray, s_test: np.ndarray) -> dict:
    """Test metrics with bootstrap CIs, thresholds chosen on validation."""
    config, kind = setup.config, setup.kind
    y_val, y_test = setup.manifest.labels[setup.rows["val"]], setup.manifest.labels[setup.rows["test"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        thresholds = choose_thresholds(y_val, s_val, kind)
        test_m = evaluate(y_test, s_test, kind, thresholds=thresholds, label_names=setup.names)
        ci = bootstrap(y_test, s_test, kind, thresholds=thresholds, n_resamples=config.bootstrap, seed=config.seed)
    metrics = {m: test_m[m] for m in METRICS}
    metrics.update({f"{m}_lo": ci[m][0] for m in METRICS})
    metrics.update({f"{m}_hi": ci[m][1] for m in METRICS})
    metrics.update(
        n_labels=test_m["n_labels"],
        n_labels_total=test_m["n_labels_total"],
        per_label=test_m["per_label"],
        threshold=None if thresholds is None else thresholds.tolist(),
    )
    return metrics


def _run_facts(setup: RunSetup, tr: Training, state: dict) -> dict:
    """What the run was and did: its budget, steps, the step kept, seconds."""
    config, budget, history = setup.config, setup.budget, state["history"]
    return dict(
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
        input_size=setup.input_size,
        n_train=len(setup.train),
        head_init=tr.head_source,
        arch=config.arch,
        train_seconds=round(sum(h["seconds"] for h in history), 2),
        eval_seconds=round(sum(h["eval_seconds"] for h in history), 2),
        precision=setup.precision,
    )


def _export_and_measure(setup: RunSetup, net) -> tuple[dict | None, list]:
    """The ONNX export with its parity check, and compactness against the full-depth network."""
    config, out = setup.config, setup.out
    net_cpu = net.float().to("cpu").eval()
    example = setup.pixels["val"][: min(4, len(setup.pixels["val"]))]
    example = center_crop(example, setup.input_size, setup.interpolation).contiguous()
    onnx = None
    if config.export_onnx:
        from ..backbones.export import export_onnx

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
        write_json(out / "compactness.json", [asdict(c) for c in comp])
        write_text(out / "compactness.md", format_compactness(comp) + "\n")
    return onnx, comp


def completed_result(out: Path) -> FinetuneResult:
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


def arm_name(config: FinetuneConfig, backbone_name: str, address: str) -> str:
    """What the trained network is, in words (compactness tables, reports)."""
    if config.arch.startswith("cbr-"):
        return f"{config.arch} (from scratch)"
    if config.arch == "hybrid":
        return f"{backbone_name} hybrid (to {address} + slim block)"
    return f"{backbone_name} truncated at {address}"


# The full-depth reference of compactness tables, measured once per process: every arm of a study
# compares itself with the same network (backbone, weights, head shape, pooling, input shape).
_FULL_DEPTH: dict[tuple, object] = {}


def compactness_pair(backbone, address: str, net, example, n_out: int, name: str = "", pool: str = "avg"):
    """Compactness of the trained network and of the full-depth one (same head shape)."""
    from .compactness import measure

    rows = [measure(name or f"{backbone.name} truncated at {address}", net, example)]
    full = full_depth_address(backbone)
    if address != full or name:
        key = (backbone.name, backbone.weights.sha256, full, n_out, pool, tuple(example.shape), str(example.dtype))
        if key not in _FULL_DEPTH:
            full_net = build_network(backbone, full, n_out, 0.0, pool).eval()
            _FULL_DEPTH[key] = measure(f"{backbone.name} full ({full})", full_net, example)
        rows.append(_FULL_DEPTH[key])
    return rows


def write_history(path: Path, history: list[dict]) -> None:
    """``history.csv``: one row per evaluation."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]) if history else ["step"])
        w.writeheader()
        w.writerows(history)


def read_history(path: Path) -> list[dict]:
    """``history.csv`` as written: one dict per evaluation, numbers as numbers."""

    def value(k: str, v: str):
        if k == "best":
            return v == "True"
        return int(v) if k == "step" else float(v)

    with open(path, newline="") as f:
        return [{k: value(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_curves(history: list[dict], path: Path, monitor: str) -> None:
    """``curves.png``: losses and validation metrics by optimizer step, the kept step marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    steps = [h["step"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(steps, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(steps, [h["val_loss"] for h in history], "o-", label="val")
    a.set_title("loss")
    a.legend()
    b.plot(steps, [h["val_auroc"] for h in history], "o-", label="val AUROC")
    b.plot(steps, [h["val_auprc"] for h in history], "o-", label="val AUPRC")
    best = [h["step"] for h in history if h["best"]]
    if best:
        b.axvline(best[-1], color="grey", ls=":", label=f"best ({monitor})")
    b.set_title("validation")
    b.legend()
    for ax in (a, b):
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
