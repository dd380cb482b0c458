"""The report's figures: per fraction, the probe curves with the finetuned cut points overlaid, and
the feature reuse of full finetuning and of the best truncated arm."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...probes.report import aggregate
from ...runtime.files import save_figure
from ..arms import Arm


def plot_fraction(out: Path, rows: list[dict], fraction: float, path: Path, config) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...backbones.cutpoints import address_key

    probe_rows = json.loads((out / "probes" / "results.json").read_text())["rows"]
    agg = [a for a in aggregate(probe_rows) if a["fraction"] == fraction and a["control"] == "none"]
    layers = sorted({a["layer"] for a in agg}, key=address_key)
    x = {a: i for i, a in enumerate(layers)}
    fig, ax = plt.subplots(figsize=(max(7, len(layers) * 0.3), 3.8))
    for model, style in (("logreg", "o-"), ("lightgbm", "s-")):
        pts = sorted((x[a["layer"]], a["auprc"]) for a in agg if a["model"] == model)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, ms=3, alpha=0.8, label=f"probe: {model}")
    arms: dict[Arm, list[float]] = {}
    for r in rows:
        if r["fraction"] == fraction:
            arms.setdefault(Arm.parse(r["arm"]), []).append(r["auprc"])
    for arm in sorted((a for a in arms if a.kind == "truncated"), key=Arm.sort_key):
        v, at = arms[arm], arm.address
        if at in x:
            ax.plot(x[at], np.mean(v), "r*", ms=12)
            ax.annotate(at, (x[at], np.mean(v)), textcoords="offset points", xytext=(4, 4), fontsize=7)
    full = arms.get(Arm("full"), [])
    if full:
        ax.axhline(np.mean(full), color="k", ls="--", lw=1, label="full finetuning")
    ax.plot([], [], "r*", ms=10, label="truncated finetuning")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=90, fontsize=6)
    ax.set_xlabel("cut point (shallow to deep)")
    ax.set_ylabel("test AUPRC (mean over seeds)")
    ax.set_title(f"{config.backbone}, {fraction:g} of train: probes per cut point, finetuned cut points", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_reuse_fraction(out: Path, rows: list[dict], fraction: float, path: Path, log=None) -> Path | None:
    """Feature reuse at ``fraction``: linear CKA per cut point between the pretrained backbone and the
    finetuned network on the test images (:func:`~tlmic_feats.finetune.reuse.feature_reuse`), for
    full finetuning and for the truncated arm with the best mean validation AUPRC, both at their
    first common seed. Each run's ``feature_reuse.csv`` is computed once and read after. None when
    the fraction lacks either arm or a run cannot be compared (the reason goes to ``log``)."""
    from ...runtime.errors import TlmicError
    from ...features.similarity_run import SimilarityConfig
    from ...finetune.reuse import feature_reuse, plot_feature_reuse, read_feature_reuse
    from ..arms import rank_by_validation

    finished = [r for r in rows if r["fraction"] == fraction and r["stage"] in ("stage1", "stage2")]
    by_arm: dict[Arm, dict[int, dict]] = {}
    for r in finished:
        by_arm.setdefault(Arm.parse(r["arm"]), {})[int(r["seed"])] = r
    truncated = {a.address: a for a in by_arm if a.kind == "truncated"}
    full = by_arm.get(Arm("full"))
    if not truncated or not full:
        return None
    val = {k: float(np.mean([r["val_auprc"] for r in by_arm[a].values()])) for k, a in truncated.items()}
    best = truncated[rank_by_validation(val)[0][0]]
    seeds = sorted(set(full) & set(by_arm[best]))
    if not seeds:
        return None
    seed = seeds[0]
    curves = {}
    for label, arm in ((f"full finetuning (seed {seed})", Arm("full")), (f"truncated at {best.address} (seed {seed})", best)):
        run = (out / by_arm[arm][seed]["predictions"]).parent
        try:
            try:
                curves[label] = read_feature_reuse(run, method="cka", split="test")
            except TlmicError:
                curves[label] = feature_reuse(SimilarityConfig(run=str(run), method="cka", split="test"))
        except TlmicError as e:
            if log is not None:
                log(f"feature reuse at {fraction:g}: {run.name} not compared: {e}")
            return None
    return plot_feature_reuse(curves, path, title=f"feature reuse at {fraction:g} of train: CKA, pretrained vs finetuned")
