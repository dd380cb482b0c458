"""The arms of a study: the finetuning configuration of each run, and choosing among them on
validation data only."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..backbones.cutpoints import block_ends
from ..finetune.budget import StepBudget
from ..runtime.errors import UsageError
from ..runtime.rundir import study_run_id
from .config import StudyConfig


@dataclass(frozen=True)
class Run:
    """One finetuning run of the study."""

    stage: str
    arm: str  # "t<address>", "full", "scratch", a CBR name, "hybrid", "layerwise"
    fraction: float
    seed: int

    @property
    def id(self) -> str:
        return study_run_id(self.arm, self.fraction, self.seed)


def finetune_config(config: StudyConfig, run: Run, out: Path, backbone=None, budget: StepBudget | None = None):
    """The :class:`~tlmic_feats.finetune.FinetuneConfig` of one run (``budget``: its fraction's)."""
    from ..finetune.config import FinetuneConfig

    training = config.training
    if budget is not None:  # every arm of a fraction gets the same resolved budget
        training = replace(training, steps=budget.steps, eval_every=budget.eval_every)
    base = FinetuneConfig(
        data=config.data,
        backbone=config.backbone,
        weights=config.weights,
        training=training,
        pool=config.pool,
        input_size=config.input_size,
        keep_checkpoints=config.keep_checkpoints,
        fraction=run.fraction,
        seed=run.seed,
        bootstrap=config.bootstrap,
        device=config.device,
        export_onnx=False,
        out=str(out / "runs" / run.id),
        compactness=run.seed == 0,  # the same network for every seed: measured once per arm
    )
    arm = run.arm
    if arm.startswith("t"):
        return _lpft(replace(base, truncate=arm[1:]), config, out, arm[1:], config.lpft in ("truncated", "all"))
    if arm == "full":
        return _lpft(replace(base, truncate="all"), config, out, full_address(backbone), config.lpft == "all")
    if arm == "scratch":
        return replace(base, truncate="all", weights="random")
    if arm.startswith("cbr-"):
        return replace(base, arch=arm, weights="random")
    if arm == "hybrid":
        return replace(base, arch="hybrid")
    if arm == "layerwise":
        lw = replace(
            base, truncate="all", freeze_until=layerwise_freeze(backbone), backbone_lr_mult=config.layerwise_lr_mult
        )
        return _lpft(lw, config, out, full_address(backbone), config.lpft == "all")
    raise UsageError(f"unknown study arm {arm!r}")


def full_address(backbone) -> str | None:
    from ..backbones.cutpoints import full_depth_address

    return full_depth_address(backbone) if backbone is not None else None


def _lpft(fc, config: StudyConfig, out: Path, address: str | None, wanted: bool):
    """``fc`` with its head starting from the study's probe at ``address`` for the run's own
    subset, when LP-FT applies to the arm and that probe was fitted (a subset with fewer than two
    images of a class has none; the run then starts from a random head, as its metrics record)."""
    from ..probes.grid import fitted_probe_dir

    if not wanted or address is None:
        return fc
    try:
        fitted_probe_dir(out / "probes", address, "logreg", fc.fraction, fc.seed)
    except UsageError:
        return fc
    return replace(fc, head_init=str(out / "probes"))


def layerwise_freeze(backbone) -> str:
    """Layer-wise finetuning freezes the bottom half of the block ends."""
    ends = block_ends(backbone)
    return ends[max(0, len(ends) // 2 - 1)]


# The tie rule of every choice made on validation: scores equal to within TIE_TOLERANCE tie, and
# a tie goes to the deeper cut point (it keeps more of the pretrained network, the choice the
# better-measured deeper arms back), so a study's choice never depends on the order candidates
# happened to be listed in.
TIE_TOLERANCE = 1e-9
TIE_RULE = "ties on validation go to the deeper cut point"


def rank_by_validation(scores: dict[str, float]) -> list[tuple[str, float]]:
    """``scores`` (cut point address -> validation score) ranked best first; scores within
    :data:`TIE_TOLERANCE` of each other tie, and ties go to the deeper cut point
    (:data:`TIE_RULE`); candidates without a score (non-finite: no probe could be fitted) rank last,
    tied among themselves, deeper first too.

    Examples
    --------
    >>> rank_by_validation({"1": 1.0, "2": 1.0, "3": 0.9})
    [('2', 1.0), ('1', 1.0), ('3', 0.9)]
    """
    from ..backbones.taps import address_key

    finite = [v for v in scores.values() if np.isfinite(v)]
    best = max(finite, default=0.0)

    def key(kv: tuple[str, float]):
        a, v = kv
        if not np.isfinite(v):
            return (1, 0, tuple(-k for k in address_key(a)))
        # scores on a grid of TIE_TOLERANCE measured down from the best, so that near-equal scores tie
        gap = int(np.floor((best - v) / TIE_TOLERANCE + 0.5))
        return (0, gap, tuple(-k for k in address_key(a)))

    return sorted(scores.items(), key=key)


def tie_at_cut(ranking: list[tuple[str, float]], k: int, what: str) -> dict | None:
    """When the ``k`` taken from ``ranking`` (best first, :func:`rank_by_validation`) end inside a
    group of tied scores, the tie and how it was broken (``{"what", "score", "tied", "taken",
    "rule"}``); None when the rule decided nothing."""
    if not 0 < k < len(ranking):
        return None
    edge = ranking[k - 1][1]

    def ties(v: float) -> bool:
        return abs(v - edge) <= TIE_TOLERANCE if np.isfinite(edge) else not np.isfinite(v)

    tied = [a for a, v in ranking if ties(v)]
    taken = [a for a, _ in ranking[:k] if a in tied]
    if len(taken) == len(tied):
        return None
    return {
        "what": what,
        "score": float(edge) if np.isfinite(edge) else None,
        "tied": tied,
        "taken": taken,
        "rule": TIE_RULE,
    }


def describe_tie(tie: dict) -> str:
    """A tie in words: ``block ends 1, 2, 3 tie at probe val AUPRC 1.000; taken: 3 (ties ...)``."""
    at = "without a score" if tie["score"] is None else f"at {tie['score']:.3f}"
    return f"{tie['what']} {', '.join(tie['tied'])} tie {at}; taken: {', '.join(tie['taken'])} ({tie['rule']})"


def probe_ranking(probe_rows: list[dict], fraction: float, candidates: list[str]) -> list[tuple[str, float]]:
    """``candidates`` ranked by the probes' mean validation AUPRC at ``fraction`` (both models, all
    seeds, no controls), best first; ties go to the deeper cut point (:func:`rank_by_validation`)."""
    scores = {}
    for a in candidates:
        v = [
            r["val_auprc"]
            for r in probe_rows
            if r["layer"] == a and r["fraction"] == fraction and r["control"] == "none" and np.isfinite(r["val_auprc"])
        ]
        scores[a] = float(np.mean(v)) if v else -np.inf
    return rank_by_validation(scores)


def run_val_auprc(run_dir: Path) -> float:
    """Validation AUPRC of a finished run's kept (best) step (its last evaluation when none improved)."""
    from ..finetune.outputs import read_history

    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = read_history(run_dir / "history.csv")
    kept = [h for h in history if h["step"] == int(metrics["best_step"])] or history[-1:]
    return float(kept[0]["val_auprc"])
