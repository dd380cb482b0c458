"""Per-layer probe reports: ``summary.md`` and ``layers.png``, rendered from ``results.json``.

:func:`render_report` needs only the run directory, so ``tlmic report --run DIR`` re-renders a
report at any time without touching features or images.

The best layer of a model x fraction is the one with the highest mean *validation* AUPRC over
seeds; its test metrics are reported, so the choice never looks at test labels.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..runtime.errors import RunError
from ..runtime.files import save_figure, write_text


def load_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise RunError(f"no probe results at {path} (run `tlmic probe` first)")
    return json.loads(path.read_text())


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and sd over seeds per (layer, model, fraction, control), in depth order."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["depth"], r["layer"], r["model"], r["fraction"], r["control"])].append(r)
    out = []
    for (depth, layer, model, fraction, control), rs in sorted(groups.items()):
        a = {
            "depth": depth,
            "layer": layer,
            "model": model,
            "fraction": fraction,
            "control": control,
            "seeds": len(rs),
            "n_train": int(np.mean([r["n_train"] for r in rs])),
        }
        for m in (
            "val_auprc",
            "val_auroc",
            "auroc",
            "auprc",
            "balanced_accuracy",
            "macro_f1",
            "sensitivity",
            "specificity",
        ):
            v = np.array([r[m] for r in rs], dtype=float)
            a[m] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            a[f"{m}_sd"] = float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else 0.0
        for m in ("auroc", "auprc"):
            for end in ("lo", "hi"):
                v = np.array([r[f"{m}_{end}"] for r in rs], dtype=float)
                a[f"{m}_{end}"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        out.append(a)
    return out


def best_layers(agg: list[dict]) -> dict[tuple[str, float], dict]:
    """(model, fraction) -> the aggregated row with the highest mean validation AUPRC."""
    best: dict[tuple[str, float], dict] = {}
    for a in agg:
        if a["control"] != "none" or not np.isfinite(a["val_auprc"]):
            continue
        key = (a["model"], a["fraction"])
        if key not in best or a["val_auprc"] > best[key]["val_auprc"]:
            best[key] = a
    return best


def _fmt(a: dict, m: str) -> str:
    if not np.isfinite(a[m]):
        return "n/a"
    return f"{a[m]:.3f} ± {a[f'{m}_sd']:.3f} [{a[f'{m}_lo']:.3f}, {a[f'{m}_hi']:.3f}]"


def render_summary(doc: dict) -> str:
    agg = aggregate(doc["rows"])
    best = best_layers(agg)
    cfg = doc["config"]
    lines = [
        f"# Probe summary: {doc.get('backbone')} features, {doc['label_kind']} ({', '.join(doc['label_names'])})",
        "",
        f"Store: `{doc['store']}`"
        + (f" (pooling: {doc['pooling']})" if doc.get("pooling") else "")
        + (f" (split: {doc['split_origin']})" if doc.get("split_origin") else "")
        + f". Seeds: {cfg['seeds']}; bootstrap resamples: {cfg['bootstrap']}. "
        "Best layer = highest mean **validation** AUPRC; test metrics are mean ± sd over seeds "
        "[mean of the 95% bootstrap CI bounds].",
        "",
        "| model | fraction | n train | best layer | test AUROC | test AUPRC |",
        "| --- | --- | ---: | --- | --- | --- |",
    ]
    for (model, fraction), a in sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        lines.append(
            f"| {model} | {fraction:g} | {a['n_train']} | {a['layer']} | {_fmt(a, 'auroc')} | {_fmt(a, 'auprc')} |"
        )
    if any(r["control"] != "none" for r in doc["rows"]):
        lines += _control_section(doc["rows"], best, cfg)
    lines += ["", "## Per layer (test AUPRC, mean over seeds)", ""]
    models_fr = sorted({(a["model"], a["fraction"]) for a in agg if a["control"] == "none"})
    lines.append("| layer | " + " | ".join(f"{m} {f:g}" for m, f in models_fr) + " |")
    lines.append("| --- |" + " ---: |" * len(models_fr))
    table = {(a["layer"], a["model"], a["fraction"]): a for a in agg if a["control"] == "none"}
    for layer in dict.fromkeys(a["layer"] for a in agg):
        cells = []
        for m, f in models_fr:
            a = table.get((layer, m, f))
            mark = "**" if a is not None and best.get((m, f)) is a else ""
            cells.append(f"{mark}{a['auprc']:.3f}{mark}" if a is not None and np.isfinite(a["auprc"]) else "n/a")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    if doc.get("skipped"):
        lines += ["", "## Skipped cells", ""] + [f"- {s}" for s in doc["skipped"]]
    return "\n".join(lines) + "\n"


def _control_section(rows: list[dict], best: dict, cfg: dict) -> list[str]:
    """The shuffle control: per layer the real AUROC against its permutation null; per model x
    fraction a verdict on the null's mean and the picked layer's p-values, the second corrected for
    picking it among the layers (:mod:`~tlmic_feats.probes.permutation`)."""
    from .permutation import DEFAULT_PERMUTATIONS, format_p, null_by_layer, verdicts

    n = cfg.get("permutations", DEFAULT_PERMUTATIONS)
    picked = {key: a["layer"] for key, a in best.items()}
    judged = verdicts(rows, picked)
    level = next(iter(judged.values()))["level"] if judged else 0.95
    lines = [
        "",
        "## Leakage control: permutation null",
        "",
        "Each draw refits a probe on a permutation of the training and validation labels and scores it against "
        f"the true test labels: {n} draws per model x fraction, each applied to every layer. Null: mean and 95% "
        "range of the draws' test AUROC. p: (1 + draws >= the real probe of the same training subset) / "
        "(draws + 1), for that layer alone; p corrected: the same with each draw's best test AUROC over all "
        "layers (Westfall-Young max-statistic), the p-value of \"the picked layer beats chance\" that accounts "
        f"for picking it among {len({r['layer'] for r in rows})} layers. At its floor 1 / (draws + 1), no draw "
        "reached the real probe: p ≤ floor. With a strong signal the null is wide (a permutation agrees "
        "with the truth a little more or less than chance, and the probe follows it), so the leak verdict "
        "judges the null's mean (each draw's mean over the layers) by the draws' own spread: at chance unless "
        f"its one-sided {100 * level:.1f}% lower bound (Bonferroni over the {len(judged)} verdicts) lies above "
        "0.5, which means labels reach the fit some other way. A feature that itself encodes the label is not "
        "caught here (it is learned with a random sign from permuted labels).",
        "",
        "| model | fraction | null mean over layers (draws) | one-sided lower bound | verdict | "
        "picked layer (★): real test AUROC | p | p corrected over layers |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (model, fraction), v in judged.items():
        if v["at_chance"] is None:
            verdict = "undetermined (one draw)"
        elif v["at_chance"]:
            verdict = "at chance"
        else:
            verdict = "**NOT at chance: the null's mean is above 0.5; labels reach the fit (check for leakage)**"
        lines.append(
            f"| {model} | {fraction:g} | {v['mean']:.3f} ({v['draws']} over {v['layers']} layers) | "
            f"{v['lower']:.3f} | {verdict} | {v['layer']}: {v['real']:.3f} | "
            f"{format_p(v['p'], v['p_floor'], bare=True)} | "
            f"{format_p(v['p_corrected'], v['p_corrected_floor'], bare=True)} ({v['corrected_draws']} draws) |"
        )
    lines += [
        "",
        "| model | fraction | layer | real test AUROC | null draws | null mean [95% range] | p | p corrected |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for e in null_by_layer(rows, picked):
        star = " ★" if e["picked"] else ""
        lines.append(
            f"| {e['model']} | {e['fraction']:g} | {e['layer']}{star} | {e['real']:.3f} | {e['draws']} | "
            f"{e['mean']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}] | {format_p(e['p'], e['p_floor'], bare=True)} | "
            f"{format_p(e['p_corrected'], e['p_corrected_floor'], bare=True)} |"
        )
    return lines


def plot_layers(doc: dict, path: str | Path) -> Path:
    """AUROC and AUPRC against depth: a line per model x fraction, CI bands, best point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = [a for a in aggregate(doc["rows"]) if a["control"] == "none"]
    best = best_layers(agg)
    layers = list(dict.fromkeys(a["layer"] for a in sorted(agg, key=lambda a: a["depth"])))
    pos = {layer: i for i, layer in enumerate(layers)}
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 0.38 * len(layers) + 5), 4.2), sharex=True)
    keys = sorted({(a["model"], a["fraction"]) for a in agg})
    colors = plt.get_cmap("tab10")
    for ax, metric, name in zip(axes, ("auroc", "auprc"), ("AUROC", "AUPRC"), strict=True):
        for i, key in enumerate(keys):
            rs = sorted([a for a in agg if (a["model"], a["fraction"]) == key], key=lambda a: a["depth"])
            x = [pos[a["layer"]] for a in rs]
            style = "-" if key[0] == "logreg" else "--"
            c = colors(i % 10)
            ax.plot(
                x,
                [a[metric] for a in rs],
                style,
                color=c,
                marker="o",
                ms=3,
                lw=1.5,
                label=f"{key[0]}, {key[1]:g} of train",
            )
            ax.fill_between(x, [a[f"{metric}_lo"] for a in rs], [a[f"{metric}_hi"] for a in rs], color=c, alpha=0.12)
            b = best.get(key)
            if b is not None:
                ax.plot(pos[b["layer"]], b[metric], marker="*", ms=14, color=c, mec="black", mew=0.8, zorder=5)
        if metric == "auroc":
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(f"test {name} by cut point")
        ax.set_xlabel("cut point (shallow → deep)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=90 if len(layers) > 12 else 0, fontsize=8)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"{doc.get('backbone')} probes per layer (bands: 95% bootstrap CI; ★ best on validation)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=110)
    return path


