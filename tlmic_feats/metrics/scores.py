"""One metrics module for both arms: AUROC and AUPRC first, as imbalanced medical data need.

Point estimates are scikit-learn's own functions. Bootstrap confidence intervals resample the
test images (stratified by class, so every resample holds both classes; multi-label: by each
image's rarest positive label, and one draw of images serves every label) and recompute the
metrics with vectorized, tie-aware equivalents of the same definitions (checked against
scikit-learn in the tests), so 1,000 resamples cost milliseconds rather than seconds.

Scores: binary -> ``(N,)`` probability of class 1; multi-class -> ``(N, K)`` probabilities;
multi-label -> ``(N, L)`` probability per label, labels ``(N, L)`` with NaN where missing.

Thresholds: binary and multi-label use the threshold chosen on the validation split
(:func:`choose_thresholds`, Youden's J); multi-class predictions are the arg-max.

A label (or class) whose test split holds one class only gets NaN and a warning; macro averages
run over the labels that are defined and say how many (``n_labels``).
"""

from __future__ import annotations

import warnings

import numpy as np

METRICS = ("auroc", "auprc", "balanced_accuracy", "macro_f1", "sensitivity", "specificity")


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined on this split (e.g. one class only) and was set to NaN."""


def youden_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """The score threshold maximizing sensitivity + specificity - 1 on (validation) data."""
    from sklearn.metrics import roc_curve

    y, s = np.asarray(y), np.asarray(s)
    if len(np.unique(y)) < 2 or not np.isfinite(s).all():  # one class, or no scores (a label without a probe)
        return 0.5
    fpr, tpr, thr = roc_curve(y, s)
    best = int(np.argmax(tpr - fpr))
    return float(min(thr[best], 1.0)) if np.isfinite(thr[best]) else 0.5


def choose_thresholds(y_val: np.ndarray, s_val: np.ndarray, label_kind: str) -> np.ndarray | None:
    """Per-label thresholds chosen on validation data (None for multi-class: arg-max)."""
    if label_kind == "multiclass":
        return None
    y_val, s_val = _as_2d(y_val), _as_2d(s_val)
    out = []
    for j in range(y_val.shape[1]):
        m = ~np.isnan(y_val[:, j])
        out.append(youden_threshold(y_val[m, j], s_val[m, j]))
    return np.array(out)


def _as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(len(a), -1)


def _binary_point(y: np.ndarray, s: np.ndarray, t: float) -> dict[str, float]:
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        f1_score,
        recall_score,
        roc_auc_score,
    )

    pred = (s >= t).astype(int)
    y = y.astype(int)
    return {
        "auroc": float(roc_auc_score(y, s)),
        "auprc": float(average_precision_score(y, s)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0)),
        "sensitivity": float(recall_score(y, pred, pos_label=1, zero_division=0)),
        "specificity": float(recall_score(y, pred, pos_label=0, zero_division=0)),
    }


def _nan_metrics() -> dict[str, float]:
    return dict.fromkeys(METRICS, float("nan"))


def evaluate(
    y: np.ndarray,
    scores: np.ndarray,
    label_kind: str,
    *,
    thresholds: np.ndarray | None = None,
    label_names: list[str] | tuple[str, ...] | None = None,
    warn: bool = True,
) -> dict:
    """Test metrics: ``{metric: value, ..., "n_labels": k, "n_labels_total": L, "per_label": {...}}``.

    ``per_label`` holds the binary metrics of each label (multi-label) or each class one-vs-rest
    (multi-class); for binary data it is empty. ``warn=False``: no :class:`UndefinedMetricWarning`
    for an undefined label (the caller reports ``n_labels``); threads that fit in parallel use it,
    since ``warnings.catch_warnings`` is not thread-safe.
    """
    if label_kind == "binary":
        y1, s1 = _as_2d(y)[:, 0], _as_2d(scores)[:, -1]
        t = float(thresholds[0]) if thresholds is not None else 0.5
        if len(np.unique(y1)) < 2:
            if warn:
                warnings.warn(
                    "test split holds one class only: metrics set to NaN", UndefinedMetricWarning, stacklevel=2
                )
            out = _nan_metrics()
            out.update(n_labels=0, n_labels_total=1, per_label={})
            return out
        out = _binary_point(y1, s1, t)
        out.update(n_labels=1, n_labels_total=1, per_label={})
        return out
    if label_kind == "multiclass":
        return _multiclass_point(_as_2d(y)[:, 0].astype(int), np.asarray(scores, float), label_names, warn)
    return _multilabel_point(_as_2d(y), _as_2d(scores), thresholds, label_names, warn)


def _multiclass_point(y: np.ndarray, p: np.ndarray, names, warn: bool = True) -> dict:
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        roc_auc_score,
    )

    k = p.shape[1]
    names = list(names) if names is not None else [str(i) for i in range(k)]
    pred = p.argmax(1)
    per = {}
    for c in range(k):
        yc = (y == c).astype(int)
        if len(np.unique(yc)) < 2:
            if warn:
                warnings.warn(
                    f"class {names[c]!r}: test split has no examples of it (or only it); its one-vs-rest metrics "
                    "are NaN",
                    UndefinedMetricWarning,
                    stacklevel=3,
                )
            per[names[c]] = {"auroc": float("nan"), "auprc": float("nan")}
            continue
        per[names[c]] = {
            "auroc": float(roc_auc_score(yc, p[:, c])),
            "auprc": float(average_precision_score(yc, p[:, c])),
        }
    cm = confusion_matrix(y, pred, labels=list(range(k))).astype(float)
    tp = np.diag(cm)
    support = cm.sum(1)
    tn = cm.sum() - cm.sum(0) - cm.sum(1) + tp
    neg = cm.sum() - support
    present = support > 0
    spec = np.where(neg > 0, tn / np.maximum(neg, 1), np.nan)
    out = {
        "auroc": float(np.nanmean([v["auroc"] for v in per.values()])) if present.sum() >= 2 else float("nan"),
        "auprc": float(np.nanmean([v["auprc"] for v in per.values()])) if present.sum() >= 2 else float("nan"),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=list(range(k)), zero_division=0)),
        "sensitivity": float(np.mean(tp[present] / support[present])),
        "specificity": float(np.nanmean(spec[present])),
        "n_labels": int(sum(np.isfinite(v["auroc"]) for v in per.values())),
        "n_labels_total": k,
        "per_label": per,
    }
    return out


def _multilabel_point(y: np.ndarray, s: np.ndarray, thresholds, names, warn: bool = True) -> dict:
    n_labels = y.shape[1]
    names = list(names) if names is not None else [f"label_{j}" for j in range(n_labels)]
    thresholds = thresholds if thresholds is not None else np.full(n_labels, 0.5)
    per = {}
    for j in range(n_labels):
        m = ~np.isnan(y[:, j])
        if len(np.unique(y[m, j])) < 2 or not np.isfinite(s[m, j]).all():
            why = "holds one class only" if len(np.unique(y[m, j])) < 2 else "has no scores (no probe)"
            if warn:
                warnings.warn(
                    f"label {names[j]!r}: test split {why}; its metrics are NaN", UndefinedMetricWarning, stacklevel=3
                )
            per[names[j]] = _nan_metrics()
            continue
        per[names[j]] = _binary_point(y[m, j], s[m, j], float(thresholds[j]))
    defined = [v for v in per.values() if np.isfinite(v["auroc"])]
    out = {m: float(np.mean([v[m] for v in defined])) if defined else float("nan") for m in METRICS}
    out.update(n_labels=len(defined), n_labels_total=n_labels, per_label=per)
    return out


def _rankdata_rows(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(a, axis=1, method="average")


def auroc_rows(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUROC of each row of (B, n) labels/scores (Mann-Whitney with average ranks for ties)."""
    ranks = _rankdata_rows(s)
    n1 = y.sum(1)
    n0 = y.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def average_precision_rows(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Average precision of each row, as scikit-learn defines it (steps at distinct scores)."""
    order = np.argsort(-s, axis=1, kind="stable")
    ys = np.take_along_axis(y, order, 1)
    ss = np.take_along_axis(s, order, 1)
    tp = np.cumsum(ys, 1)
    fp = np.cumsum(1 - ys, 1)
    # A threshold sits at the last position of each run of equal scores.
    last = np.ones_like(ss, dtype=bool)
    last[:, :-1] = ss[:, :-1] != ss[:, 1:]
    tp_at = np.where(last, tp, 0)
    prev = np.zeros_like(tp_at)
    prev[:, 1:] = np.maximum.accumulate(tp_at, axis=1)[:, :-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        return np.where(last, (tp - prev) * precision, 0).sum(1) / tp[:, -1]


def _threshold_rows(y: np.ndarray, s: np.ndarray, t: float, valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
    pred = s >= t
    n1 = y.sum(1)
    n0 = (y.shape[1] if valid is None else valid.sum(1)) - n1
    tp = (pred & (y == 1)).sum(1)
    tn = (~pred & (y == 0) & (True if valid is None else valid)).sum(1)
    fp, fn = n0 - tn, n1 - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        sens, spec = tp / n1, tn / n0
        f1p = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        f1n = np.where(2 * tn + fp + fn > 0, 2 * tn / (2 * tn + fp + fn), 0.0)
    return {
        "balanced_accuracy": (sens + spec) / 2,
        "macro_f1": (f1p + f1n) / 2,
        "sensitivity": sens,
        "specificity": spec,
    }


def _binary_rows(y: np.ndarray, s: np.ndarray, t: float) -> dict[str, np.ndarray]:
    out = {"auroc": auroc_rows(y, s), "auprc": average_precision_rows(y, s)}
    out.update(_threshold_rows(y, s, t))
    return out


def _masked_rows(y: np.ndarray, s: np.ndarray, t: float | None = None) -> dict[str, np.ndarray]:
    """:func:`_binary_rows` of (B, n) resampled labels with NaN where missing, over each row's known
    labels only (a resample of images holds a label's missing rows too). Missing rows are scored
    +inf for AUROC (above every known one: the known rows' ranks among themselves are unchanged)
    and -inf for average precision (after every known one: no threshold adds them); the threshold
    metrics count known rows only. ``t=None``: AUROC and AUPRC only."""
    valid = ~np.isnan(y)
    y01 = np.where(valid, y, 0.0)
    n1 = y01.sum(1)
    n0 = valid.sum(1) - n1
    ranks = _rankdata_rows(np.where(valid, s, np.inf))
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = ((ranks * y01).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)
    out = {"auroc": auroc, "auprc": average_precision_rows(y01, np.where(valid, s, -np.inf))}
    if t is not None:
        out.update(_threshold_rows(y01, s, t, valid))
    return out


def image_strata(y: np.ndarray, label_kind: str) -> np.ndarray:
    """One stratum per image for resampling test images: the class (binary, multi-class) or, for
    multi-label, the image's rarest positive label (-1 with none). The same rule as the data
    splits' ``stratify_key`` (data/splits.py), kept here because metrics do not import data:
    every resample keeps each stratum's count, so a rare finding's positives are never all lost."""
    y2 = _as_2d(y)
    if label_kind in ("binary", "multiclass"):
        return y2[:, 0].astype(np.int64)
    pos = np.nan_to_num(y2, nan=0.0) > 0.5
    order = np.argsort(pos.sum(axis=0), kind="stable")  # rarest first
    key = np.full(len(y2), -1, dtype=np.int64)
    for j in order[::-1]:  # later (rarer) labels overwrite
        key[pos[:, j]] = j
    return key


def _defined_labels(y: np.ndarray, s: np.ndarray) -> list[int]:
    """The labels (columns) whose known rows hold both classes and that have scores on them."""
    out = []
    for j in range(y.shape[1]):
        m = ~np.isnan(y[:, j])
        if len(np.unique(y[m, j])) == 2 and np.isfinite(s[m, j]).all():
            out.append(j)
    return out


def _stratified_index(strata: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) row indices: each stratum resampled with replacement within itself."""
    cols = []
    for k in np.unique(strata):
        members = np.flatnonzero(strata == k)
        cols.append(members[rng.integers(0, len(members), size=(n_resamples, len(members)))])
    return np.concatenate(cols, axis=1)


def bootstrap(
    y: np.ndarray,
    scores: np.ndarray,
    label_kind: str,
    *,
    thresholds: np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs of the macro metrics on a test set, stratified by class.

    Multi-label: a resample draws images (stratified by :func:`image_strata`), the same images for
    every label, so that labels scored on the same images vary together as they do between test
    sets; each label's metrics use the resampled images where it is known, and the macro value of
    resample ``b`` averages the labels' values on it.
    """
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2 * 100
    if n_resamples <= 0:
        return {m: (float("nan"), float("nan")) for m in METRICS}
    if label_kind == "multiclass":
        values = _multiclass_rows(_as_2d(y)[:, 0].astype(int), np.asarray(scores, float), n_resamples, rng)
    else:
        y2, s2 = _as_2d(y), _as_2d(scores)
        if label_kind == "binary":
            s2 = s2[:, -1:]
        t = thresholds if thresholds is not None else np.full(y2.shape[1], 0.5)
        per_label = []
        if label_kind == "binary":
            m = ~np.isnan(y2[:, 0])
            yj, sj = y2[m, 0], s2[m, 0]
            if len(np.unique(yj)) == 2 and np.isfinite(sj).all():
                idx = _stratified_index(yj, n_resamples, rng)
                per_label.append(_binary_rows(yj[idx], sj[idx], float(t[0])))
        else:
            idx = _stratified_index(image_strata(y2, label_kind), n_resamples, rng)  # one draw for all labels
            for j in _defined_labels(y2, s2):
                per_label.append(_masked_rows(y2[idx, j], s2[idx, j], float(t[j])))
        if not per_label:
            return {m: (float("nan"), float("nan")) for m in METRICS}
        values = {m: np.mean([v[m] for v in per_label], axis=0) for m in METRICS}
    out = {}
    for m in METRICS:
        v = values[m][np.isfinite(values[m])]
        out[m] = (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) if len(v) else (float("nan"),) * 2
    return out


def _multiclass_rows(y: np.ndarray, p: np.ndarray, n_resamples: int, rng) -> dict[str, np.ndarray]:
    idx = _stratified_index(y, n_resamples, rng)
    yb, pb = y[idx], p[idx]  # (B, n), (B, n, K)
    k = p.shape[1]
    present = [c for c in range(k) if (y == c).any() and (y != c).any()]
    aurocs = [auroc_rows((yb == c).astype(float), pb[:, :, c]) for c in present]
    aps = [average_precision_rows((yb == c).astype(float), pb[:, :, c]) for c in present]
    pred = pb.argmax(2)
    recall, spec, f1 = [], [], []
    for c in range(k):
        pos, hit = yb == c, pred == c
        tp = (pos & hit).sum(1)
        fp = (~pos & hit).sum(1)
        fn = (pos & ~hit).sum(1)
        tn = (~pos & ~hit).sum(1)
        denom = 2 * tp + fp + fn
        f1.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
        if (y == c).any():
            recall.append(tp / np.maximum(tp + fn, 1))
            spec.append(tn / np.maximum(tn + fp, 1))
    nan = np.full(n_resamples, np.nan)
    bacc = np.mean(recall, axis=0)
    return {
        "auroc": np.mean(aurocs, axis=0) if len(present) >= 2 else nan,
        "auprc": np.mean(aps, axis=0) if len(present) >= 2 else nan,
        "balanced_accuracy": bacc,
        "macro_f1": np.mean(f1, axis=0),
        "sensitivity": bacc,
        "specificity": np.mean(spec, axis=0),
    }


def paired_bootstrap(
    y: np.ndarray,
    arms: dict[str, list[np.ndarray]],
    label_kind: str,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Resampled AUROC and AUPRC of each arm's *seed mean*, with the same test resamples for every
    arm: ``{arm: {"auroc": (B,), "auprc": (B,)}}``. Percentiles of one arm give its CI over test
    images; percentiles of a difference of two arms give a paired CI of the difference.

    ``arms[name]`` lists one score array per seed, rows aligned with ``y`` (as in ``evaluate``).
    Multi-label: one draw of images per resample for every label, as in :func:`bootstrap`.
    """
    rng = np.random.default_rng(seed)
    y2 = _as_2d(y)
    columns = []  # (labels of the rows used, the rows, which score column, resample index)
    if label_kind == "multiclass":
        yc = y2[:, 0].astype(int)
        idx = _stratified_index(yc, n_resamples, rng)
        for c in np.unique(yc):
            if 0 < (yc == c).sum() < len(yc):
                columns.append(((yc == c).astype(float), np.arange(len(yc)), int(c), idx))
    elif label_kind == "binary":
        rows = np.flatnonzero(~np.isnan(y2[:, 0]))
        yj = y2[rows, 0]
        if len(np.unique(yj)) == 2:
            columns.append((yj, rows, 0, _stratified_index(yj, n_resamples, rng)))
    else:  # multi-label: one draw of images for every label (see bootstrap), NaN where a label is unknown
        idx = _stratified_index(image_strata(y2, label_kind), n_resamples, rng)
        rows = np.arange(len(y2))
        for j in range(y2.shape[1]):
            if len(np.unique(y2[~np.isnan(y2[:, j]), j])) == 2:
                columns.append((y2[:, j], rows, j, idx))
    out = {}
    for name, per_seed in arms.items():
        acc = {"auroc": np.zeros(n_resamples), "auprc": np.zeros(n_resamples)}
        for scores in per_seed:
            s2 = np.asarray(scores, dtype=float).reshape(len(y2), -1)
            if label_kind == "binary":
                s2 = s2[:, -1:]
            vals = {m: [] for m in acc}
            for yj, rows, col, idx in columns:
                sj = s2[rows, col]
                if label_kind == "multilabel":
                    both = _masked_rows(yj[idx], sj[idx])
                else:
                    both = {"auroc": auroc_rows(yj[idx], sj[idx]), "auprc": average_precision_rows(yj[idx], sj[idx])}
                for m in acc:
                    vals[m].append(both[m])
            for m in acc:
                acc[m] += np.mean(vals[m], axis=0) if vals[m] else np.nan
        out[name] = {m: v / max(len(per_seed), 1) for m, v in acc.items()}
    return out
