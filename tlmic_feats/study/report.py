"""The study report: ``results.csv``, ``report.md``, a self-contained ``report.html`` and figures.

Per fraction, one table of every arm (the probes at their best layer, the truncated finetunes of
both search stages, full finetuning, training from scratch, the baselines): test AUROC and AUPRC
as mean ± sd over seeds with a 95% bootstrap CI of the seed mean over test images, the validation
AUPRC that selection used, parameters, MACs and CPU latency per image. Then the winner on test and
the arm validation would pick; paired differences on the same test images (AUROC by DeLong's test,
AUPRC by a paired bootstrap, each with its 95% CI and p-value) of the best truncated arm (chosen on
validation) against full finetuning and of each probe's best layer against the head; the probe
curves with the finetuned cut points overlaid; and the compute the probe-guided search spent
against finetuning every block end and unit.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

import numpy as np

from ..metrics.paired import bootstrap_difference, delong_mean, format_p
from ..metrics.predictions import read_predictions
from ..metrics.scores import paired_bootstrap
from ..metrics.verdicts import (
    DEFAULT_ROPE,
    VERDICT_COLUMNS,
    arm_interval,
    compare_runs,
    format_verdict,
    holm,
    verdict_row,
)
from ..probes.report import aggregate, best_layers
from ..runtime.files import atomic_path, save_figure, write_text
from ..runtime.paths import human_bytes
from ..runtime.rundir import layer_label
from .config import ROW_COLUMNS

def collect_rows(out: Path, config, probe_dir: Path) -> list[dict]:
    """One row per finished finetuning run and per probe seed at its best layer; written to
    ``results.csv``."""
    from .arms import run_val_auprc

    state = json.loads((out / "study.json").read_text())
    rows = []
    for run_id, rec in sorted(state["runs"].items()):
        run_dir = out / "runs" / run_id
        if rec.get("status") != "done" or not (run_dir / "metrics.json").is_file():
            continue
        m = json.loads((run_dir / "metrics.json").read_text())
        comp_file = run_dir / "compactness.json"
        comp = json.loads(comp_file.read_text())[0] if comp_file.is_file() else {}
        rows.append(
            {
                "stage": rec["stage"],
                "arm": rec["arm"],
                "address": m["address"],
                "fraction": float(rec["fraction"]),
                "seed": int(rec["seed"]),
                "n_train": m["n_train"],
                "val_auprc": run_val_auprc(run_dir),
                **{k: m[k] for k in ("auroc", "auroc_lo", "auroc_hi", "auprc", "auprc_lo", "auprc_hi")},
                "params": comp.get("params"),
                "macs": comp.get("macs"),
                "latency_ms": comp.get("latency_ms"),
                "steps_run": m["steps_run"],
                "best_step": m["best_step"],
                "pool": m["pool"],
                "train_seconds": m.get("train_seconds"),
                "wall_seconds": rec.get("seconds"),
                "predictions": str((run_dir / "predictions.csv").relative_to(out)),
                "precision": m.get("precision", ""),
            }
        )
    probe_rows = json.loads((Path(probe_dir) / "results.json").read_text())["rows"]
    for (model, fraction), best in sorted(best_layers(aggregate(probe_rows)).items()):
        for r in probe_rows:
            if (
                r["model"] == model
                and r["fraction"] == fraction
                and r["control"] == "none"
                and r["layer"] == best["layer"]
            ):
                rows.append(
                    {
                        "stage": "probe",
                        "arm": f"probe-{model}",
                        "address": r["layer"],
                        "fraction": float(fraction),
                        "seed": int(r["seed"]),
                        "n_train": r["n_train"],
                        "val_auprc": r["val_auprc"],
                        **{k: r[k] for k in ("auroc", "auroc_lo", "auroc_hi", "auprc", "auprc_lo", "auprc_hi")},
                        "params": None,
                        "macs": None,
                        "latency_ms": None,
                        "steps_run": None,
                        "best_step": None,
                        "pool": config.pool,
                        "train_seconds": r["fit_seconds"],
                        "wall_seconds": None,
                        "predictions": str((Path(probe_dir) / r["predictions"]).relative_to(out)),
                        "precision": "fp64",  # scikit-learn / LightGBM on the stored features
                    }
                )
    write_results_csv(out / "results.csv", rows)
    return rows


def write_results_csv(path: Path, rows: list[dict]) -> None:
    """The study's ``results.csv``, atomically; cut points written as ``L3.10``
    (:func:`~tlmic_feats.runtime.rundir.layer_label`) so that ``pandas.read_csv`` keeps them apart."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ROW_COLUMNS)
        w.writeheader()
        w.writerows({**r, "address": layer_label(r["address"])} for r in rows)


