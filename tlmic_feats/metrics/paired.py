"""Paired comparisons of two models scored on the same test images: AUROC by DeLong's test, AUPRC by
a paired bootstrap, each as the difference (A minus B), its 95% CI and a two-sided p-value.

* :func:`delong` -- DeLong, DeLong & Clarke-Pearson (1988) with the O(n log n) algorithm of Sun & Xu
  (2014): the placement values of every image come from mid-ranks (one sort per score vector),
  their covariance gives the variance of the AUROC difference. Multi-label and multi-class (one
  vs rest) data: the difference of the macro AUROC over the labels both models define, its
  variance from each image's placement values summed over labels (one label reduces to DeLong
  exactly), so labels scored on the same images are not treated as independent.
  :func:`delong_mean` compares the seed means of two arms (DeLong's contrast of correlated AUROCs).
* :func:`compare_scores` -- DeLong for AUROC plus :func:`~tlmic_feats.metrics.scores.paired_bootstrap`
  for AUPRC (the same stratified test resamples for both models; p-value from the resampled
  differences' sign, at the resolution of the resample count).
* :func:`compare_prediction_files` -- the same from two predictions files (``tlmic compare``),
  aligned by image id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.errors import DataFormatError
from .predictions import predictions_kind, read_predictions
from .scores import paired_bootstrap


def _as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(len(a), -1)


def _midrank(x: np.ndarray) -> np.ndarray:
    """Mid-ranks (1-based, ties averaged) along the last axis: Sun & Xu's one-sort ranking."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1, method="average")


def _placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(auc (K,), v10 (K, m), v01 (K, n))`` for K score rows ``s`` on binary ``y``: the placement of
    each positive among the negatives and of each negative among the positives."""
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    tz = _midrank(s)
    tx, ty = _midrank(s[:, pos]), _midrank(s[:, neg])
    auc = (tz[:, pos].sum(1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, pos] - tx) / n
    v01 = 1.0 - (tz[:, neg] - ty) / m
    return auc, v10, v01


def _label_columns(y: np.ndarray, label_kind: str) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(rows, binary labels of those rows, score column) of every label (one vs rest per class for
    multi-class) that holds both classes."""
    y2 = _as_2d(y)
    out = []
    if label_kind == "multiclass":
        yc = y2[:, 0].astype(int)
        rows = np.arange(len(yc))
        for c in np.unique(yc):
            if 0 < (yc == c).sum() < len(yc):
                out.append((rows, (yc == c).astype(float), int(c)))
        return out
    for j in range(y2.shape[1]):
        rows = np.flatnonzero(~np.isnan(y2[:, j]))
        yj = y2[rows, j]
        if len(np.unique(yj)) == 2:
            out.append((rows, yj, j))
    return out


