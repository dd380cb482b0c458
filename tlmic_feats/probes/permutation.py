"""The shuffle control's permutation null: where its draws go, how each is seeded, and how the
summary judges it.

``tlmic probe --control shuffle --permutations N`` refits probes on permuted training and
validation labels (the labels a probe learns from and is tuned on: C, early stopping, thresholds)
and scores them against the *true* test labels. Each refit is one draw of the null: its own
permutation, from a seed sequence holding the layer, the model, the fraction, the seed of the
training subset and the draw's index, so that no two cells share one (a permutation shared by every
layer is one draw, not many). Draws per layer: ``N`` on the layer the summary picks for a model x
fraction (highest mean validation AUPRC of the real probes), :func:`draws_elsewhere` (a tenth of
``N``, at least 2) on every other layer; draw ``k`` uses the training subset of seed ``k mod seeds``.

What the summary reports, per model x fraction x layer: the real probes' test AUROC (mean over
seeds), the null's mean and 95% range, and a permutation p-value ``(1 + #{draw >= real}) / (n + 1)``,
each draw compared with the real probe of its own training subset. With a strong signal the null is
wide: a random permutation agrees with the true labels a little more or less than by chance, and a
probe follows that small agreement to test AUROCs far from 0.5 in either direction. So the verdict
judges the null against its own spread, not against 0.5 with a CI over correlated cells: per model x
fraction, the mean of every draw over all layers, with a one-sided upper confidence bound from the
draws' standard error (Bonferroni over the verdicts of the table), is "at chance" unless it lies
above 0.5. Only above: a random permutation's labels correlate with the true ones by -1/(n-1) on
average, so on a strong signal the null's mean sits slightly *below* 0.5 (measured: -0.01 to -0.02
with 300 training rows), and a leak pushes it up.

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


def draws_elsewhere(permutations: int) -> int:
    """Draws on a layer the summary does not pick: a tenth of ``permutations``, at least 2 (a spread)."""
    return max(2, -(-permutations // 10))


def permutation_rng(layer: str, model: str, fraction: float, seed: int, index: int) -> np.random.Generator:
    """The generator of one draw: every coordinate of the cell in the seed sequence."""
    words = [0xC0, zlib.crc32(layer.encode()), zlib.crc32(model.encode()), round(fraction * 1_000_000), seed, index]
    return np.random.default_rng(words)


def permute(y_train: np.ndarray, y_val: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation labels, each permuted among its own rows (test labels stay true)."""
    return y_train[rng.permutation(len(y_train))], y_val[rng.permutation(len(y_val))]


def null_by_layer(rows: list[dict], picked: dict[tuple[str, float], str]) -> list[dict]:
    """One entry per model x fraction x layer that has draws: ``real`` (mean test AUROC of the real
    probes), ``draws``, ``mean``, ``lo`` / ``hi`` (2.5th and 97.5th percentiles of the draws), ``p``
    (permutation p-value, each draw against the real probe of its own seed), ``picked`` (the layer
    is ``picked[(model, fraction)]``, the summary's choice)."""
    real: dict[tuple, float] = {}
    draws: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
    depth: dict[str, int] = {}
    for r in rows:
        key = (r["model"], r["fraction"], r["layer"])
        depth[r["layer"]] = r["depth"]
        if r["control"] == "none":
            real[(*key, r["seed"])] = r["auroc"]
        elif np.isfinite(r["auroc"]):
            draws[key].append((r["seed"], r["auroc"]))
    out = []
    for (model, fraction, layer), ds in sorted(draws.items(), key=lambda kv: (kv[0][0], kv[0][1], depth[kv[0][2]])):
        values = np.array([v for _, v in ds])
        reals = [real.get((model, fraction, layer, s), np.nan) for s, _ in ds]
        beaten = sum(v >= r for (_, v), r in zip(ds, reals, strict=True) if np.isfinite(r))
        compared = sum(np.isfinite(r) for r in reals)
        seed_means = [v for (m, f, la, _), v in real.items() if (m, f, la) == (model, fraction, layer)]
        out.append(
            {
                "model": model,
                "fraction": fraction,
                "layer": layer,
                "real": float(np.nanmean(seed_means)) if np.isfinite(seed_means).any() else float("nan"),
                "draws": len(values),
                "mean": float(values.mean()),
                "lo": float(np.percentile(values, 2.5)),
                "hi": float(np.percentile(values, 97.5)),
                "p": (1 + beaten) / (compared + 1) if compared else float("nan"),
                "picked": picked.get((model, fraction)) == layer,
            }
        )
    return out


def verdicts(rows: list[dict], family_level: float = 0.95) -> dict[tuple[str, float], dict]:
    """Per model x fraction: ``mean`` of every draw over all layers, ``draws``, ``layers``, ``se``
    (the draws' standard error), ``lower`` (one-sided lower confidence bound of the mean, at
    ``family_level`` shared over the verdicts by Bonferroni), ``level`` (the per-verdict level) and
    ``at_chance`` (``lower <= 0.5``: the null's mean is not above chance; None with fewer than 2 draws).
    Draws are counted once per stored array (an alias cut point shares its array's draws)."""
    from scipy.stats import t

    pooled: dict[tuple[str, float], dict] = defaultdict(dict)
    for r in rows:
        if r["control"] != "none" and np.isfinite(r["auroc"]):
            # one draw per stored array: an alias cut point (ResNet's 2 is 2.4) repeats its array's rows
            pooled[(r["model"], r["fraction"])][(r["array"], r["seed"], r.get("permutation"))] = r["auroc"]
    level = 1 - (1 - family_level) / max(len(pooled), 1)
    out = {}
    for key, by_draw in sorted(pooled.items()):
        v = np.array(list(by_draw.values()))
        se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
        lower = v.mean() - t.ppf(level, len(v) - 1) * se if se > 0 else v.mean()
        out[key] = {
            "mean": float(v.mean()),
            "draws": len(v),
            "layers": len({array for array, _, _ in by_draw}),
            "se": float(se),
            "lower": float(lower),
            "level": level,
            "at_chance": bool(lower <= CHANCE) if len(v) > 1 else None,  # one draw has no spread to judge by
        }
    return out
