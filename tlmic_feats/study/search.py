"""The truncation searches of a study: which cut points get finetuned with the full budget, from
which signal, and what each choice cost.

Every search ranks the candidates of a stage (stage 1: the block ends but the deepest, which full
finetuning covers; stage 2: the units of the best finetuned block) and finetunes its top
``top_blocks`` (``top_units``) with the fraction's full budget, beside full finetuning; the study
then picks among what was finetuned on validation. They differ in the signal, and in what it costs:

``probe``
    The probes' mean validation AUPRC at each cut point (frozen features: the cost of extraction
    and probing, no finetuning).
``similarity``
    Where pretrained features stop resembling those of a short finetune (TruncatedTL's idea, here
    with linear CKA): the full network is finetuned for :func:`short_steps` (an eighth of the
    budget) at every seed, its feature reuse measured per cut point on the validation images
    (:func:`~tlmic_feats.finetune.reuse.feature_reuse`), and a cut point scores the drop in
    similarity from it to the next candidate deeper (:func:`reuse_drop_scores`): the cut goes just
    before the layers finetuning rewrites.
``halving``
    Successive halving (Jamieson & Talwalkar 2016) over the candidates: all train to the first rung
    of :func:`halving_schedule`, the better half on validation continues to twice the steps, and so
    on until ``top_blocks`` remain, which finish the full budget. A candidate's run is the same run
    whatever rung it stops at: it follows the full budget's learning-rate schedule and is paused at
    its rung (and resumed if it survives), so the score at a rung is that run's validation AUPRC of
    the step it would keep if stopped there (:func:`val_auprc_at`). An exhaustive study's runs
    therefore hold every rung's evaluation in their ``history.csv``, and halving's choice can be
    read from them exactly, without retraining (:func:`halving_choice`).
``exhaustive``
    Every candidate (every block end, and every unit of the best block), every seed: the ground
    truth the other searches are judged against (:mod:`~tlmic_feats.study.report.search`). It also
    runs the similarity search's short finetunes, so that all three can be judged on its runs.

Ties in any ranking go to the deeper cut point (:func:`~tlmic_feats.study.arms.rank_by_validation`).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .arms import rank_by_validation
from .config import SEARCHES as SEARCHES  # declared with the study's options
from .config import Search as Search

GUIDED: tuple[str, ...] = ("probe", "similarity", "halving")

# What ranks the candidates of each search, in words (the report and search.csv).
SIGNALS = {
    "probe": "probe val AUPRC",
    "similarity": "drop in CKA to the next cut point after a short finetune",
    "halving": "finetuned val AUPRC at the first rung",
    "exhaustive": "finetuned val AUPRC",
}

# The similarity search's short finetune: this share of the fraction's budget (at least one evaluation).
SHORT_SHARE = 1 / 8
REUSE_METHOD = "cka"
REUSE_SPLIT = "val"  # every choice reads validation data only


def at_evaluation(steps: float, total: int, eval_every: int) -> int:
    """The first step at or after ``steps`` at which a run of ``total`` steps evaluates (every
    ``eval_every`` steps and at the last).

    >>> at_evaluation(12.5, 100, 5), at_evaluation(90, 100, 40)
    (15, 100)
    """
    return int(min(total, eval_every * max(1, math.ceil(steps / eval_every - 1e-9))))


def short_steps(total: int, eval_every: int) -> int:
    """Steps of the similarity search's short finetune: :data:`SHORT_SHARE` of the budget, at an
    evaluation of the budget's cadence."""
    return at_evaluation(total * SHORT_SHARE, total, eval_every)


def halving_schedule(n: int, keep: int, total: int, eval_every: int) -> list[tuple[int, int]]:
    """The rungs of successive halving: ``[(steps, candidates)]``, from ``n`` candidates at the first
    rung to ``keep`` at the last, which trains the full budget ``total``. The candidates halve at
    each rung (rounded up, never below ``keep``) and the steps double, backwards from ``total``:
    with ``R = ceil(log2(n / keep))`` rungs after the first, rung ``j`` trains ``total / 2^(R - j)``
    steps, moved to the first evaluation at or after it (every ``eval_every`` steps), so that every
    rung is an evaluation the run makes anyway.

    Examples
    --------
    >>> halving_schedule(8, 1, 320, 10)
    [(40, 8), (80, 4), (160, 2), (320, 1)]
    >>> halving_schedule(7, 2, 120, 15)
    [(30, 7), (60, 4), (120, 2)]
    """
    keep = max(1, min(keep, n))
    rungs = math.ceil(math.log2(n / keep) - 1e-12) if n > keep else 0
    return [
        (at_evaluation(total / 2 ** (rungs - j), total, eval_every), max(keep, math.ceil(n / 2**j)))
        for j in range(rungs + 1)
    ]