_ARM_ORDER = {"probe": 0, "stage1": 1, "stage2": 2, "baseline": 4}


def _arm_sort(stage: str, arm: str) -> tuple:
    from ..backbones.cutpoints import address_key

    if arm in ("full", "scratch"):
        return (3, 0 if arm == "full" else 1, (0, 0))
    if arm.startswith("t"):
        return (1, 0, address_key(arm[1:]))
    return (_ARM_ORDER.get(stage, 5), 0, (0, 0), arm)


def _describe(arm: str, stage: str, address: str) -> str:
    if arm.startswith("probe-"):
        return f"probe: {arm[6:]} @ {address}"
    if arm.startswith("t"):
        return f"truncated @ {arm[1:]}" + (" (stage 2)" if stage == "stage2" else "")
    return {
        "full": "full finetuning",
        "scratch": "from scratch (full depth)",
        "hybrid": f"hybrid (pretrained to {address} + slim block)",
        "layerwise": "layer-wise finetuning",
    }.get(arm, f"{arm} (from scratch)")


def _seed(row: dict) -> int:
    return row["seed"]


def summarize(
    out: Path, rows: list[dict], label_kind: str, n_resamples: int = 1000, rope: float = DEFAULT_ROPE
) -> dict:
    """Per fraction: per arm aggregates with their intervals (over training runs and test images when
    there are several seeds), the arm validation picks, the verdicts (arm vs arm over training runs,
    :mod:`~tlmic_feats.metrics.verdicts`: the primary contrast, best-on-validation truncated arm vs
    full finetuning, Holm-corrected across fractions; the best truncated arm against every other arm,
    exploratory), and paired differences of these trained models on these test images (AUROC by
    DeLong's test, AUPRC by the paired bootstrap): the best truncated arm against full finetuning, and
    each probe's best layer against the head (the deepest cut point)."""
    out_doc = {}
    head_runs = _head_probe_rows(out)
    for fraction in sorted({r["fraction"] for r in rows}):
        arms: dict[str, list[dict]] = {}
        for r in rows:
            if r["fraction"] == fraction:
                arms.setdefault(r["arm"], []).append(r)
        heads = {f"head-{m}": rs for (m, f), rs in head_runs.items() if f == fraction and f"probe-{m}" in arms}
        y, scores = _aligned_test_scores(out, {**arms, **heads}, label_kind)
        boot = paired_bootstrap(y, scores, label_kind, n_resamples=n_resamples, seed=0)
        table = [_arm_summary(arm, rs, boot[arm]) for arm, rs in arms.items()]
        for a in table:
            if a["seeds"] > 1:  # the interval over training runs and test images
                for m, ci in arm_interval(y, scores[a["arm"]], label_kind, n_resamples=n_resamples).items():
                    a[f"{m}_ci"] = ci
        table.sort(key=lambda a: _arm_sort(a["stage"], a["arm"]))
        pick = max(table, key=lambda a: a["val_auprc"])
        truncated = [a for a in table if a["arm"].startswith("t")]
        paired = None
        if truncated and "full" in arms:
            best_t = best_truncated(truncated)
            full = next(a for a in table if a["arm"] == "full")
            paired = {"arm": best_t["arm"], "name": best_t["name"]}
            paired.update(_paired(y, scores, boot, label_kind, (best_t["arm"], best_t), ("full", full)))
        versus_head = []
        for head, runs in sorted(heads.items()):
            best = next(a for a in table if a["arm"] == f"probe-{head[5:]}")
            entry = {"model": head[5:], "best": best["address"], "head": runs[0]["address"]}
            if entry["best"] != entry["head"]:
                head_mean = {m: float(np.nanmean([r[m] for r in runs])) for m in ("auroc", "auprc")}
                entry.update(_paired(y, scores, boot, label_kind, (best["arm"], best), (head, head_mean)))
            versus_head.append(entry)
        out_doc[fraction] = {
            "table": table,
            "pick": pick,
            "verdicts": _verdicts(y, scores, arms, table, label_kind, n_resamples, rope),
            "paired": paired,
            "versus_head": versus_head,
        }
    return out_doc


