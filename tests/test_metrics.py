"""The metrics module against scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from tlmic_feats.metrics.scores import (
    METRICS,
    UndefinedMetricWarning,
    auroc_rows,
    average_precision_rows,
    bootstrap,
    choose_thresholds,
    evaluate,
)


@pytest.fixture(params=[0, 1, 2])
def rng(request):
    return np.random.default_rng(request.param)


def test_vectorized_auroc_and_ap_equal_sklearn_with_ties(rng):
    for _ in range(20):
        n = int(rng.integers(5, 60))
        y = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(float)
        y[:2] = [0, 1]
        s = np.round(rng.random(n), int(rng.integers(1, 3)))  # coarse scores: many ties
        assert auroc_rows(y[None], s[None])[0] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        assert average_precision_rows(y[None], s[None])[0] == pytest.approx(
            skm.average_precision_score(y, s), abs=1e-12
        )


def test_binary_metrics_equal_sklearn(rng):
    y = (rng.random(200) < 0.2).astype(int)
    s = np.clip(0.3 * y + rng.random(200) * 0.8, 0, 1)
    t = choose_thresholds(y, s, "binary")
    m = evaluate(y, s, "binary", thresholds=t)
    pred = (s >= t[0]).astype(int)
    assert m["auroc"] == skm.roc_auc_score(y, s)
    assert m["auprc"] == skm.average_precision_score(y, s)
    assert m["balanced_accuracy"] == skm.balanced_accuracy_score(y, pred)
    assert m["macro_f1"] == skm.f1_score(y, pred, average="macro")
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn)) and m["specificity"] == pytest.approx(tn / (tn + fp))
    # Youden's threshold maximizes sens + spec on the data it was chosen on
    fpr, tpr, _ = skm.roc_curve(y, s)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx((tpr - fpr).max())


def test_multiclass_macro_ovr_equals_sklearn(rng):
    y = rng.integers(0, 3, 150)
    logits = rng.normal(size=(150, 3)) + np.eye(3)[y] * 1.2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = evaluate(y, p, "multiclass", label_names=["a", "b", "c"])
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    ap = np.mean([skm.average_precision_score(y == c, p[:, c]) for c in range(3)])
    assert m["auprc"] == pytest.approx(ap)
    assert m["balanced_accuracy"] == skm.balanced_accuracy_score(y, p.argmax(1))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, p.argmax(1), average="macro"))
    assert m["n_labels"] == 3 and set(m["per_label"]) == {"a", "b", "c"}


def test_multilabel_masks_missing_and_nans_one_class_labels(rng):
    n = 120
    y = (rng.random((n, 3)) < [0.3, 0.5, 0.0]).astype(float)  # third label: no positives in test
    y[rng.random((n, 3)) < 0.1] = np.nan
    s = np.clip(np.nan_to_num(y) * 0.4 + rng.random((n, 3)) * 0.7, 0, 1)
    with pytest.warns(UndefinedMetricWarning, match="'c'"):
        m = evaluate(y, s, "multilabel", thresholds=np.full(3, 0.5), label_names=["a", "b", "c"])
    assert m["n_labels"] == 2 and m["n_labels_total"] == 3 and np.isnan(m["per_label"]["c"]["auroc"])
    per = []
    for j in range(2):
        k = ~np.isnan(y[:, j])
        per.append(skm.roc_auc_score(y[k, j], s[k, j]))
        assert m["per_label"]["abc"[j]]["auprc"] == pytest.approx(skm.average_precision_score(y[k, j], s[k, j]))
    assert m["auroc"] == pytest.approx(np.mean(per))


def test_one_class_binary_test_split_is_nan_not_crash():
    with pytest.warns(UndefinedMetricWarning):
        m = evaluate(np.zeros(10), np.linspace(0, 1, 10), "binary")
    assert all(np.isnan(m[k]) for k in METRICS) and m["n_labels"] == 0
    assert all(np.isnan(v).all() for v in bootstrap(np.zeros(10), np.linspace(0, 1, 10), "binary").values())


def test_bootstrap_ci_brackets_estimate_and_narrows_with_n(rng):
    def data(n):
        y = (rng.random(n) < 0.3).astype(int)
        return y, np.clip(0.25 * y + rng.random(n) * 0.75, 0, 1)

    y, s = data(300)
    m = evaluate(y, s, "binary", thresholds=np.array([0.5]))
    ci = bootstrap(y, s, "binary", thresholds=np.array([0.5]), n_resamples=500, seed=1)
    for k in METRICS:
        assert ci[k][0] <= m[k] <= ci[k][1], k
    y2, s2 = data(3000)
    ci2 = bootstrap(y2, s2, "binary", thresholds=np.array([0.5]), n_resamples=500, seed=1)
    assert ci2["auroc"][1] - ci2["auroc"][0] < ci["auroc"][1] - ci["auroc"][0]
    # stratified: every resample keeps the class counts, so the CI is reproducible by seed
    assert bootstrap(y, s, "binary", n_resamples=200, seed=3) == bootstrap(y, s, "binary", n_resamples=200, seed=3)


def test_bootstrap_multiclass_and_multilabel_run(rng):
    y = rng.integers(0, 3, 90)
    p = rng.dirichlet(np.ones(3), 90)
    ci = bootstrap(y, p, "multiclass", n_resamples=100)
    assert all(0 <= ci[k][0] <= ci[k][1] <= 1 for k in METRICS)
    yl = (rng.random((90, 2)) < 0.4).astype(float)
    yl[0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ci = bootstrap(yl, rng.random((90, 2)), "multilabel", n_resamples=100)
    assert 0.3 < ci["auroc"][0] < ci["auroc"][1] < 0.7


# --- paired comparisons: DeLong and the paired bootstrap --------------------------------------------


def _delong_direct(y, a, b):
    """DeLong et al. (1988) written out: the Mann-Whitney kernel over every (positive, negative) pair,
    O(n^2), with the placement values' covariance (independent of the fast mid-rank algorithm)."""
    pos, neg = y == 1, y == 0
    v10, v01 = [], []
    for s in (a, b):
        x, z = s[pos][:, None], s[neg][None, :]
        psi = (x > z) + 0.5 * (x == z)
        v10.append(psi.mean(1))
        v01.append(psi.mean(0))
    s10, s01 = np.cov(np.stack(v10)), np.cov(np.stack(v01))
    cov = s10 / pos.sum() + s01 / neg.sum()
    auc = [v.mean() for v in v10]
    return auc[0] - auc[1], np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def test_delong_equals_the_direct_quadratic_computation(rng):
    from scipy.stats import norm

    from tlmic_feats.metrics.paired import delong

    for _ in range(10):
        n = int(rng.integers(20, 120))
        y = (rng.random(n) < rng.uniform(0.2, 0.6)).astype(float)
        y[:2] = [0, 1]
        a = np.round(y * rng.uniform(0, 1.5) + rng.normal(size=n), 1)  # rounded: ties
        b = np.round(0.5 * a + y * rng.uniform(0, 1) + rng.normal(size=n), 1)
        r = delong(y, a, b)
        diff, se = _delong_direct(y, a, b)
        assert r["a"] == pytest.approx(skm.roc_auc_score(y, a), abs=1e-12)
        assert r["b"] == pytest.approx(skm.roc_auc_score(y, b), abs=1e-12)
        assert r["diff"] == pytest.approx(diff, abs=1e-12) and r["se"] == pytest.approx(se, rel=1e-9)
        assert r["p"] == pytest.approx(2 * norm.sf(abs(diff) / se), rel=1e-9)
        assert r["ci"][0] < r["diff"] < r["ci"][1]


