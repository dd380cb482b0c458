"""The report's statistics, per fraction: every arm's aggregates and intervals, the arm validation
picks, the verdicts over training runs (``verdicts.csv``) and the paired differences on the same
test images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ...metrics.paired import bootstrap_difference, delong_mean
from ...metrics.predictions import read_predictions
from ...metrics.scores import paired_bootstrap
from ...metrics.verdicts import (
    DEFAULT_ROPE,
    VERDICT_COLUMNS,
    arm_interval,
    compare_runs,
    holm,
    verdict_row,
)
from ...runtime.files import atomic_path
from ..arms import Arm

# What the summary scores: the arms, and ("head", model) for each probe model at the deepest cut point.
Scored = Arm | tuple[str, str]


def _describe(arm: Arm, stage: str, address: str) -> str:
    """The arm as the report and ``verdicts.csv`` name it (``address``: the row's cut point)."""
    if arm.kind == "probe":
        return f"probe: {arm.name} @ {address}"
    if arm.kind == "truncated":
        return f"truncated @ {arm.address}" + (" (stage 2)" if stage == "stage2" else "")
    if arm.kind in ("full", "scratch"):
        return "full finetuning" if arm.kind == "full" else "from scratch (full depth)"
    return {
        "hybrid": f"hybrid (pretrained to {address} + slim block)",
        "layerwise": "layer-wise finetuning",
    }.get(arm.name, f"{arm.name} (from scratch)")


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
    each probe's best layer against the head (the deepest cut point).

    ``rows`` name their arms (``results.csv``); the summary holds each as an
    :class:`~tlmic_feats.study.arms.Arm`."""
    out_doc = {}
    head_runs = _head_probe_rows(out)
    for fraction in sorted({r["fraction"] for r in rows}):
        arms: dict[Arm, list[dict]] = {}
        for r in rows:
            if r["fraction"] == fraction:
                arms.setdefault(Arm.parse(r["arm"]), []).append(r)
        # each probe model at the deepest cut point, scored beside the arms as ("head", model)
        heads = {
            ("head", m): rs for (m, f), rs in head_runs.items() if f == fraction and Arm("probe", name=m) in arms
        }
        y, scores = aligned_test_scores(out, {**arms, **heads}, label_kind)
        boot = paired_bootstrap(y, scores, label_kind, n_resamples=n_resamples, seed=0)
        table = [_arm_summary(arm, rs, boot[arm]) for arm, rs in arms.items()]
        for a in table:
            if a["seeds"] > 1:  # the interval over training runs and test images
                for m, ci in arm_interval(y, scores[a["arm"]], label_kind, n_resamples=n_resamples).items():
                    a[f"{m}_ci"] = ci
        table.sort(key=lambda a: a["arm"].sort_key())
        pick = max(table, key=lambda a: a["val_auprc"])
        truncated = [a for a in table if a["arm"].kind == "truncated"]
        paired = None
        full = Arm("full")
        if truncated and full in arms:
            best_t = best_truncated(truncated)
            paired = {"arm": best_t["arm"], "name": best_t["name"]}
            full_mean = next(a for a in table if a["arm"] == full)
            paired.update(_paired(y, scores, boot, label_kind, (best_t["arm"], best_t), (full, full_mean)))
        versus_head = []
        for head, runs in sorted(heads.items()):
            model = head[1]
            best = next(a for a in table if a["arm"] == Arm("probe", name=model))
            entry = {"model": model, "best": best["address"], "head": runs[0]["address"]}
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
    truncated = [a for a in table if a["arm"].kind == "truncated"]
    if not truncated:
        return []
    best = best_truncated(truncated)
    seeds_of = {arm: [r["seed"] for r in sorted(rs, key=_seed)] for arm, rs in arms.items()}
    found = []
    others = [a for a in table if a["arm"].kind != "truncated"]
    others.sort(key=lambda a: a["arm"].kind != "full")
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
    """The truncated arm (table rows, ``arm`` an :class:`~tlmic_feats.study.arms.Arm` or its name)
    with the best mean validation AUPRC; ties go to the deeper cut point
    (:func:`~tlmic_feats.study.arms.rank_by_validation`)."""
    from ..arms import rank_by_validation

    by_address = {Arm.parse(a["arm"]).address: a for a in truncated}
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


def aligned_test_scores(out: Path, runs_of: dict[Scored, list[dict]], label_kind: str) -> tuple[np.ndarray, dict]:
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


def _arm_summary(arm: Arm, rs: list[dict], boot: dict[str, np.ndarray]) -> dict:
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


def _paired(y, scores: dict, boot: dict, label_kind: str, a: tuple[Scored, dict], b: tuple[Scored, dict]) -> dict:
    """A minus B on the same test images: ``{"auroc": DeLong over the seed means, "auprc": paired
    bootstrap}``, each ``{"diff", "ci", "p"}``; AUPRC's difference is that of the table's means."""
    (arm_a, mean_a), (arm_b, mean_b) = a, b
    auroc = delong_mean(y, scores[arm_a], scores[arm_b], label_kind)
    auprc = bootstrap_difference(mean_a["auprc"] - mean_b["auprc"], boot[arm_a]["auprc"] - boot[arm_b]["auprc"])
    return {
        "auroc": {k: auroc[k] for k in ("diff", "ci", "p", "se")},
        "auprc": {k: auprc[k] for k in ("diff", "ci", "p", "p_floor")},
    }
