"""Verdicts about training procedures: is arm A better than arm B on this dataset, over training runs?

A comparison of two arms (e.g. a truncated network finetuned and full finetuning) estimates the
expected difference of their test metric over *training runs* (subset draw, initialisation, data
order; one run per seed) and over *test images* drawn from the same population. Both vary, so both
are resampled: a two-way bootstrap draws seeds and test images together (crossed, stratified by
class, Owen 2007). Every arm of a seed shares its training subset, so arms are paired by seed.

The interval is studentized, because a handful of seeds cannot carry a percentile interval (with 3
seeds the bootstrap's seed term is a mean of 3 values; its percentile interval uses normal quantiles
where 2 degrees of freedom need t). Its variance has two parts (for paired runs, with ``D_r`` the
difference of seed ``r`` and ``R`` seeds)::

    se^2 = s^2 / R  +  C_off

``s^2`` is the between-seed variance of ``D_r``; ``C_off`` the covariance of two seeds' ``D_r`` over
test-image resamples (what the seeds share because they are scored on the same images). ``s^2``
already holds each seed's own test-image noise, so adding the whole image variance of the mean (as
the naive "seed variance / R + DeLong" and the plain two-way bootstrap do) counts it twice. The
interval is ``mean +- t(df) se`` with Welch-Satterthwaite degrees of freedom. The two-way bootstrap's
percentile interval is reported beside it as a cross-check (``ci95_bootstrap``).

Four verdicts with a region of practical equivalence (``rope``, on the metric's scale): the 95% CI
wholly above ``+rope`` is "A better", wholly below ``-rope`` "B better" (a directional claim may go
either way, so each direction is tested at 2.5%: an A/A comparison then claims a winner in at most
5% of reruns), the 90% CI wholly inside the rope "equivalent" (TOST at 5%), anything else
"inconclusive", with the number of seeds a rerun would need to resolve a difference of the observed
size at 80% power.
One seed cannot estimate training variance: its verdict is ``single_seed`` (about these trained
models only, see :mod:`~tlmic_feats.metrics.paired`).

``P(A > B)`` is the probability that an independent run of A beats one of B: the share of seed
pairs ``(i, j)`` with ``A_i > B_j`` (ties count half), as in Bouthillier et al. 2021 and rliable's
probability of improvement; its CI from the same two-way bootstrap.

Metrics are recomputed on each resample from integer image weights (a bootstrap resample is a
multiplicity per image) with one sort per score vector, so 2,000 resamples of many runs cost
milliseconds per run; with all weights 1 they equal scikit-learn's ``roc_auc_score`` and
``average_precision_score``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .scores import image_strata

VERDICTS = ("a_better", "b_better", "equivalent", "inconclusive", "single_seed")
DEFAULT_ROPE = 0.01
ALPHA = 0.05  # level of each claim: "A better" or "B better" (two-sided), "equivalent" (TOST)
_CHUNK = 256  # resamples per block: bounds memory at (chunk x images) per score vector


@dataclass(frozen=True)
class Verdict:
    """Arm A minus arm B on one metric, over training runs and test images.

    ``ci95`` decides "A better" / "B better", ``ci90`` "equivalent"; both are ``diff +- t(df) se``.
    ``p_a_better`` / ``p_b_better`` test ``diff <= rope`` / ``diff >= -rope`` (one-sided p doubled: a
    directional claim could have gone either way), ``p_equivalent`` is TOST's; ``p_adjusted`` is the
    verdict's p-value after Holm's correction when the contrast is primary (else the unadjusted one).
    ``wins`` of ``len(seed_diffs)`` paired seeds had A above B.
    ``seeds_needed``: seeds at which a rerun would resolve a true difference the size of ``diff`` at
    80% power (None when more seeds cannot, because the shared test-image term alone is too wide).
    """

    metric: str
    a: str
    b: str
    mean_a: float
    mean_b: float
    diff: float
    se: float
    df: float
    ci90: tuple[float, float]
    ci95: tuple[float, float]
    ci95_bootstrap: tuple[float, float]
    seed_sd: float
    image_se: float
    p_improve: float
    p_improve_ci: tuple[float, float]
    wins: int
    seeds: tuple[int, ...]
    seed_diffs: tuple[float, ...]
    paired: bool
    rope: float
    p_a_better: float
    p_b_better: float
    p_equivalent: float
    p_adjusted: float
    verdict: str
    seeds_needed: int | None
    primary: bool = False
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


# --- metrics from image weights ----------------------------------------------------------------


def _groups(s: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-s if descending else s, kind="mergesort")
    ss = s[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    return order, starts


def weighted_auroc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUROC of scores ``s`` on binary ``y`` under each row of image weights ``w`` (B, n): the
    probability that a positive outranks a negative, ties one half; integer weights give the AUROC
    of the resample that repeats image ``i`` ``w[i]`` times. NaN where a class has no weight."""
    order, starts = _groups(s, descending=False)
    yo = y[order]
    pos = np.add.reduceat(w[:, order] * yo, starts, axis=1)
    neg = np.add.reduceat(w[:, order] * (1 - yo), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(1)
    den = pos.sum(1) * neg.sum(1)
    return np.divide(num, den, out=np.full(len(w), np.nan), where=den > 0)


def weighted_average_precision(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average precision (scikit-learn's step-wise definition, ties as one threshold) under each row
    of image weights ``w`` (B, n). NaN where there is no positive weight."""
    order, starts = _groups(s, descending=True)
    yo = y[order]
    pos = np.add.reduceat(w[:, order] * yo, starts, axis=1)
    neg = np.add.reduceat(w[:, order] * (1 - yo), starts, axis=1)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    total = pos.sum(1)
    return np.divide((pos * precision).sum(1), total, out=np.full(len(w), np.nan), where=total > 0)


_METRIC_FUNCTIONS = {"auroc": weighted_auroc, "auprc": weighted_average_precision}


def _columns(y: np.ndarray, label_kind: str) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(mask of the rows a label is defined on, its binary labels over all rows, its score column) for
    every label (one vs rest per class for multi-class) that holds both classes."""
    y2 = np.asarray(y, dtype=float).reshape(len(y), -1)
    if label_kind == "multiclass":
        yc = y2[:, 0].astype(int)
        return [
            (np.ones(len(yc), bool), (yc == c).astype(float), int(c))
            for c in np.unique(yc)
            if 0 < (yc == c).sum() < len(yc)
        ]
    out = []
    for j in range(y2.shape[1]):
        mask = ~np.isnan(y2[:, j])
        if len(np.unique(y2[mask, j])) == 2:
            out.append((mask, np.nan_to_num(y2[:, j]), j))
    return out


def image_weights(strata_of: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(B, n) bootstrap multiplicities: every stratum resampled with replacement within itself."""
    w = np.zeros((n_resamples, len(strata_of)))
    for k in np.unique(strata_of):
        members = np.flatnonzero(strata_of == k)
        w[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=n_resamples)
    return w


def metric_under_weights(
    y: np.ndarray, scores: np.ndarray, label_kind: str, metric: str, w: np.ndarray
) -> np.ndarray:
    """The macro ``metric`` (auroc or auprc) of one run's ``scores`` under each row of image weights
    ``w`` (B, n); a row of ones gives the plain metric. Scores as in
    :func:`~tlmic_feats.metrics.scores.evaluate`."""
    fn = _METRIC_FUNCTIONS[metric]
    s2 = np.asarray(scores, dtype=float).reshape(len(y), -1)
    if label_kind == "binary":
        s2 = s2[:, -1:]
    cols = _columns(y, label_kind)
    if not cols:
        return np.full(len(w), np.nan)
    out = np.zeros(len(w))
    for start in range(0, len(w), _CHUNK):
        block = w[start : start + _CHUNK]
        out[start : start + _CHUNK] = np.mean(
            [fn(yj[mask], s2[mask, col], block[:, mask]) for mask, yj, col in cols], axis=0
        )
    return out


# --- the comparison ---------------------------------------------------------------------------


def _t_interval(diff: float, se: float, df: float, level: float) -> tuple[float, float]:
    from scipy.stats import t

    if not np.isfinite(se):
        return (float("nan"), float("nan"))
    q = float(t.ppf(0.5 + level / 2, df)) if se > 0 else 0.0
    return (diff - q * se, diff + q * se)


def _one_sided(z: float, df: float) -> float:
    """P(T_df >= z); z = +-inf when se is 0."""
    from scipy.stats import t

    return float(t.sf(z, df)) if np.isfinite(z) else float(z < 0)


def seeds_needed(
    effect: float,
    seed_variance: float,
    image_covariance: float = 0.0,
    *,
    rope: float = 0.0,
    power: float = 0.8,
    alpha: float | None = None,
    max_seeds: int = 10_000,
) -> int | None:
    """Paired seeds at which the verdict's test has ``power``: for ``|effect| > rope`` the one-sided
    level-``alpha`` test of ``diff > rope`` (default ``ALPHA / 2``: the 95% CI's lower end above the
    rope), for ``|effect| < rope`` the nearer margin of TOST (default ``ALPHA``), when the true
    difference is ``effect``: the smallest R with P(noncentral t(df, (|effect| - rope) / se_R) > t
    quantile) >= power, ``se_R^2 = seed_variance / R + image_covariance``, df by Welch-Satterthwaite
    (R - 1 without the image term). None when no number
    of seeds reaches the power (the shared test-image term alone is too wide) or ``effect == rope``.
    With ``image_covariance = 0`` this is the paired t-test's sample size
    (``statsmodels.stats.power.TTestPower().solve_power(..., alpha=alpha, alternative="larger")``)."""
    from scipy.stats import nct, t

    margin = abs(abs(effect) - rope)
    if margin == 0 or not seed_variance >= 0:
        return None
    image_covariance = max(image_covariance, 0.0)
    if alpha is None:
        alpha = ALPHA / 2 if abs(effect) > rope else ALPHA

    def reaches(r: int) -> bool:
        seed_term = seed_variance / r
        se2 = seed_term + image_covariance
        if se2 <= 0:
            return True
        df = min(se2**2 / (seed_term**2 / (r - 1)), 1e6) if seed_term > 0 else 1e6
        return bool(nct.sf(t.ppf(1 - alpha, df), df, margin / np.sqrt(se2)) >= power)

    # power grows with R: double until it is reached, then bisect
    hi = 2
    while not reaches(hi):
        if hi >= max_seeds:
            return None
        hi = min(2 * hi, max_seeds)
    lo = max(2, hi // 2)
    if reaches(lo):
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reaches(mid) else (mid, hi)
    return hi


def compare_runs(
    y: np.ndarray,
    runs_a: list[np.ndarray],
    runs_b: list[np.ndarray],
    label_kind: str = "binary",
    *,
    names: tuple[str, str] = ("A", "B"),
    seeds: list[int] | None = None,
    paired: bool = True,
    rope: float = DEFAULT_ROPE,
    metrics: tuple[str, ...] = ("auroc", "auprc"),
    n_resamples: int = 2000,
    random_state: int = 0,
) -> dict[str, Verdict]:
    """Arm A minus arm B over training runs and test images: ``{metric: Verdict}``.

    Parameters
    ----------
    y : test labels, as in :func:`~tlmic_feats.metrics.scores.evaluate`.
    runs_a, runs_b : one score array per training run (seed), rows aligned with ``y``.
    seeds : the seed of each run (for the record); paired runs share a seed and a training subset.
    paired : pair ``runs_a[r]`` with ``runs_b[r]`` (same seed); False for independent seed sets
        (e.g. one arm's seeds 0-2 against 3-5), which then may differ in number.
    rope : region of practical equivalence, on the metric's scale.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.r_[np.zeros(60), np.ones(40)]
    >>> a = [y * 1.5 + rng.normal(size=100) for _ in range(3)]
    >>> b = [y * 0.2 + rng.normal(size=100) for _ in range(3)]
    >>> compare_runs(y, a, b, n_resamples=500)["auroc"].verdict
    'a_better'
    """
    y = np.asarray(y, dtype=float)
    ra, rb = len(runs_a), len(runs_b)
    if paired and ra != rb:
        from ..runtime.errors import UsageError

        raise UsageError(f"paired runs need as many runs of A as of B; got {ra} and {rb}")
    rng = np.random.default_rng(random_state)
    w = np.vstack([np.ones((1, len(y))), image_weights(image_strata(y, label_kind), n_resamples, rng)])
    seed_draws = rng.integers(0, ra, size=(n_resamples, ra)), rng.integers(0, rb, size=(n_resamples, rb))
    out = {}
    for metric in metrics:
        ma = np.array([metric_under_weights(y, s, label_kind, metric, w) for s in runs_a])  # (R_a, 1 + B)
        mb = np.array([metric_under_weights(y, s, label_kind, metric, w) for s in runs_b])
        out[metric] = _verdict(metric, names, ma, mb, seeds, paired, rope, seed_draws)
    return out


def _verdict(metric, names, ma, mb, seeds, paired, rope, seed_draws) -> Verdict:
    point_a, point_b = ma[:, 0], mb[:, 0]
    boot_a, boot_b = ma[:, 1:], mb[:, 1:]
    ok = np.isfinite(boot_a).all(0) & np.isfinite(boot_b).all(0)
    boot_a, boot_b = boot_a[:, ok], boot_b[:, ok]
    draw_a, draw_b = seed_draws[0][ok], seed_draws[1][ok]
    ra, rb = len(point_a), len(point_b)
    diff = float(point_a.mean() - point_b.mean())
    nan = float("nan")
    if paired:
        d_point, d_boot = point_a - point_b, boot_a - boot_b
        wins = int((d_point > 0).sum())
        seed_var = float(d_point.var(ddof=1)) if ra > 1 else nan
        cov = np.atleast_2d(np.cov(d_boot)) if boot_a.shape[1] > 1 else np.full((ra, ra), nan)
        off = cov[~np.eye(ra, dtype=bool)].mean() if ra > 1 else nan
        seed_term = seed_var / ra
        se2 = seed_term + max(off, 0.0)
        parts = [(seed_term, ra - 1)]
        boot_diff = np.take_along_axis(d_boot.T, draw_a, axis=1).mean(1)
        seed_diffs = tuple(float(v) for v in d_point)
        image_var = max(off, 0.0)
        image_of_mean = float(cov.mean())
    else:
        wins = int(sum((x > z) for x in point_a for z in point_b))
        var_a = float(point_a.var(ddof=1)) if ra > 1 else nan
        var_b = float(point_b.var(ddof=1)) if rb > 1 else nan
        cov = np.atleast_2d(np.cov(np.vstack([boot_a, boot_b])))
        wts = np.r_[np.full(ra, 1 / ra), np.full(rb, -1 / rb)]
        image_of_mean = float(wts @ cov @ wts)

        def own(block: np.ndarray, r: int) -> float:  # each seed's own image noise, already in its variance
            if r < 2:
                return 0.0
            return float(np.diag(block).mean() - block[~np.eye(r, dtype=bool)].mean())

        image_var = image_of_mean - own(cov[:ra, :ra], ra) / ra - own(cov[ra:, ra:], rb) / rb
        se2 = var_a / ra + var_b / rb + max(image_var, 0.0)
        parts = [(var_a / ra, ra - 1), (var_b / rb, rb - 1)]
        ga = np.take_along_axis(boot_a.T, draw_a, axis=1).mean(1)
        gb = np.take_along_axis(boot_b.T, draw_b, axis=1).mean(1)
        boot_diff = ga - gb
        seed_diffs = ()
        seed_var = var_a + var_b
        image_var = max(image_var, 0.0)
    single = ra < 2 or rb < 2
    se = float(np.sqrt(se2)) if not single else nan
    denom = sum(p**2 / k for p, k in parts if k > 0 and p > 0)
    df = float(se2**2 / denom) if not single and denom > 0 else (np.inf if not single else nan)
    ci90, ci95 = _t_interval(diff, se, df, 0.90), _t_interval(diff, se, df, 0.95)
    if single:
        p_a = p_b = p_eq = nan
    else:
        z = (lambda x: x / se) if se > 0 else (lambda x: np.inf * np.sign(x) if x != 0 else -np.inf)
        p_a = min(1.0, 2 * _one_sided(z(diff - rope), df))
        p_b = min(1.0, 2 * _one_sided(z(-diff - rope), df))
        p_eq = max(_one_sided(z(diff + rope), df), _one_sided(z(rope - diff), df))
    # P(A > B) on the point runs and on each two-way resample (the drawn seeds' pairs)
    p_improve = _share_above(point_a[:, None], point_b[None, :])
    if paired:
        pa, pb = np.take_along_axis(boot_a.T, draw_a, axis=1), np.take_along_axis(boot_b.T, draw_a, axis=1)
    else:
        pa, pb = np.take_along_axis(boot_a.T, draw_a, axis=1), np.take_along_axis(boot_b.T, draw_b, axis=1)
    boot_improve = _share_above(pa[:, :, None], pb[:, None, :], axis=(1, 2))
    v = Verdict(
        metric=metric,
        a=names[0],
        b=names[1],
        mean_a=float(point_a.mean()),
        mean_b=float(point_b.mean()),
        diff=diff,
        se=se,
        df=df,
        ci90=ci90,
        ci95=ci95,
        ci95_bootstrap=_percentile_interval(boot_diff),
        seed_sd=float(np.sqrt(seed_var)) if np.isfinite(seed_var) else nan,
        image_se=float(np.sqrt(image_var)) if np.isfinite(image_var) else nan,
        p_improve=float(p_improve),
        p_improve_ci=_percentile_interval(boot_improve) if not single else (nan, nan),
        wins=wins,
        seeds=tuple(int(s) for s in seeds) if seeds is not None else tuple(range(ra)),
        seed_diffs=seed_diffs,
        paired=paired,
        rope=rope,
        p_a_better=p_a,
        p_b_better=p_b,
        p_equivalent=p_eq,
        p_adjusted=nan,
        verdict="single_seed",
        seeds_needed=None,
        extra={
            "seed_variance": seed_var,
            "image_covariance": image_var,
            "image_variance_of_mean": image_of_mean,
            "bootstrap_sd": float(np.std(boot_diff)) if len(boot_diff) else nan,
        },
    )
    return decide(v, min(p_a, p_b, p_eq) if not single else nan)


def _share_above(a: np.ndarray, b: np.ndarray, axis=None):
    return np.mean((a > b) + 0.5 * (a == b), axis=axis)


def _percentile_interval(v: np.ndarray) -> tuple[float, float]:
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    return (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if len(v) else (float("nan"),) * 2


def decide(v: Verdict, p_adjusted: float) -> Verdict:
    """The verdict of ``v`` when its smallest test p-value, after any correction, is ``p_adjusted``:
    a claim stands when its own p-value is the smallest and ``p_adjusted < ALPHA``."""
    from dataclasses import replace

    if not np.isfinite(p_adjusted) and not np.isfinite(v.p_a_better):
        return replace(v, verdict="single_seed", p_adjusted=float("nan"))
    tests = {"a_better": v.p_a_better, "b_better": v.p_b_better, "equivalent": v.p_equivalent}
    claim = min(tests, key=tests.get)
    verdict = claim if p_adjusted < ALPHA else "inconclusive"
    needed = None
    if verdict == "inconclusive":
        needed = seeds_needed(
            v.diff, v.extra["seed_variance"], v.extra["image_covariance"], rope=v.rope
        ) if v.paired else None
    return replace(v, verdict=verdict, p_adjusted=float(p_adjusted), seeds_needed=needed)


def holm(verdicts: list[Verdict]) -> list[Verdict]:
    """Holm's step-down correction over a family of primary contrasts (e.g. one per fraction): each
    verdict's deciding p-value is adjusted and the verdict re-decided; all are marked primary."""
    from dataclasses import replace

    ps = [min(v.p_a_better, v.p_b_better, v.p_equivalent) for v in verdicts]
    finite = [i for i, p in enumerate(ps) if np.isfinite(p)]
    m = len(finite)
    adjusted = {i: float("nan") for i in range(len(verdicts))}
    running = 0.0
    for rank, i in enumerate(sorted(finite, key=lambda i: ps[i])):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return [replace(decide(v, adjusted[i]), primary=True) for i, v in enumerate(verdicts)]


_SAY = {
    "a_better": "{a} better",
    "b_better": "{b} better",
    "equivalent": "equivalent",
    "inconclusive": "inconclusive",
    "single_seed": "no verdict (one seed: training variance unknown)",
}


def format_verdict(v: Verdict) -> str:
    """One line: ``AUROC: A 0.905, B 0.838; A - B +0.067 [90% CI +0.021, +0.113; 95% ...], P(A > B) 0.89
    [0.56, 1.00], A above B in 3 of 3 seeds; verdict: A better (rope +-0.01)``."""
    head = f"{v.metric.upper()}: {v.a} {v.mean_a:.4f}, {v.b} {v.mean_b:.4f}; {v.a} - {v.b} {v.diff:+.4f}"
    if v.verdict == "single_seed":
        return f"{head}; {_SAY['single_seed']}"
    n = len(v.seed_diffs) if v.paired else len(v.seeds)
    seeds = (
        f"{v.a} above {v.b} in {v.wins} of {n} seeds"
        if v.paired
        else f"{v.a} above {v.b} in {v.wins} of {n * n} run pairs"
    )
    say = _SAY[v.verdict].format(a=v.a, b=v.b)
    if v.verdict == "inconclusive" and v.seeds_needed:
        say += f" (a rerun with {v.seeds_needed} seeds would resolve a difference this size at 80% power)"
    elif v.verdict == "inconclusive" and v.paired and abs(v.diff) != v.rope:
        say += " (more seeds alone would not resolve it: more test images needed)"
    primary = f"; Holm-adjusted p {v.p_adjusted:.3g}" if v.primary else ""
    return (
        f"{head} [90% CI {v.ci90[0]:+.4f}, {v.ci90[1]:+.4f}; 95% CI {v.ci95[0]:+.4f}, {v.ci95[1]:+.4f}], "
        f"P({v.a} > {v.b}) {v.p_improve:.2f} [{v.p_improve_ci[0]:.2f}, {v.p_improve_ci[1]:.2f}], {seeds}; "
        f"verdict: {say} (rope +-{v.rope:g}{primary})"
    )


VERDICT_COLUMNS = (
    "fraction",
    "metric",
    "a",
    "b",
    "diff",
    "ci90_lo",
    "ci90_hi",
    "ci95_lo",
    "ci95_hi",
    "p_improve",
    "seeds",
    "verdict",
    "primary",
    "wins",
    "seed_sd",
    "image_se",
    "p_adjusted",
    "seeds_needed",
    "rope",
    "precision",
)


def verdict_row(v: Verdict, **context) -> dict:
    """One row of ``verdicts.csv`` (:data:`VERDICT_COLUMNS`); ``context`` adds fraction, precision."""
    row = {
        "metric": v.metric,
        "a": v.a,
        "b": v.b,
        "diff": v.diff,
        "ci90_lo": v.ci90[0],
        "ci90_hi": v.ci90[1],
        "ci95_lo": v.ci95[0],
        "ci95_hi": v.ci95[1],
        "p_improve": v.p_improve,
        "seeds": " ".join(str(s) for s in v.seeds),
        "verdict": v.verdict,
        "primary": str(v.primary).lower(),
        "wins": v.wins,
        "seed_sd": v.seed_sd,
        "image_se": v.image_se,
        "p_adjusted": v.p_adjusted,
        "seeds_needed": "" if v.seeds_needed is None else v.seeds_needed,
        "rope": v.rope,
    }
    row.update(context)
    return {k: row.get(k, "") for k in VERDICT_COLUMNS}


def arm_interval(
    y: np.ndarray,
    runs: list[np.ndarray],
    label_kind: str = "binary",
    *,
    metrics: tuple[str, ...] = ("auroc", "auprc"),
    level: float = 0.95,
    n_resamples: int = 1000,
    random_state: int = 0,
) -> dict[str, tuple[float, float]]:
    """One arm's expected test metric over training runs and test images: ``{metric: (lo, hi)}``, the
    ``mean +- t(R - 1) se`` interval with ``se^2 = s^2 / R + C_off`` (between-run variance over R plus
    the image covariance the runs share; see the module's docstring). NaN for one run."""
    y = np.asarray(y, dtype=float)
    rng = np.random.default_rng(random_state)
    w = image_weights(image_strata(y, label_kind), n_resamples, rng)
    out = {}
    for metric in metrics:
        point = np.array([metric_under_weights(y, s, label_kind, metric, np.ones((1, len(y))))[0] for s in runs])
        r = len(point)
        if r < 2:
            out[metric] = (float("nan"), float("nan"))
            continue
        boot = np.array([metric_under_weights(y, s, label_kind, metric, w) for s in runs])
        boot = boot[:, np.isfinite(boot).all(0)]
        cov = np.cov(boot)
        seed_term = point.var(ddof=1) / r
        se2 = seed_term + max(float(cov[~np.eye(r, dtype=bool)].mean()), 0.0)
        df = se2**2 / (seed_term**2 / (r - 1)) if seed_term > 0 else np.inf
        out[metric] = _t_interval(float(point.mean()), float(np.sqrt(se2)), df, level)
    return out


def compare_prediction_groups(
    paths_a: list,
    paths_b: list,
    *,
    split: str = "test",
    paired: bool = True,
    rope: float = DEFAULT_ROPE,
    n_resamples: int = 2000,
    random_state: int = 0,
    names: tuple[str, str] = ("A", "B"),
) -> dict:
    """:func:`compare_runs` of two groups of predictions files (one file per training run; paired by
    order: ``paths_a[r]`` and ``paths_b[r]`` are the same seed) on ``split``: every file must score the
    same images (matched by id) with the same labels, or a
    :class:`~tlmic_feats.runtime.errors.DataFormatError` says what differs. Returns ``{"kind", "split",
    "n", "verdicts": {metric: Verdict}}``."""
    from pathlib import Path

    from ..runtime.errors import DataFormatError, UsageError
    from .predictions import predictions_kind, read_predictions

    paths = [*paths_a, *paths_b]
    if not paths_a or not paths_b:
        raise UsageError("compare needs at least one predictions file on each side (A ... --vs B ...)")
    if paired and len(paths_a) != len(paths_b):
        raise UsageError(
            f"paired runs need as many files of A as of B (got {len(paths_a)} and {len(paths_b)}); "
            "pass --unpaired for independent seed sets"
        )
    kinds = {predictions_kind(p) for p in paths}
    if len(kinds) != 1:
        raise DataFormatError(f"the files hold different kinds of labels ({', '.join(sorted(kinds))})")
    kind = kinds.pop()
    y = ids = None
    scores = []
    for path in paths:
        preds = read_predictions(path, kind)
        if split not in preds:
            raise DataFormatError(f"{path} has no '{split}' rows; splits: {', '.join(preds) or '(none)'}")
        pid, py, ps = preds[split]
        if len(set(pid)) != len(pid):
            raise DataFormatError(f"{path}: {split} image ids repeat")
        if ids is None:
            ids, y = pid, py
            scores.append(ps)
            continue
        if set(pid) != set(ids):
            raise DataFormatError(
                f"{Path(path).name} scores different {split} images than {Path(paths[0]).name} "
                f"({len(set(pid) ^ set(ids))} differ); a paired comparison needs the same images"
            )
        take = np.array([{i: k for k, i in enumerate(pid)}[i] for i in ids])
        if not np.array_equal(np.nan_to_num(py[take], nan=-1), np.nan_to_num(y, nan=-1)):
            raise DataFormatError(f"{path} gives the {split} images other labels than {paths[0]}")
        scores.append(ps[take])
    verdicts = compare_runs(
        y,
        scores[: len(paths_a)],
        scores[len(paths_a) :],
        kind,
        names=names,
        paired=paired,
        rope=rope,
        n_resamples=n_resamples,
        random_state=random_state,
    )
    return {"kind": kind, "split": split, "n": len(ids), "verdicts": verdicts}