def _verdicts(y, scores: dict, arms: dict, table: list[dict], label_kind: str, n_resamples: int, rope: float):
    """The best-on-validation truncated arm against full finetuning (primary) and against every other
    arm (exploratory), paired by seed on the seeds both ran: ``[Verdict]`` per metric."""
    truncated = [a for a in table if a["arm"].startswith("t")]
    if not truncated:
        return []
    best = best_truncated(truncated)
    seeds_of = {arm: [r["seed"] for r in sorted(rs, key=_seed)] for arm, rs in arms.items()}
    found = []
    others = [a for a in table if not a["arm"].startswith("t")]
    others.sort(key=lambda a: a["arm"] != "full")
    for other in others:
        common = sorted(set(seeds_of[best["arm"]]) & set(seeds_of[other["arm"]]))
        if not common:
            continue
        pick = {arm: [scores[arm][seeds_of[arm].index(s)] for s in common] for arm in (best["arm"], other["arm"])}
        found += compare_runs(
            y,
            pick[best["arm"]],
            pick[other["arm"]],
            label_kind,
            names=(best["name"], other["name"]),
            seeds=common,
            rope=rope,
            n_resamples=n_resamples,
        ).values()
    return found


def best_truncated(truncated: list[dict]) -> dict:
    """The truncated arm with the best mean validation AUPRC; ties go to the deeper cut point
    (:func:`~tlmic_feats.study.arms.rank_by_validation`)."""
    from .arms import rank_by_validation

    by_address = {a["arm"][1:]: a for a in truncated}
    return by_address[rank_by_validation({k: a["val_auprc"] for k, a in by_address.items()})[0][0]]


def primary_verdicts(summary: dict) -> dict:
    """Holm's correction over the fractions of the primary contrast (best truncated arm vs full
    finetuning), per metric, applied in place; returns the summary."""
    for metric in ("auroc", "auprc"):
        primary = [
            (f, i)
            for f, doc in summary.items()
            for i, v in enumerate(doc["verdicts"])
            if v.metric == metric and v.b == "full finetuning"
        ]
        for (f, i), v in zip(primary, holm([summary[f]["verdicts"][i] for f, i in primary])):
            summary[f]["verdicts"][i] = v
    return summary


def write_verdicts_csv(path: Path, summary: dict, precision: str) -> None:
    """``verdicts.csv``: one row per contrast, fraction and metric (:data:`VERDICT_COLUMNS`)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=VERDICT_COLUMNS)
        w.writeheader()
        for fraction, doc in summary.items():
            for v in doc["verdicts"]:
                w.writerow(verdict_row(v, fraction=f"{fraction:g}", precision=precision))


def _percentiles(v: np.ndarray) -> tuple[float, float]:
    return (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if len(v) else (np.nan, np.nan)


def _head_probe_rows(out: Path) -> dict[tuple[str, float], list[dict]]:
    """(model, fraction) -> the study's probe rows at the deepest probed cut point (every seed)."""
    path = out / "probes" / "results.json"
    if not path.is_file():
        return {}
    probe_rows = [r for r in json.loads(path.read_text())["rows"] if r["control"] == "none"]
    if not probe_rows:
        return {}
    deepest = max(probe_rows, key=lambda r: r["depth"])["layer"]
    heads: dict[tuple[str, float], list[dict]] = {}
    for r in sorted(probe_rows, key=lambda r: r["seed"]):
        if r["layer"] == deepest:
            row = {**r, "address": deepest, "predictions": str((out / "probes" / r["predictions"]).relative_to(out))}
            heads.setdefault((r["model"], float(r["fraction"])), []).append(row)
    return heads