def test_delong_null_p_values_are_calibrated_and_a_real_difference_is_found():
    from tlmic_feats.metrics.paired import delong

    rng = np.random.default_rng(7)
    p_null, p_alt = [], []
    for _ in range(600):
        n = 120
        y = (rng.random(n) < 0.35).astype(float)
        common = rng.normal(size=n)  # the two models share much of their error: correlated AUROCs
        a = y + common + rng.normal(size=n)
        b = y + common + rng.normal(size=n)  # equally good: H0 holds
        p_null.append(delong(y, a, b)["p"])
        p_alt.append(delong(y, a + y, b)["p"])
    p_null = np.array(p_null)
    assert 0.03 <= (p_null < 0.05).mean() <= 0.075  # the nominal 5%
    assert 0.07 <= (p_null < 0.10).mean() <= 0.135
    assert (np.array(p_alt) < 0.05).mean() > 0.8  # measured 0.88


def test_delong_macro_over_labels_matches_the_jackknife(rng):
    """Multi-label: the variance of the macro AUROC difference from per-image placement values summed
    over labels (labels share images), against the leave-one-image-out jackknife."""
    from tlmic_feats.metrics.paired import delong

    n = 160
    y = (rng.random((n, 3)) < [0.3, 0.45, 0.2]).astype(float)
    y[rng.random((n, 3)) < 0.1] = np.nan
    shared = rng.normal(size=(n, 1))
    a = np.nan_to_num(y) + shared + rng.normal(size=(n, 3))
    b = 0.7 * np.nan_to_num(y) + shared + rng.normal(size=(n, 3))
    r = delong(y, a, b, "multilabel")

    def macro_diff(rows):
        d = []
        for j in range(3):
            k = rows[~np.isnan(y[rows, j])]
            d.append(skm.roc_auc_score(y[k, j], a[k, j]) - skm.roc_auc_score(y[k, j], b[k, j]))
        return np.mean(d)

    everything = np.arange(n)
    assert r["diff"] == pytest.approx(macro_diff(everything), abs=1e-12) and r["n_labels"] == 3
    jack = np.array([macro_diff(np.delete(everything, i)) for i in range(n)])
    se_jack = np.sqrt((n - 1) / n * ((jack - jack.mean()) ** 2).sum())
    assert r["se"] == pytest.approx(se_jack, rel=0.1)