def val_auprc_at(history: list[dict], step: int) -> float:
    """Validation AUPRC of the evaluation a run keeps when it stops at ``step``: its last improving
    evaluation up to ``step`` (``best`` in ``history.csv``), its last one when none improved; NaN
    when it had not evaluated by then."""
    seen = [h for h in history if h["step"] <= step]
    if not seen:
        return float("nan")
    kept = [h for h in seen if h["best"]] or seen
    return float(kept[-1]["val_auprc"])


def loop_seconds(history: list[dict], step: int | None = None) -> float:
    """Measured seconds of a run's training steps and validations up to ``step`` (all: None), from its
    history (``seconds`` and ``eval_seconds`` of each evaluation)."""
    return float(sum(h["seconds"] + h["eval_seconds"] for h in history if step is None or h["step"] <= step))


def steps_trained(history: list[dict], step: int | None = None) -> int:
    """Optimizer steps a run took up to ``step`` (it may have stopped early before)."""
    seen = [h["step"] for h in history if step is None or h["step"] <= step]
    return max(seen, default=0)


def halving_rung(histories: dict[str, list[list[dict]]], steps: int, n_next: int) -> dict:
    """One rung of successive halving: the candidates of ``histories`` (address -> one history per
    seed) ranked by their mean validation AUPRC over seeds at ``steps`` (:func:`val_auprc_at`; ties
    go to the deeper cut point), and the ``n_next`` best kept: ``{"steps", "ranking", "kept"}``."""
    ranking = rank_by_validation({a: _mean([val_auprc_at(h, steps) for h in hs]) for a, hs in histories.items()})
    return {"steps": steps, "ranking": ranking, "kept": [a for a, _ in ranking[:n_next]]}


def halving_choice(
    histories: dict[str, list[list[dict]]], schedule: list[tuple[int, int]]
) -> tuple[list[str], list[dict]]:
    """Successive halving over ``histories`` (candidate address -> one history per seed, as
    ``history.csv`` holds it) by ``schedule`` (:func:`halving_schedule`), one :func:`halving_rung`
    after another. Returns the survivors (those that train the full budget) and the rungs.

    Examples
    --------
    >>> h = lambda *v: [[{"step": 10 * (i + 1), "val_auprc": x, "best": True} for i, x in enumerate(v)]]
    >>> survivors, rungs = halving_choice({"1": h(.9, .5), "2": h(.5, .9), "3": h(.7, .8)}, [(10, 3), (20, 2)])
    >>> survivors, [a for a, _ in rungs[0]["ranking"]]
    (['1', '3'], ['1', '3', '2'])
    """
    alive = list(histories)
    rungs = []
    for (steps, _), (_, n_next) in itertools.pairwise(schedule):
        rung = halving_rung({a: histories[a] for a in alive}, steps, n_next)
        alive = rung["kept"]
        rungs.append(rung)
    return alive, rungs


def reuse_drop_scores(reuse: dict[str, float], sequence: list[str]) -> dict[str, float]:
    """The similarity search's score of each cut point of ``sequence`` but the last (shallow to deep):
    how much its feature reuse exceeds that of the next one, ``reuse[a_i] - reuse[a_i+1]``. A large
    drop after ``a_i`` means finetuning rewrites what follows it while keeping ``a_i``'s features:
    the place to cut. NaN (ranked last) where a value is missing.

    >>> reuse_drop_scores({"1": 0.99, "2": 0.97, "3": 0.6, "4": 0.5}, ["1", "2", "3", "4"])
    {'1': 0.02, '2': 0.37, '3': 0.1}
    """
    out = {}
    for a, b in itertools.pairwise(sequence):
        d = reuse.get(a, np.nan) - reuse.get(b, np.nan)
        out[a] = round(float(d), 12) if np.isfinite(d) else float("nan")
    return out


def choose_on_validation(finetuned: list[str], full: str, val_auprc: dict[str, float]) -> str:
    """What a search hands over: among the cut points it finetuned with the full budget and full
    finetuning (``full``: the deepest block end), the one with the best mean validation AUPRC (ties
    to the deeper)."""
    return rank_by_validation({a: val_auprc.get(a, np.nan) for a in [*finetuned, full]})[0][0]


def _mean(values: list[float]) -> float:
    v = [x for x in values if np.isfinite(x)]
    return float(np.mean(v)) if v else float("nan")
