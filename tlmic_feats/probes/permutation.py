"""The shuffle control's permutation null: how each draw is seeded, the p-values it gives (per layer,
and corrected for picking the best layer), and the verdict on leakage.

``tlmic probe --control shuffle --permutations N`` refits probes on permuted training and
validation labels (the labels a probe learns from and is tuned on: C, early stopping, thresholds)
and scores them against the *true* test labels. Every layer gets the same ``N`` draws per model x
fraction, and draw ``k`` applies one permutation to every layer: its seed sequence holds the model,
the fraction, the seed of the training subset and the draw's index, not the layer. Draw ``k`` uses
the training subset of seed ``k mod seeds``.

What the summary reports, per model x fraction x layer: the real probes' test AUROC (mean over
seeds), the null's mean and 95% range, and two permutation p-values, each draw compared with the
real probe of its own training subset and each of the form ``(1 + k) / (1 + B)``:

* ``p``: that layer alone, ``(1 + #{draw >= real}) / (1 + B)``. The summary picks its layer (highest
  mean validation AUPRC of the real probes) among many, so the smallest per-layer p over layers is
  not a p-value of "the best layer beats chance";
* ``p_corrected``: Westfall & Young's single-step max-statistic adjustment over the layers. Per
  draw, the highest test AUROC over every layer (the same permutation on each) is one draw of the
  null of the best of the layers; ``(1 + #{draw's max over layers >= real}) / (1 + B)``. It is valid
  whichever layer is picked and however the layers correlate, since the draws keep their
  dependence. Reported for the picked layer in the verdict (``p_corrected``).

At its floor ``1 / (1 + B)`` (no draw reached the real probe) a p-value prints as "p ≤ floor"
(:func:`format_p`). ``B`` = 99 by default: a floor of 0.01.

Leakage. With a strong signal the null is wide: a random permutation agrees with the true labels a
little more or less than by chance, and a probe follows that small agreement to test AUROCs far
from 0.5 in either direction. So the verdict judges the null against its own spread, not against
0.5 with a CI over correlated cells: per model x fraction, each draw's mean test AUROC over the
layers (one value per draw: its layers share the permutation), with a one-sided upper confidence
bound from the draws' standard error (Bonferroni over the verdicts of the table), is "at chance"
unless it lies above 0.5. Only above: a random permutation's labels correlate with the true ones by
-1/(n-1) on average, so on a strong signal the null's mean sits slightly *below* 0.5 (measured:
-0.01 to -0.02 with 300 training rows), and a leak pushes it up.

What it can and cannot see: a leak through which true labels reach the fit (labels re-attached to
rows after the shuffle, test images whose labels enter training or tuning) lifts the null above 0.5
and is flagged. A feature that itself carries the label (a burned-in marker, an id or row order that
follows the class) is not such a leak for this control: from permuted labels a probe learns it with a
random sign, so the null stays at 0.5 with a wide spread (measured; see tests/test_probes.py); such
shortcuts show as real test AUROC that is too good, not in the null.
"""

from __future__ import annotations

import zlib
from collections import defaultdict

import numpy as np

CHANCE = 0.5
# Draws per layer by default: p-values down to 1 / (1 + 99) = 0.01. A draw refits one probe on
# stored features, on every layer (the corrected p needs each draw on every layer).
DEFAULT_PERMUTATIONS = 99


def permutation_rng(model: str, fraction: float, seed: int, index: int) -> np.random.Generator:
    """The generator of draw ``index``: the same on every layer (the max-statistic over layers needs
    one permutation per draw), its own for every model, fraction, training subset and draw."""
    words = [0xC1, zlib.crc32(model.encode()), round(fraction * 1_000_000), seed, index]
    return np.random.default_rng(words)