def test_compare_scores_auprc_is_the_paired_bootstrap(rng):
    from tlmic_feats.metrics.paired import compare_scores

    y = (rng.random(150) < 0.3).astype(float)
    a, b = y + rng.normal(size=150), 0.3 * y + rng.normal(size=150)
    r = compare_scores(y, a, b, "binary", n_resamples=400, seed=2)["auprc"]
    assert r["a"] == pytest.approx(skm.average_precision_score(y, a))
    assert r["diff"] == pytest.approx(r["a"] - r["b"]) and r["ci"][0] < r["diff"] < r["ci"][1]
    assert 1 / 401 <= r["p"] <= 1 and r["n_resamples"] == 400
    same = compare_scores(y, a, a, "binary", n_resamples=200)
    assert same["auroc"]["p"] == 1.0 and same["auprc"]["p"] == 1.0 and same["auprc"]["diff"] == 0


def test_delong_of_seed_means_is_the_contrast_of_correlated_aurocs(rng):
    """Two arms of two seeds each: DeLong's covariance of the four AUROCs (written out with the
    Mann-Whitney kernel), contrasted with weights (1/2, 1/2, -1/2, -1/2)."""
    from tlmic_feats.metrics.paired import delong_mean

    n = 90
    y = (rng.random(n) < 0.4).astype(float)
    runs = [y * w + rng.normal(size=n) for w in (1.2, 1.0, 0.6, 0.8)]
    pos, neg = y == 1, y == 0
    psi = [(s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :]) for s in runs]
    cov = (
        np.cov(np.stack([p.mean(1) for p in psi])) / pos.sum() + np.cov(np.stack([p.mean(0) for p in psi])) / neg.sum()
    )
    w = np.array([0.5, 0.5, -0.5, -0.5])
    r = delong_mean(y, runs[:2], runs[2:])
    assert r["diff"] == pytest.approx(w @ [p.mean() for p in psi], abs=1e-12)
    assert r["se"] == pytest.approx(np.sqrt(w @ cov @ w), rel=1e-9)