def _aligned_test_scores(out: Path, runs_of: dict[str, list[dict]], label_kind: str) -> tuple[np.ndarray, dict]:
    """Test labels and ``{arm: [scores per seed]}`` on the images every arm scored, in one order.
    Pairing needs the same test images in every arm: probes leave out images the extraction skipped
    as unreadable, finetuning does not."""
    tests = {
        arm: [read_predictions(out / r["predictions"], label_kind)["test"] for r in sorted(rs, key=_seed)]
        for arm, rs in runs_of.items()
    }
    common = sorted(set.intersection(*(set(ids) for runs in tests.values() for ids, _, _ in runs)))
    scores, y = {}, None
    for arm, runs in tests.items():
        scores[arm] = []
        for ids, yy, sc in runs:
            index = {i: k for k, i in enumerate(ids)}
            take = np.array([index[i] for i in common])
            scores[arm].append(sc[take])
            y = yy[take]
    return y, scores


def _arm_summary(arm: str, rs: list[dict], boot: dict[str, np.ndarray]) -> dict:
    """One arm's row of the table: means and sd over seeds, bootstrap CIs of the seed mean, costs."""
    a = {"arm": arm, "stage": rs[0]["stage"], "address": rs[0]["address"], "seeds": len(rs)}
    a["name"] = _describe(arm, a["stage"], a["address"])
    for m in ("auroc", "auprc", "val_auprc"):
        v = np.array([r[m] for r in rs], dtype=float)
        a[m] = float(np.nanmean(v))
        a[f"{m}_sd"] = float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0
    for m in ("auroc", "auprc"):
        b = boot[m]
        a[f"{m}_ci"] = _percentiles(b[np.isfinite(b)])
    for k in ("params", "macs", "latency_ms", "n_train"):
        a[k] = next((r[k] for r in rs if r[k] is not None), None)
    for k in ("steps_run", "best_step", "train_seconds"):
        v = [r[k] for r in rs if r[k] is not None and r["stage"] != "probe"]
        a[k] = float(np.mean(v)) if v else None
    return a


def _paired(y, scores: dict, boot: dict, label_kind: str, a: tuple[str, dict], b: tuple[str, dict]) -> dict:
    """A minus B on the same test images: ``{"auroc": DeLong over the seed means, "auprc": paired
    bootstrap}``, each ``{"diff", "ci", "p"}``; AUPRC's difference is that of the table's means."""
    (arm_a, mean_a), (arm_b, mean_b) = a, b
    auroc = delong_mean(y, scores[arm_a], scores[arm_b], label_kind)
    auprc = bootstrap_difference(mean_a["auprc"] - mean_b["auprc"], boot[arm_a]["auprc"] - boot[arm_b]["auprc"])
    return {
        "auroc": {k: auroc[k] for k in ("diff", "ci", "p", "se")},
        "auprc": {k: auprc[k] for k in ("diff", "ci", "p", "p_floor")},
    }