def permute(y_train: np.ndarray, y_val: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation labels, each permuted among its own rows (test labels stay true)."""
    return y_train[rng.permutation(len(y_train))], y_val[rng.permutation(len(y_val))]


def monte_carlo_p(reached: int, draws: int) -> float:
    """``(1 + reached) / (1 + draws)``: a permutation p-value from ``draws`` random permutations of
    which ``reached`` scored at least the real statistic (valid as it is; NaN without draws)."""
    return (1 + reached) / (1 + draws) if draws else float("nan")


def max_statistic_p(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Westfall-Young single-step max-statistic adjusted p-values, one per column (layer).

    ``null``: ``(B, L)``, row ``b`` the statistic of permutation ``b`` on each of ``L`` layers (the
    same permutation on every layer). ``observed``: ``(L,)``, or ``(B, L)`` when each draw has its
    own real statistic to beat (here: the real probe of the draw's training subset); NaN where none
    (that draw is not counted for that layer). Returns ``(L,)``:
    ``(1 + #{b: max_l null[b, l] >= observed[b, j]}) / (1 + #{b counted})``."""
    null = np.asarray(null, dtype=float)
    if null.ndim != 2:
        raise ValueError(f"null must be (draws, layers); got shape {null.shape}")
    observed = np.broadcast_to(np.asarray(observed, dtype=float), null.shape)
    best = null.max(axis=1, keepdims=True)  # (B, 1): the max over layers of each draw
    counted = np.isfinite(observed)
    reached = ((best >= observed) & counted).sum(axis=0)
    n = counted.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (1 + reached) / (1 + n), np.nan)


def format_p(value: float, floor: float, *, bare: bool = False) -> str:
    """A permutation p-value as the summary prints it: ``p = 0.030``, or ``p ≤ 0.010`` at its floor
    ``1 / (1 + B)`` (no draw reached the real probe; the p-value is valid, the truth may be smaller);
    ``bare``: without the ``p`` (``0.030``, ``≤ 0.010``), for a table's p column."""
    from ..metrics.paired import format_p as format_result_p

    text = format_result_p({"p": value, "p_floor": floor}, at_floor="<=")
    return text.removeprefix("p = ").removeprefix("p ") if bare else text