def test_thresholds_for_a_label_without_scores_are_neutral():
    y = np.array([[0, 1], [1, 0], [0, 1], [1, 0]], dtype=float)
    s = np.array([[0.2, np.nan], [0.8, np.nan], [0.3, np.nan], [0.9, np.nan]])  # label 2 had no probe
    t = choose_thresholds(y, s, "multilabel")
    assert t[1] == 0.5 and 0.3 < t[0] <= 0.8


def test_delong_without_spread_has_no_p_value_unless_nothing_differs():
    """Every placement value equal (two positives, two negatives, one model perfect, the other
    reversed): se = 0. A difference of 1 then has no normal p-value (NaN, said so), not p = 0;
    no difference at all is p = 1."""
    from tlmic_feats.metrics.paired import delong, format_comparison, format_p

    y = np.array([0, 0, 1, 1], dtype=float)
    a, b = np.array([0.0, 0.1, 0.8, 0.9]), np.array([0.9, 0.8, 0.1, 0.0])
    r = delong(y, a, b)
    assert (r["a"], r["b"], r["se"]) == (1.0, 0.0, 0.0) and r["diff"] == 1.0
    assert np.isnan(r["p"]) and format_p(r) == "p undefined (zero variance)"
    same = delong(y, a, a)
    assert same["se"] == 0 and same["diff"] == 0 and same["p"] == 1.0
    line = format_comparison({"auroc": {**r}, "auprc": {**r, "se": float("nan")}}).splitlines()
    assert line[0].endswith("p undefined (zero variance) (DeLong)") and "p n/a (paired bootstrap)" in line[1]


def test_a_bootstrap_p_at_its_floor_is_printed_as_below_it(rng):
    """No resample crosses 0: p is the floor 2 / (B + 1) and prints as "p < 0.002" (999 resamples);
    a p above the floor prints as itself."""
    from tlmic_feats.metrics.paired import bootstrap_difference, compare_scores, format_comparison, format_p

    r = bootstrap_difference(0.1, np.full(999, 0.1))
    assert r["p"] == pytest.approx(2 / 1000) and r["p_floor"] == pytest.approx(2 / 1000)
    assert format_p(r) == "p < 0.002"
    d = rng.normal(0.05, 0.05, 999)
    r = bootstrap_difference(0.05, d)
    k = min((d <= 0).sum(), (d >= 0).sum())
    assert r["p"] == pytest.approx(2 * (1 + k) / 1000) and format_p(r) == f"p = {2 * (1 + k) / 1000:.3f}"
    assert format_p({"p": 0.01, "p_floor": 0.01}, at_floor="<=") == "p ≤ 0.010"
    y = (rng.random(300) < 0.4).astype(float)
    a, b = 3 * y + rng.normal(size=300), rng.normal(size=300)  # A far better: every resample says so
    out = format_comparison(compare_scores(y, a, b, "binary", n_resamples=999))
    assert "p < 0.002 (paired bootstrap)" in out and "p = 0.002" not in out


# --- the multi-label bootstrap: one draw of images for every label ------------------------------------


def _multilabel_case(rng, n=240, labels=3):
    y = (rng.random((n, labels)) < [0.35, 0.2, 0.1][:labels]).astype(float)
    y[rng.random((n, labels)) < 0.1] = np.nan
    s = np.nan_to_num(y) + rng.normal(size=(n, labels)) + 0.5 * rng.normal(size=(n, 1))  # correlated labels
    return y, s