def _score_matrix(scores: np.ndarray, n: int, label_kind: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(n, -1)
    return s[:, -1:] if label_kind == "binary" else s


def delong(y: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, label_kind: str = "binary") -> dict:
    """DeLong's test of AUROC(A) - AUROC(B) on the same images: ``{"a", "b", "diff", "se", "ci",
    "p", "n_labels"}`` (``ci`` a 95% normal interval, ``p`` two-sided; with ``se == 0``, ``p`` is 1
    when the difference is 0 and NaN otherwise: a difference without spread has no normal
    p-value). Scores and labels as in :func:`~tlmic_feats.metrics.scores.evaluate`."""
    return delong_mean(y, [scores_a], [scores_b], label_kind)


def delong_mean(y: np.ndarray, runs_a: list, runs_b: list, label_kind: str = "binary") -> dict:
    """DeLong's test of the mean AUROC over the runs (seeds) of A minus that of B, all scored on the
    same images: DeLong's contrast of correlated AUROCs with weights ``1/len(runs_a)`` and
    ``-1/len(runs_b)``. One run each is :func:`delong`."""
    from scipy.stats import norm

    y2 = _as_2d(y)
    runs = [_score_matrix(s, len(y2), label_kind) for s in (*runs_a, *runs_b)]
    weights = np.array([1 / len(runs_a)] * len(runs_a) + [-1 / len(runs_b)] * len(runs_b))
    columns = [
        (rows, yj, col)
        for rows, yj, col in _label_columns(y2, label_kind)
        if all(np.isfinite(s[rows, col]).all() for s in runs)
    ]
    if not columns:
        nan = float("nan")
        return {"a": nan, "b": nan, "diff": nan, "se": nan, "ci": (nan, nan), "p": nan, "n_labels": 0}
    k = len(columns)
    influence = np.zeros(len(y2))  # each image's share of the macro difference's variance
    aucs = np.zeros((k, len(runs)))
    for i, (rows, yj, col) in enumerate(columns):
        aucs[i], v10, v01 = _placements(yj, np.stack([s[rows, col] for s in runs]))
        d10, d01 = weights @ v10, weights @ v01
        m, n = len(d10), len(d01)
        # DeLong: var = var(d10) / m + var(d01) / n, written per image so that labels sharing images add up
        if m > 1:
            influence[rows[yj == 1]] += (d10 - d10.mean()) / np.sqrt(m * (m - 1)) / k
        if n > 1:
            influence[rows[yj == 0]] += (d01 - d01.mean()) / np.sqrt(n * (n - 1)) / k
    macro = aucs.mean(0)
    a, b = float(macro[: len(runs_a)].mean()), float(macro[len(runs_a) :].mean())
    diff = a - b
    se = float(np.sqrt((influence**2).sum()))
    # se == 0: identical rankings (no difference: p = 1), or a difference without any spread, which
    # the normal approximation cannot judge (p undefined: NaN, not 0; :func:`format_p` says why)
    p = float(2 * norm.sf(abs(diff) / se)) if se > 0 else 1.0 if diff == 0 else float("nan")
    z = norm.ppf(0.975)
    ci = (float(diff - z * se), float(diff + z * se))
    return {"a": a, "b": b, "diff": diff, "se": se, "ci": ci, "p": p, "n_labels": k}


def bootstrap_difference(diff: float, resampled: np.ndarray) -> dict:
    """``{"diff", "ci", "p", "p_floor", "n_resamples"}`` of a paired difference from its resampled
    values: the 95% percentile interval and a two-sided p-value from how often a resample falls on
    either side of 0 (``2 * min`` of the two shares, each counted as ``(1 + k) / (B + 1)``).
    ``p_floor`` is the smallest p the ``B`` resamples can give, ``2 / (B + 1)``: a ``p`` equal to it
    means no resample crossed 0, and says "p < p_floor" (:func:`format_p`), not "p = p_floor"."""
    d = np.asarray(resampled, dtype=float)
    d = d[np.isfinite(d)]
    if not len(d):
        nan = float("nan")
        return {"diff": diff, "ci": (nan, nan), "p": nan, "p_floor": nan, "n_resamples": 0}
    below, above = (1 + (d <= 0).sum()) / (len(d) + 1), (1 + (d >= 0).sum()) / (len(d) + 1)
    ci = (float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5)))
    p = float(min(1.0, 2 * min(below, above)))
    return {"diff": float(diff), "ci": ci, "p": p, "p_floor": 2 / (len(d) + 1), "n_resamples": len(d)}


def compare_scores(
    y: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    label_kind: str,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, dict]:
    """``{"auroc": DeLong's result, "auprc": paired bootstrap}`` of model A minus model B on the same
    images. The AUPRC entry holds ``a``, ``b`` (average precision, macro), ``diff``, ``ci`` (95%
    percentile interval of the resampled differences), ``p`` (two-sided, from how often the resampled
    difference falls on either side of 0), ``p_floor`` (its smallest possible value) and
    ``n_resamples``."""
    from .scores import evaluate

    out = {"auroc": delong(y, scores_a, scores_b, label_kind)}
    point = [evaluate(y, s, label_kind, warn=False)["auprc"] for s in (scores_a, scores_b)]
    boot = paired_bootstrap(y, {"a": [scores_a], "b": [scores_b]}, label_kind, n_resamples=n_resamples, seed=seed)
    out["auprc"] = {"a": point[0], "b": point[1]}
    out["auprc"].update(bootstrap_difference(point[0] - point[1], boot["a"]["auprc"] - boot["b"]["auprc"]))
    return out