def compute_summary(config, backbone, calibration: dict, rows: list[dict], state: dict, manifest, out: Path) -> dict:
    """What the probe-guided search spent against exhaustive finetuning of every cut point, and the
    disk the study wrote against the plan's estimate."""
    from ..finetune.budget import StepBudget
    from .plan import distinct_truncations, estimate_disk, estimate_seconds

    n_val, n_test = int((manifest.splits == "val").sum()), int((manifest.splits == "test").sum())
    budgets = {float(f): StepBudget(**c["budget"]) for f, c in state.get("choices", {}).items() if "budget" in c}
    runs = [r for r in rows if r["stage"] in ("stage1", "stage2") and r["arm"].startswith("t")]
    ft_rows = [r for r in rows if r["stage"] != "probe"]
    fractions = sorted({r["fraction"] for r in ft_rows if r["fraction"] in budgets})

    def est(arm: str, f: float) -> float:
        return estimate_seconds(calibration, arm, budgets[f], n_val, n_test) if f in budgets else float("nan")

    search_est = sum(est(r["arm"], r["fraction"]) for r in runs)
    search_measured = sum(float(r["wall_seconds"] or 0) for r in runs)
    exhaustive_runs = [
        (f, arm) for f in fractions for arm in distinct_truncations(backbone) for _ in config.seed_list
    ]
    exhaustive_est = sum(est(arm, f) for f, arm in exhaustive_runs)
    compute = state.get("compute", {})
    disk_est = estimate_disk(config, backbone, manifest, calibration, [r["arm"] for r in ft_rows], budgets)
    return {
        "search_runs": len(runs),
        "search_measured": search_measured,
        "search_estimate": search_est,
        "exhaustive_runs": len(exhaustive_runs),
        "exhaustive_estimate": exhaustive_est,
        "extract_seconds": float(compute.get("extract_seconds", 0.0)),
        "probe_seconds": float(compute.get("probe_seconds", 0.0)),
        "other_runs": len(ft_rows) - len(runs),
        "other_measured": sum(float(r["wall_seconds"] or 0) for r in ft_rows if r not in runs),
        "disk_estimate": disk_est,
        "disk_measured": measured_disk(out, state, manifest, backbone),
    }


def measured_disk(out: Path, state: dict, manifest, backbone) -> dict:
    """Bytes on disk now, in the parts :func:`~tlmic_feats.study.estimate_disk` estimates."""
    from ..features.pixels import pixel_cache_path
    from ..runtime.paths import cache_root, disk_usage

    pre = backbone.preprocess
    parts = {
        "feature store": disk_usage(state["store"]) if state.get("store") else 0,
        "pixel cache": disk_usage(
            pixel_cache_path(cache_root() / "pixels", manifest.fingerprint(), pre.resize_size, pre.interpolation)
        ),
        "probes": disk_usage(out / "probes"),
        "finetuning runs": disk_usage(out / "runs"),
    }
    parts["total"] = sum(parts.values())
    return parts


def training_precision(rows: list[dict]) -> str:
    """The precision(s) the study's finetuning runs trained in, e.g. ``fp32`` or ``bf16+fp32``."""
    found = sorted({r.get("precision") or "" for r in rows if r["stage"] != "probe"} - {""})
    return "+".join(found) or "n/a"


def _ci(a: dict, m: str) -> str:
    lo, hi = a[f"{m}_ci"]
    sd = f" ± {a[f'{m}_sd']:.3f}" if a["seeds"] > 1 else ""  # one seed has no spread to show
    return f"{a[m]:.3f}{sd} [{lo:.3f}, {hi:.3f}]"


def _n(v, scale: float, unit: str, digits: int = 2) -> str:
    return "" if v is None else f"{v / scale:.{digits}f} {unit}".strip()