def render_report(run_dir: str | Path) -> tuple[Path, Path]:
    """(Re)write ``summary.md`` and ``layers.png`` of a probe run from its ``results.json``."""
    run_dir = Path(run_dir)
    doc = load_results(run_dir)
    if not doc["rows"]:
        raise RunError(f"{run_dir}: no probe results to report (every cell was skipped)")
    summary = run_dir / "summary.md"
    write_text(summary, render_summary(doc))
    return summary, plot_layers(doc, run_dir / "layers.png")


def picked_layers(rows: list[dict]) -> dict[tuple[str, float], str]:
    """``{(model, fraction): layer}``: the summary's choice (highest mean validation AUPRC of the real
    probes, :func:`best_layers`)."""
    return {k: a["layer"] for k, a in best_layers(aggregate([r for r in rows if r["control"] == "none"])).items()}


def null_summary(rows: list[dict]) -> dict:
    """What ``results.json`` keeps of the null (``permutation_null``): ``{"verdicts": [one per model x
    fraction: model, fraction and :func:`~tlmic_feats.probes.permutation.verdicts`' fields], "layers":
    :func:`~tlmic_feats.probes.permutation.null_by_layer`}``, the layers picked by the summary's rule."""
    from .permutation import null_by_layer, verdicts

    picked = picked_layers(rows)
    judged = verdicts(rows, picked)
    return {
        "verdicts": [{"model": m, "fraction": f, **v} for (m, f), v in judged.items()],
        "layers": null_by_layer(rows, picked),
    }
