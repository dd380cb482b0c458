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


def plot_reuse_fraction(out: Path, rows: list[dict], fraction: float, best: Arm, path: Path) -> Path | None:
    """Feature reuse at ``fraction``: linear CKA per cut point between the pretrained backbone and the
    finetuned network on the test images (:func:`~tlmic_feats.finetune.reuse.feature_reuse`, computed
    once per run and read after), for full finetuning and for ``best`` (the truncated arm the
    summary's verdicts pair with it), at their first common seed. None when either has no run at
    ``fraction``; a run that cannot be compared raises its :class:`~tlmic_feats.runtime.errors.TlmicError`."""
    from ...finetune.reuse import plot_feature_reuse, stored_feature_reuse

    runs: dict[Arm, dict[int, dict]] = {}
    for r in rows:
        if r["fraction"] == fraction and r["stage"] in ("stage1", "stage2"):
            runs.setdefault(Arm.parse(r["arm"]), {})[int(r["seed"])] = r
    full = Arm("full")
    seeds = sorted(set(runs.get(full, {})) & set(runs.get(best, {})))
    if not seeds:
        return None
    seed = seeds[0]
    curves = {
        label: stored_feature_reuse((out / runs[arm][seed]["predictions"]).parent, method="cka", split="test")[0]
        for label, arm in ((f"full finetuning (seed {seed})", full), (f"truncated at {best.address} (seed {seed})", best))
    }
    return plot_feature_reuse(curves, path, title=f"feature reuse at {fraction:g} of train: CKA, pretrained vs finetuned")