def _cells(rows: list[dict]):
    """``real[(model, fraction, layer, seed)]`` test AUROC of the real probes; ``draws[(model,
    fraction)][(permutation, seed)][layer]`` test AUROC of each draw (finite only); layer depths."""
    real: dict[tuple, float] = {}
    draws: dict[tuple, dict[tuple, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    depth: dict[str, int] = {}
    for r in rows:
        depth[r["layer"]] = r["depth"]
        if r["control"] == "none":
            real[(r["model"], r["fraction"], r["layer"], r["seed"])] = r["auroc"]
        elif np.isfinite(r["auroc"]):
            draws[(r["model"], r["fraction"])][(r.get("permutation"), r["seed"])][r["layer"]] = r["auroc"]
    return real, draws, depth


def _corrected(real: dict, by_draw: dict[tuple, dict[str, float]], key: tuple, layers: list[str]) -> tuple[dict, int]:
    """``({layer: Westfall-Young p}, draws)`` over the draws scored on every one of ``layers``."""
    complete = [(k, scores) for k, scores in by_draw.items() if len(scores) == len(layers)]
    if not complete:
        return dict.fromkeys(layers, float("nan")), 0
    null = np.array([[scores[a] for a in layers] for _, scores in complete])
    observed = np.array([[real.get((*key, a, seed), np.nan) for a in layers] for (_, seed), _ in complete])
    return dict(zip(layers, max_statistic_p(observed, null).tolist(), strict=True)), len(complete)


def null_by_layer(rows: list[dict], picked: dict[tuple[str, float], str]) -> list[dict]:
    """One entry per model x fraction x layer that has draws: ``real`` (mean test AUROC of the real
    probes), ``draws``, ``mean``, ``lo`` / ``hi`` (2.5th and 97.5th percentiles of the draws), ``p``
    (this layer's permutation p-value, each draw against the real probe of its own seed),
    ``p_corrected`` (Westfall-Young over the layers, from the ``corrected_draws`` draws scored on
    every layer), ``p_floor`` (``1 / (1 + draws compared)``, the smallest ``p`` possible),
    ``p_corrected_floor`` (likewise), ``picked`` (the layer is ``picked[(model, fraction)]``, the
    summary's choice)."""
    real, draws, depth = _cells(rows)
    out = []
    for key in sorted(draws):
        by_draw = draws[key]
        layers = sorted({a for scores in by_draw.values() for a in scores}, key=depth.get)
        corrected, n_complete = _corrected(real, by_draw, key, layers)
        for layer in layers:
            ds = [(seed, scores[layer]) for (_, seed), scores in by_draw.items() if layer in scores]
            values = np.array([v for _, v in ds])
            reals = [real.get((*key, layer, s), np.nan) for s, _ in ds]
            compared = sum(np.isfinite(r) for r in reals)
            reached = sum(v >= r for (_, v), r in zip(ds, reals, strict=True) if np.isfinite(r))
            seed_means = [v for (m, f, la, _), v in real.items() if (m, f, la) == (*key, layer)]
            out.append(
                {
                    "model": key[0],
                    "fraction": key[1],
                    "layer": layer,
                    "real": float(np.nanmean(seed_means)) if np.isfinite(seed_means).any() else float("nan"),
                    "draws": len(values),
                    "mean": float(values.mean()),
                    "lo": float(np.percentile(values, 2.5)),
                    "hi": float(np.percentile(values, 97.5)),
                    "p": monte_carlo_p(reached, compared),
                    "p_floor": monte_carlo_p(0, compared),
                    "p_corrected": corrected[layer],
                    "p_corrected_floor": monte_carlo_p(0, n_complete),
                    "corrected_draws": n_complete,
                    "picked": picked.get(key) == layer,
                }
            )
    return out


def verdicts(
    rows: list[dict], picked: dict[tuple[str, float], str], family_level: float = 0.95
) -> dict[tuple[str, float], dict]:
    """Per model x fraction, the leak verdict: ``mean`` of the draws' test AUROC (each draw's mean
    over the layers first: its layers share one permutation), ``draws``, ``layers`` (stored arrays;
    an alias cut point shares its array's draws and counts once), ``se`` (the draws' standard error),
    ``lower`` (one-sided lower confidence bound of the mean, at ``family_level`` shared over the
    verdicts by Bonferroni), ``level`` (the per-verdict level) and ``at_chance`` (``lower <= 0.5``:
    the null's mean is not above chance; None with fewer than 2 draws).

    And "the picked layer beats chance": ``layer`` (``picked[(model, fraction)]``: the summary's
    choice, :func:`~tlmic_feats.probes.report.picked_layers`), ``p`` (that layer's own
    permutation p-value), ``p_corrected`` (Westfall-Young over the layers, which accounts for
    picking it among them), their floors ``p_floor`` / ``p_corrected_floor`` and
    ``corrected_draws`` (the draws scored on every layer)."""
    from scipy.stats import t

    by_layer = {(e["model"], e["fraction"], e["layer"]): e for e in null_by_layer(rows, picked)}
    pooled: dict[tuple[str, float], dict[tuple, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["control"] != "none" and np.isfinite(r["auroc"]):
            # one value per stored array: an alias cut point (ResNet's 2 is 2.4) repeats its array's rows
            pooled[(r["model"], r["fraction"])][(r["seed"], r.get("permutation"))][r["array"]] = r["auroc"]
    level = 1 - (1 - family_level) / max(len(pooled), 1)
    out = {}
    for key, by_draw in sorted(pooled.items()):
        v = np.array([np.mean(list(arrays.values())) for arrays in by_draw.values()])
        se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
        lower = v.mean() - t.ppf(level, len(v) - 1) * se if se > 0 else v.mean()
        e = by_layer.get((*key, picked.get(key)), {})
        nan = float("nan")
        out[key] = {
            "mean": float(v.mean()),
            "draws": len(v),
            "layers": len({array for arrays in by_draw.values() for array in arrays}),
            "se": float(se),
            "lower": float(lower),
            "level": level,
            "at_chance": bool(lower <= CHANCE) if len(v) > 1 else None,  # one draw has no spread to judge by
            "layer": picked.get(key),
            "real": e.get("real", nan),
            "p": e.get("p", nan),
            "p_floor": e.get("p_floor", nan),
            "p_corrected": e.get("p_corrected", nan),
            "p_corrected_floor": e.get("p_corrected_floor", nan),
            "corrected_draws": e.get("corrected_draws", 0),
        }
    return out