def render_study_report(out: Path, config, backbone, calibration: dict, rows: list[dict], state: dict) -> Path:
    """``report.md`` and ``report.html`` (figures embedded) from the study's rows and state."""
    from ..data.readers import load_manifest

    manifest = load_manifest(config.data)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    lines = _header(config, backbone, manifest)
    small = state.get("small_samples") or []
    if small:
        lines += ["**Small samples** (the numbers below rest on few images):", "", *[f"- {w}" for w in small], ""]
    small_test = next((w for w in small if w.startswith("small sample: test ")), "")
    if not rows:
        lines.append("No finished runs yet.")
    summary = summarize(out, rows, manifest.label_kind, n_resamples=config.bootstrap, rope=config.rope) if rows else {}
    primary_verdicts(summary)
    precision = training_precision(rows)
    write_verdicts_csv(out / "verdicts.csv", summary, precision)
    if rows:
        lines += [f"Finetuning precision: {precision} (per run in results.csv; see --precision).", ""]
    for fraction, doc in summary.items():
        lines += _fraction_section(doc, state.get("choices", {}).get(f"{fraction:g}", {}), fraction, small_test)
        plot = _plot_fraction(out, rows, fraction, figures / f"probe-curve-f{fraction:g}.png", config)
        lines += ["", f"![probe curve and finetuned cut points at {fraction:g}]({plot.relative_to(out)})", ""]
    if rows:
        lines += _compute_section(compute_summary(config, backbone, calibration, rows, state, manifest, out))
    if state.get("not_run"):
        lines += ["## Not run", "", *[f"- {x}" for x in state["not_run"]], ""]
    text = "\n".join(lines) + "\n"
    path = out / "report.md"
    write_text(path, text)
    write_text(out / "report.html", markdown_to_html(text, out))
    return path


_LPFT_SENTENCE = {
    "truncated": "Truncated arms start their head from the logistic-regression probe of their cut point, "
    "fitted on the same training subset (LP-FT); the other arms from a random head. ",
    "all": "Every pretrained arm starts its head from the logistic-regression probe of its cut point, "
    "fitted on the same training subset (LP-FT). ",
    "none": "Every head starts random (no LP-FT). ",
}


def _token_pooling(pool: str, backbone) -> str:
    """For a transformer: over which tokens the pooling ran (" (mean over the patch tokens, ...)")."""
    from ..backbones.pooling import describe_pooling

    cut = backbone.cut_points[-1]
    return f" ({describe_pooling(pool, cut)})" if cut.layout == "tokens" else ""


def _header(config, backbone, manifest) -> list[str]:
    """The title and what every arm shared: data, backbone, pooling, budget rule, LP-FT, metrics."""
    n = {s: int((manifest.splits == s).sum()) for s in ("train", "val", "test")}
    metrics = (
        "Test metrics: mean ± sd over seeds [95% CI of the expected value over training runs and test images: "
        "between-seed variance plus the test-image variance the seeds share, t quantile; probes and single "
        "seeds: over test images only]. "
        if len(config.seed_list) > 1
        else "Test metrics: one seed per arm [95% bootstrap CI over test images]. "
    )
    return [
        f"# tlmic study: {config.backbone} on {Path(config.data.path).name}",
        "",
        f"{len(manifest)} images ({n['train']} train, {n['val']} val, {n['test']} test), {manifest.label_kind} "
        f"labels ({', '.join(manifest.label_names)}); backbone {config.backbone} ({config.weights} weights) "
        f"at {backbone.preprocess.input_size} px; {len(config.seed_list)} seed(s) per arm "
        f"({', '.join(map(str, config.seed_list))}). Pooling: {config.pool}"
        f"{_token_pooling(config.pool, backbone)} for the "
        "probes' features and for every finetuned network's head. Finetuning: the same number of optimizer steps "
        f"for every arm of a fraction (below), early stop on validation AUPRC after {config.training.patience} evaluations "
        "without improvement, the best evaluation's weights kept. "
        + _LPFT_SENTENCE[config.lpft]
        + metrics
        + "Every choice (layers, cut points, steps kept, thresholds) was made on validation data.",
        "",
    ]


