"""Verdicts over training runs: the weighted metrics against scikit-learn, the variance parts against
DeLong and a direct computation, the seeds needed against statsmodels, and calibration (coverage,
A/A) on a two-level model with a known difference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from tlmic_feats.metrics.paired import delong_mean
from tlmic_feats.metrics.scores import image_strata
from tlmic_feats.metrics.verdicts import (
    compare_runs,
    format_verdict,
    holm,
    image_weights,
    metric_under_weights,
    seeds_needed,
    weighted_auroc,
    weighted_average_precision,
)
from tlmic_feats.testing.simulation import TwoLevel, simulate


def test_weighted_metrics_equal_sklearn_on_resamples():
    rng = np.random.default_rng(3)
    y = (rng.random(150) < 0.3).astype(float)
    s = np.round(y + rng.normal(size=150), 1)  # ties
    idx = rng.integers(0, 150, size=(20, 150))
    w = np.stack([np.bincount(i, minlength=150) for i in idx]).astype(float)
    got_auc, got_ap = weighted_auroc(y, s, w), weighted_average_precision(y, s, w)
    for k, i in enumerate(idx):
        assert got_auc[k] == pytest.approx(roc_auc_score(y[i], s[i]), abs=1e-12)
        assert got_ap[k] == pytest.approx(average_precision_score(y[i], s[i]), abs=1e-12)


def test_multilabel_macro_with_missing_labels_equals_sklearn():
    rng = np.random.default_rng(4)
    y = (rng.random((120, 3)) < 0.3).astype(float)
    y[rng.random((120, 3)) < 0.2] = np.nan
    s = rng.random((120, 3)) + np.nan_to_num(y) * 0.5
    got = metric_under_weights(y, s, "multilabel", "auroc", np.ones((1, 120)))[0]
    want = np.mean([roc_auc_score(y[~np.isnan(y[:, j]), j], s[~np.isnan(y[:, j]), j]) for j in range(3)])
    assert got == pytest.approx(want, abs=1e-12)


def test_one_image_index_for_all_labels():
    """Five identical labels vary together: the macro's resampled spread equals one label's."""
    rng = np.random.default_rng(5)
    y1 = (rng.random(200) < 0.3).astype(float)
    s1 = y1 + rng.normal(size=200)
    y5, s5 = np.repeat(y1[:, None], 5, axis=1), np.repeat(s1[:, None], 5, axis=1)
    w = image_weights(image_strata(y5, "multilabel"), 300, np.random.default_rng(0))
    one = metric_under_weights(y1, s1, "binary", "auroc", w)
    five = metric_under_weights(y5, s5, "multilabel", "auroc", w)
    np.testing.assert_allclose(five, one)
    assert five.std() > 0.01


def test_strata_keep_classes_and_rare_labels():
    y = np.array([[1, 0], [1, 1], [0, 0], [0, 1], [1, 0]], dtype=float)
    np.testing.assert_array_equal(image_strata(y, "multilabel"), [0, 1, -1, 1, 0])  # label 1 (2 positives) is rarer
    w = image_weights(np.array([0, 0, 0, 1, 1]), 50, np.random.default_rng(0))
    np.testing.assert_array_equal(w[:, :3].sum(1), 3)
    np.testing.assert_array_equal(w[:, 3:].sum(1), 2)


@pytest.mark.parametrize("effect, sd", [(0.05, 0.05), (0.05, 0.1), (0.02, 0.05), (0.1, 0.02)])
@pytest.mark.parametrize("alpha", [0.025, 0.05])
def test_seeds_needed_equals_statsmodels(effect, sd, alpha):
    from statsmodels.stats.power import TTestPower

    want = math.ceil(
        TTestPower().solve_power(effect_size=effect / sd, alpha=alpha, power=0.8, alternative="larger")
    )
    assert seeds_needed(effect, sd**2, 0.0, alpha=alpha) == max(2, want)


def test_seeds_needed_grows_with_image_term_and_can_be_unreachable():
    base = seeds_needed(0.05, 0.05**2, 0.0)
    assert seeds_needed(0.05, 0.05**2, 0.01**2) > base
    assert seeds_needed(0.05, 0.05**2, 0.03**2) is None  # the shared test-image term alone is too wide


def test_variance_parts_agree_with_delong_and_the_seeds():
    """The image part of the mean difference equals DeLong's variance of the seed-mean contrast; the
    two-way bootstrap's spread equals the normal cross-check (between-seed variance of the paired
    differences, as the bootstrap's seed draws see it, plus DeLong's term)."""
    rng = np.random.default_rng(6)
    y, a, b = simulate(TwoLevel(n_test=400), rng, 5)
    v = compare_runs(y, a, b, metrics=("auroc",), n_resamples=4000, random_state=1)["auroc"]
    dl = delong_mean(y, a, b)
    assert v.diff == pytest.approx(dl["diff"], abs=1e-12)
    assert math.sqrt(v.extra["image_variance_of_mean"]) == pytest.approx(dl["se"], rel=0.1)
    d = np.array(v.seed_diffs)
    r = len(d)
    normal = math.sqrt(d.var(ddof=1) * (r - 1) / r / r + dl["se"] ** 2)
    assert v.extra["bootstrap_sd"] == pytest.approx(normal, rel=0.15)
    assert v.seed_sd == pytest.approx(d.std(ddof=1))


def test_probability_of_improvement_is_the_share_of_seed_pairs():
    rng = np.random.default_rng(7)
    y, a, b = simulate(TwoLevel(mu_a=1.0, mu_b=0.95, tau_seed=0.4), rng, 4)
    v = compare_runs(y, a, b, metrics=("auroc",), n_resamples=200)["auroc"]
    ma = np.array([roc_auc_score(y, s) for s in a])
    mb = np.array([roc_auc_score(y, s) for s in b])
    assert v.p_improve == pytest.approx(np.mean((ma[:, None] > mb[None, :]) + 0.5 * (ma[:, None] == mb[None, :])))
    assert v.wins == int((ma > mb).sum())
    assert v.p_improve_ci[0] <= v.p_improve <= v.p_improve_ci[1]


def test_four_verdicts():
    rng = np.random.default_rng(8)
    y = np.r_[np.zeros(150), np.ones(100)]
    strong = [y * 1.5 + rng.normal(size=250) for _ in range(3)]
    weak = [y * 0.3 + rng.normal(size=250) for _ in range(3)]
    assert compare_runs(y, strong, weak, n_resamples=300)["auroc"].verdict == "a_better"
    assert compare_runs(y, weak, strong, n_resamples=300)["auroc"].verdict == "b_better"
    base = y * 1.0 + rng.normal(size=250)
    same = [base + 1e-4 * rng.normal(size=250) for _ in range(3)]
    twin = [base + 1e-4 * rng.normal(size=250) for _ in range(3)]
    assert compare_runs(y, same, twin, n_resamples=300)["auroc"].verdict == "equivalent"
    noisy = [y * 0.8 + rng.normal(size=250) for _ in range(2)]
    v = compare_runs(y, noisy, [y * 0.75 + rng.normal(size=250) for _ in range(2)], n_resamples=300)["auroc"]
    assert v.verdict == "inconclusive"
    assert "inconclusive" in format_verdict(v)
    one = compare_runs(y, strong[:1], weak[:1], n_resamples=300)["auroc"]
    assert one.verdict == "single_seed" and "one seed" in format_verdict(one)


def test_verdict_follows_its_interval():
    rng = np.random.default_rng(9)
    for k in range(30):
        y, a, b = simulate(TwoLevel(mu_a=1.0, mu_b=0.9 + 0.01 * k), rng, 3)
        v = compare_runs(y, a, b, metrics=("auroc",), n_resamples=200, random_state=k)["auroc"]
        above, below = v.ci95[0] > v.rope, v.ci95[1] < -v.rope
        inside = -v.rope < v.ci90[0] and v.ci90[1] < v.rope
        want = "a_better" if above else "b_better" if below else "equivalent" if inside else "inconclusive"
        assert v.verdict == want


def test_holm_adjusts_like_a_direct_computation():
    rng = np.random.default_rng(10)
    vs = []
    for mu_b in (0.7, 0.85, 0.95):
        y, a, b = simulate(TwoLevel(mu_b=mu_b, tau_seed=0.1, tau_run=0.1), rng, 3)
        vs.append(compare_runs(y, a, b, metrics=("auroc",), n_resamples=200)["auroc"])
    adjusted = holm(vs)
    p = np.array([min(v.p_a_better, v.p_b_better, v.p_equivalent) for v in vs])
    order = np.argsort(p)
    want = np.maximum.accumulate(np.minimum(1, (len(p) - np.arange(len(p))) * p[order]))
    np.testing.assert_allclose([adjusted[i].p_adjusted for i in order], want)
    assert all(v.primary for v in adjusted)
    for v in adjusted:
        assert (v.verdict == "inconclusive") == (v.p_adjusted >= 0.05)


def test_coverage_of_the_95_interval():
    """1,000 simulated studies (3 paired seeds, seed variance dominant): the 95% interval covers the
    known expected difference in 93-97% of them."""
    model = TwoLevel(tau_seed=0.5, tau_run=0.1, rho=0.2, n_test=100)
    rng, truth, hits = np.random.default_rng(11), model.truth(), 0
    for k in range(1000):
        y, a, b = simulate(model, rng, 3)
        v = compare_runs(y, a, b, metrics=("auroc",), n_resamples=100, random_state=k)["auroc"]
        hits += v.ci95[0] <= truth <= v.ci95[1]
    assert 0.93 <= hits / 1000 <= 0.97


def test_a_a_rarely_confident_where_delong_on_seed_means_often_is():
    """The same arm, disjoint seeds (unpaired): a winner is claimed in at most 5% of 1,000 pairs (about
    3% measured); DeLong on the seed means (the test images' variance only) claims one in most."""
    model = TwoLevel(mu_b=1.0)
    rng, confident, delong_confident = np.random.default_rng(12), 0, 0
    for k in range(1000):
        y, a, b = simulate(model, rng, 3, paired=False)
        v = compare_runs(y, a, b, paired=False, metrics=("auroc",), n_resamples=100, random_state=k)
        confident += v["auroc"].verdict in ("a_better", "b_better")
        delong_confident += delong_mean(y, a, b)["p"] < 0.05
    assert confident / 1000 <= 0.05
    assert delong_confident / 1000 > 0.3