def test_image_strata_mirror_the_splits_stratify_key(rng):
    from tlmic_feats.data.splits import stratify_key
    from tlmic_feats.metrics.scores import image_strata

    y, _ = _multilabel_case(rng, labels=3)
    np.testing.assert_array_equal(image_strata(y, "multilabel"), stratify_key(y, "multilabel"))
    yb = (rng.random((50, 1)) < 0.3).astype(float)
    np.testing.assert_array_equal(image_strata(yb, "binary"), stratify_key(yb, "binary"))


def test_identical_labels_give_the_macro_ci_of_one_label(rng):
    """Five copies of one label scored alike: each resample's macro value is that label's value, so the
    macro CI equals the one label's CI (resampling the labels independently averaged five independent
    resamples and made it about 1/sqrt(5) as wide)."""
    n = 300
    y1 = (rng.random(n) < 0.3).astype(float)
    s1 = y1 + rng.normal(size=n)
    one = bootstrap(y1, s1, "binary", thresholds=np.array([0.4]), n_resamples=400, seed=5)
    five = bootstrap(
        np.repeat(y1[:, None], 5, 1), np.repeat(s1[:, None], 5, 1), "multilabel",
        thresholds=np.full(5, 0.4), n_resamples=400, seed=5,
    )  # fmt: skip
    for m in METRICS:
        assert five[m] == pytest.approx(one[m], abs=1e-12), m
        assert five[m][1] - five[m][0] > 0.01


def test_multilabel_resamples_equal_sklearn_on_the_resampled_images(rng):
    """The paired bootstrap's macro AUROC and AUPRC of each resample against scikit-learn on that
    resample's images (each label on the images where it is known), with the images drawn once."""
    from tlmic_feats.metrics.scores import _stratified_index, image_strata, paired_bootstrap

    y, s = _multilabel_case(rng)
    b = 30
    out = paired_bootstrap(y, {"a": [s]}, "multilabel", n_resamples=b, seed=4)["a"]
    idx = _stratified_index(image_strata(y, "multilabel"), b, np.random.default_rng(4))
    for k in range(b):
        yk, sk = y[idx[k]], s[idx[k]]
        known = [~np.isnan(yk[:, j]) for j in range(3)]
        auroc = np.mean([skm.roc_auc_score(yk[m, j], sk[m, j]) for j, m in enumerate(known)])
        auprc = np.mean([skm.average_precision_score(yk[m, j], sk[m, j]) for j, m in enumerate(known)])
        assert out["auroc"][k] == pytest.approx(auroc, abs=1e-12)
        assert out["auprc"][k] == pytest.approx(auprc, abs=1e-12)


def test_multilabel_bootstrap_ci_holds_the_threshold_metrics_of_the_resampled_images(rng):
    """bootstrap's macro threshold metrics on masked resamples: a CI from 2,000 resamples brackets
    the point estimate, and one resample's values (B = 1) equal scikit-learn's on its images."""
    from tlmic_feats.metrics.scores import _stratified_index, image_strata

    y, s = _multilabel_case(rng)
    t = np.array([0.5, 0.6, 0.7])
    point = evaluate(y, s, "multilabel", thresholds=t)
    ci = bootstrap(y, s, "multilabel", thresholds=t, n_resamples=2000, seed=2)
    for m in METRICS:
        assert ci[m][0] <= point[m] <= ci[m][1], m
    (idx,) = _stratified_index(image_strata(y, "multilabel"), 1, np.random.default_rng(9))
    one = bootstrap(y, s, "multilabel", thresholds=t, n_resamples=1, seed=9)
    want = evaluate(y[idx], s[idx], "multilabel", thresholds=t)
    for m in METRICS:
        assert one[m][0] == pytest.approx(want[m], abs=1e-12) and one[m][1] == pytest.approx(want[m], abs=1e-12), m