def compare_prediction_files(
    path_a: str | Path, path_b: str | Path, *, split: str = "test", n_resamples: int = 2000, seed: int = 0
) -> dict:
    """:func:`compare_scores` of two predictions files (as the probes, finetuning and the study write
    them) on ``split``: the same images (matched by id) with the same labels, or a
    :class:`~tlmic_feats.runtime.errors.DataFormatError` saying what differs."""
    kinds = {predictions_kind(p) for p in (path_a, path_b)}
    if len(kinds) != 1:
        raise DataFormatError(f"{path_a} and {path_b} hold different kinds of labels ({', '.join(sorted(kinds))})")
    kind = kinds.pop()
    parts = []
    for path in (path_a, path_b):
        preds = read_predictions(path, kind)
        if split not in preds:
            raise DataFormatError(f"{path} has no '{split}' rows; splits: {', '.join(preds) or '(none)'}")
        parts.append(preds[split])
    (ids_a, y_a, s_a), (ids_b, y_b, s_b) = parts
    only_a, only_b = sorted(set(ids_a) - set(ids_b)), sorted(set(ids_b) - set(ids_a))
    if only_a or only_b:
        raise DataFormatError(
            f"the two files score different {split} images: {len(only_a)} only in {Path(path_a).name} "
            f"(e.g. {only_a[:3]}), {len(only_b)} only in {Path(path_b).name} (e.g. {only_b[:3]}); "
            "a paired comparison needs the same images"
        )
    if len(set(ids_a)) != len(ids_a):
        raise DataFormatError(f"{path_a}: {split} image ids repeat")
    take = np.array([{i: k for k, i in enumerate(ids_b)}[i] for i in ids_a])
    y_b, s_b = y_b[take], s_b[take]
    if not np.array_equal(np.isnan(y_a), np.isnan(y_b)) or not np.array_equal(np.nan_to_num(y_a), np.nan_to_num(y_b)):
        raise DataFormatError(f"{path_a} and {path_b} give the same {split} images different labels")
    result = compare_scores(y_a, s_a, s_b, kind, n_resamples=n_resamples, seed=seed)
    result.update(kind=kind, split=split, n=len(ids_a), a=str(path_a), b=str(path_b))
    return result


def format_comparison(result: dict, name_a: str = "A", name_b: str = "B") -> str:
    """One line per metric: both values, the difference with its 95% CI and the p-value
    (:func:`format_p`: "p < 0.002" at the bootstrap's floor, "p undefined (zero variance)" for a
    DeLong difference without spread)."""
    lines = []
    for metric, how in (("auroc", "DeLong"), ("auprc", "paired bootstrap")):
        r = result[metric]
        lo, hi = r["ci"]
        lines.append(
            f"{metric.upper()}: {name_a} {r['a']:.4f}, {name_b} {r['b']:.4f}; difference {r['diff']:+.4f} "
            f"[{lo:+.4f}, {hi:+.4f}], {format_p(r)} ({how})"
        )
    return "\n".join(lines)


def format_p(result: dict, *, p: str = "p", floor: str = "p_floor", at_floor: str = "<") -> str:
    """The p-value of a result as reports print it: ``"p = 0.013"``; at the resampling floor (the
    smallest p its resamples or draws can give, ``result[floor]``) ``"p < 0.002"`` (``at_floor="<="``
    prints ``"p ≤ 0.010"``, for a permutation p-value ``(1 + k) / (1 + B)``, which is itself valid
    at its floor); a NaN p with ``se == 0`` (DeLong, a difference without spread)
    ``"p undefined (zero variance)"``; any other NaN ``"p n/a"``. ``p`` and ``floor`` name the
    result's keys (a permutation entry holds several p-values)."""
    value, low = result.get(p, float("nan")), result.get(floor)
    if value is None or not np.isfinite(value):
        return "p undefined (zero variance)" if result.get("se") == 0 else "p n/a"
    if low is not None and np.isfinite(low) and value <= low * (1 + 1e-9):
        return f"p {'≤' if at_floor == '<=' else '<'} {_p(low)}"
    return f"p = {_p(value)}"


def _p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"