def _fraction_section(doc: dict, c: dict, fraction: float, small_test: str = "") -> list[str]:
    """One fraction: the table of every arm, its budget, the winner, truncated vs full, the search
    (with the ties on validation the tie rule broke); ``small_test``: the warning that the test set
    is small, repeated under the table whose intervals it concerns."""
    lines = [
        f"## {fraction:g} of the training set ({doc['table'][0]['n_train']} images)",
        "",
        "| arm | test AUROC | test AUPRC | val AUPRC | steps (best), train s | params | MACs | CPU ms/img |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for a in doc["table"]:
        steps = (
            "" if a["steps_run"] is None else f"{a['steps_run']:.0f} ({a['best_step']:.0f}), {a['train_seconds']:.0f}"
        )
        lines.append(
            f"| {a['name']} | {_ci(a, 'auroc')} | {_ci(a, 'auprc')} | {a['val_auprc']:.3f} | {steps} | "
            f"{_n(a['params'], 1e6, 'M')} | {_n(a['macs'], 1e9, 'G')} | {_n(a['latency_ms'], 1, '', 1)} |"
        )
    if c.get("budget"):
        from ..finetune.budget import StepBudget

        lines += [
            "",
            f"Budget: {StepBudget(**c['budget']).describe()}; steps (best), train s: steps run, the step "
            "kept and seconds of training, mean over seeds (a run stops early when its patience runs out).",
        ]
    if small_test:
        lines += ["", f"Small sample, for these intervals: {small_test.removeprefix('small sample: ')}."]
    p = doc["pick"]
    lines += [
        "",
        f"**Chosen on validation: {p['name']}** (val AUPRC {p['val_auprc']:.3f}); its test AUROC {_ci(p, 'auroc')}, "
        f"AUPRC {_ci(p, 'auprc')}.",
    ]
    verdicts = doc.get("verdicts") or []
    if verdicts:
        lines += ["", "Verdicts over training runs (seeds) and test images, A minus B:", ""]
        lines += [f"- {'**primary**' if v.primary else 'exploratory'}: {format_verdict(v)}" for v in verdicts]
        lines.append("")
    if doc["paired"]:
        d = doc["paired"]
        lines.append(
            f"These trained models on these test images (training variance not included): {d['name']}, the "
            f"truncated arm with the best validation AUPRC, minus full finetuning: {_difference(d)}."
        )
    heads = doc.get("versus_head") or []
    if heads:
        parts = [
            f"{h['model']} @ {h['best']} minus @ {h['head']}: {_difference(h)}"
            if "auroc" in h
            else f"{h['model']}: the best layer is the head ({h['head']})"
            for h in heads
        ]
        lines.append(f"Best probe layer vs the head (the deepest cut point), same test images: {'; '.join(parts)}.")
    if c:
        ranking = ", ".join(f"{a} {v:.3f}" for a, v in c.get("stage1_ranking", []))
        lines.append(f"Search: block ends by probe val AUPRC: {ranking}; finetuned: {', '.join(c['blocks'])}.")
        if c.get("best_block"):
            units = ", ".join(f"{a} {v:.3f}" for a, v in c.get("stage2_ranking", [])) or "none"
            lines.append(
                f"Best finetuned block {c['best_block']} (val AUPRC "
                + ", ".join(f"{a}: {v:.3f}" for a, v in c["stage1_val_auprc"].items())
                + f"); its units by probe val AUPRC: {units}; finetuned: {', '.join(c['units']) or 'none'}."
            )
        if c.get("ties"):
            from .arms import describe_tie

            lines.append("Ties on validation: " + "; ".join(describe_tie(t) for t in c["ties"]) + ".")
    return lines


def _difference(d: dict) -> str:
    """``AUROC +0.041 [+0.011, +0.076], p = 0.006 (DeLong); AUPRC ... (paired bootstrap)``."""
    out = []
    for m, how in (("auroc", "DeLong"), ("auprc", "paired bootstrap")):
        e = d[m]
        out.append(f"{m.upper()} {e['diff']:+.3f} [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}], {format_p(e)} ({how})")
    return "; ".join(out)


def _compute_section(comp: dict) -> list[str]:
    """What the search spent against an exhaustive one, and the disk against the plan's estimate."""
    disk_est, disk_now = comp["disk_estimate"], comp["disk_measured"]
    saving = comp["exhaustive_estimate"] / comp["search_estimate"] if comp["search_estimate"] else float("nan")
    return [
        "## Compute",
        "",
        "| what | runs | measured s | estimated s (cost model) |",
        "| --- | ---: | ---: | ---: |",
        f"| extraction (every cut point, once) | | {comp['extract_seconds']:.0f} | |",
        f"| probes (every cut point, both models) | | {comp['probe_seconds']:.0f} | |",
        f"| probe-guided search: truncated finetunes (stages 1 and 2) | {comp['search_runs']} | "
        f"{comp['search_measured']:.0f} | {comp['search_estimate']:.0f} |",
        f"| exhaustive search: every block end and unit | {comp['exhaustive_runs']} | | "
        f"{comp['exhaustive_estimate']:.0f} |",
        f"| other arms (full, scratch, baselines) | {comp['other_runs']} | {comp['other_measured']:.0f} | |",
        "",
        "| disk | measured | estimated (plan, upper bound) |",
        "| --- | ---: | ---: |",
        *[f"| {k} | {human_bytes(disk_now[k])} | {human_bytes(disk_est[k])} |" for k in disk_now],
        "",
        f"The probe-guided search finetuned {comp['search_runs']} truncated networks where an exhaustive search "
        f"would finetune {comp['exhaustive_runs']}: {saving:.1f}x less finetuning compute by the cost model "
        "(seconds of an optimizer step, an evaluation and a run's fixed costs measured on this machine for each "
        f"network, `calibration.json`; no early stop assumed), for {comp['extract_seconds'] + comp['probe_seconds']:.0f} s of extraction and probing.",
        "",
    ]


def _plot_fraction(out: Path, rows: list[dict], fraction: float, path: Path, config) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..backbones.cutpoints import address_key

    probe_rows = json.loads((out / "probes" / "results.json").read_text())["rows"]
    agg = [a for a in aggregate(probe_rows) if a["fraction"] == fraction and a["control"] == "none"]
    layers = sorted({a["layer"] for a in agg}, key=address_key)
    x = {a: i for i, a in enumerate(layers)}
    fig, ax = plt.subplots(figsize=(max(7, len(layers) * 0.3), 3.8))
    for model, style in (("logreg", "o-"), ("lightgbm", "s-")):
        pts = sorted((x[a["layer"]], a["auprc"]) for a in agg if a["model"] == model)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, ms=3, alpha=0.8, label=f"probe: {model}")
    ft = [r for r in rows if r["fraction"] == fraction and r["arm"].startswith("t")]
    for arm in sorted({r["arm"] for r in ft}, key=lambda a: address_key(a[1:])):
        v = [r["auprc"] for r in ft if r["arm"] == arm]
        if arm[1:] in x:
            ax.plot(x[arm[1:]], np.mean(v), "r*", ms=12)
            ax.annotate(arm[1:], (x[arm[1:]], np.mean(v)), textcoords="offset points", xytext=(4, 4), fontsize=7)
    full = [r["auprc"] for r in rows if r["fraction"] == fraction and r["arm"] == "full"]
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


def markdown_to_html(text: str, base: Path) -> str:
    """The report's markdown (headings, paragraphs, tables, list items, images) as one HTML page with
    its images embedded, so that it can be mailed or archived as one file."""
    import re

    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    body, table = [], []

    def flush_table() -> None:
        if not table:
            return
        head, *rest = [[c.strip() for c in r.strip().strip("|").split("|")] for r in table if not set(r) <= set("|-: ")]
        body.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>")
        body.extend("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rest)
        body.append("</table>")
        table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("## "):
            body.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.startswith("- "):
            body.append(f"<li>{inline(line[2:])}</li>")
        elif m := re.fullmatch(r"!\[(.*)\]\((.+)\)", line.strip()):
            data = base64.b64encode((base / m.group(2)).read_bytes()).decode()
            body.append(f'<p><img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}"></p>')
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    flush_table()
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;padding:3px 6px}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
