"""The arms of a study: what each run trains (:class:`Arm`, named on disk as ``t3.4``, ``full``...),
the runs themselves, the finetuning configuration of each, and choosing among them on validation
data only."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from ..backbones.cutpoints import block_ends
from ..backbones.taps import address_key
from ..finetune.budget import StepBudget
from ..runtime.errors import UsageError, choices
from ..runtime.rundir import study_run_id
from .config import BASELINES, StudyConfig

ArmKind = Literal["truncated", "full", "scratch", "baseline", "probe"]
ARM_KINDS: tuple[str, ...] = get_args(ArmKind)

# The report lists probes first, then the truncated arms shallow to deep, full, scratch, the baselines.
_REPORT_ORDER = {"probe": 0, "truncated": 1, "full": 3, "scratch": 4, "baseline": 5}


@dataclass(frozen=True)
class Arm:
    """What a study run trains; ``str(arm)`` is its name on disk and :meth:`parse` reads it back.

    ``kind`` is ``truncated`` (the pretrained network cut at the cut point ``address`` and
    finetuned), ``full`` (finetuned whole), ``scratch`` (the full network from random weights),
    ``baseline`` (``name``: one of :data:`~tlmic_feats.study.config.BASELINES`) or ``probe`` (the
    probe model ``name`` on the frozen features of its best layer: a row of the report, not a run).

    Run directories (``runs/t3.4-f0.1-s0``), ``study.json``, ``results.csv`` and
    ``calibration.json`` write an arm by its name: ``t<address>``, ``full``, ``scratch``, the
    baseline's name, ``probe-<model>``.

    Examples
    --------
    >>> Arm.parse("t3.10")
    Arm(kind='truncated', address='3.10', name='')
    >>> [str(a) for a in (Arm("full"), Arm("baseline", name="cbr-tiny"), Arm("probe", name="logreg"))]
    ['full', 'cbr-tiny', 'probe-logreg']
    """

    kind: ArmKind
    address: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ARM_KINDS:
            raise UsageError(f"study arm kind {self.kind!r} is not valid; valid: {choices(ARM_KINDS)}")
        if (self.kind == "truncated") != bool(self.address):
            raise UsageError(f"a cut point address goes with truncated arms only: {self!r}")
        if self.kind == "baseline" and self.name not in BASELINES:
            raise UsageError(f"baseline {self.name!r} is not valid; valid: {choices(BASELINES)}")
        if (self.kind in ("baseline", "probe")) != bool(self.name):
            raise UsageError(f"a name goes with baseline and probe arms only: {self!r}")

    def __str__(self) -> str:
        if self.kind == "truncated":
            return f"t{self.address}"
        if self.kind == "probe":
            return f"probe-{self.name}"
        return self.name or self.kind

    @classmethod
    def parse(cls, name: str | Arm) -> Arm:
        """The arm named ``name`` (as :func:`str` writes it; an :class:`Arm` is returned as it is)."""
        if isinstance(name, Arm):
            return name
        if name in ("full", "scratch"):
            return cls(name)
        if name in BASELINES:
            return cls("baseline", name=name)
        if name.startswith("probe-") and len(name) > len("probe-"):
            return cls("probe", name=name.removeprefix("probe-"))
        if name.startswith("t") and _is_address(name[1:]):
            return cls("truncated", address=name[1:])
        valid = ["t<cut point> (t3, t3.4)", "full", "scratch", *BASELINES, "probe-<model>"]
        raise UsageError(f"study arm {name!r} is not valid; valid: {', '.join(valid)}")

    @property
    def network(self) -> Arm:
        """The arm whose network this one trains, as the cost model keys it: scratch and layer-wise
        finetuning train the full network."""
        return Arm("full") if self.kind == "scratch" or self.name == "layerwise" else self

    def sort_key(self) -> tuple:
        """The report's order: probes, truncated arms shallow to deep, full, scratch, baselines."""
        depth = address_key(self.address) if self.kind == "truncated" else (0, 0)
        return (_REPORT_ORDER[self.kind], depth, str(self))


def _is_address(text: str) -> bool:
    """Whether ``text`` is a cut point address (``3``, ``3.10``) by the registry's grammar."""
    try:
        address_key(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Run:
    """One finetuning run of the study: ``arm`` trained on ``fraction`` of the training set with
    ``seed``, in a ``stage`` of the search (``stage1``, ``stage2``, ``baseline``; ``similarity``
    for the similarity search's short finetunes; ``calibration`` for the cost model's
    measurements). ``steps``: a run shorter than its fraction's budget (the short finetunes; 0: the
    budget)."""

    stage: str
    arm: Arm
    fraction: float
    seed: int
    steps: int = 0

    @property
    def id(self) -> str:
        """Its directory under ``runs/``: ``t3-f0.1-s0``; a short run ``full-f0.1-s0-b15``."""
        return study_run_id(str(self.arm), self.fraction, self.seed) + (f"-b{self.steps}" if self.steps else "")

    def record(self) -> dict:
        """The run as ``study.json`` records it (the arm by its name)."""
        record = {"stage": self.stage, "arm": str(self.arm), "fraction": self.fraction, "seed": self.seed}
        return {**record, "steps": self.steps} if self.steps else record

    @classmethod
    def from_record(cls, record: dict) -> Run:
        """The run a ``study.json`` record (:meth:`record`) describes."""
        return cls(
            record["stage"],
            Arm.parse(record["arm"]),
            float(record["fraction"]),
            int(record["seed"]),
            int(record.get("steps", 0)),
        )


def finetune_config(config: StudyConfig, run: Run, out: Path, backbone=None, budget: StepBudget | None = None):
    """The :class:`~tlmic_feats.finetune.FinetuneConfig` of one run (``budget``: its fraction's)."""
    from ..finetune.config import FinetuneConfig

    training = config.training
    if budget is not None:  # every arm of a fraction gets the same resolved budget
        training = replace(training, steps=budget.steps, eval_every=budget.eval_every)
    if run.steps:  # a short run: its own steps, at the budget's cadence
        training = replace(training, steps=run.steps, eval_every=min(training.eval_every or run.steps, run.steps))
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
        compactness=run.seed == 0 and not run.steps,  # the same network for every seed: measured once per arm
    )
    arm = run.arm
    if arm.kind == "truncated":
        lpft = config.lpft in ("truncated", "all")
        return _lpft(replace(base, truncate=arm.address), config, out, arm.address, lpft)
    if arm.kind == "full":
        return _lpft(replace(base, truncate="all"), config, out, full_address(backbone), config.lpft == "all")
    if arm.kind == "scratch":
        return replace(base, truncate="all", weights="random")
    if arm.name.startswith("cbr-"):
        return replace(base, arch=arm.name, weights="random")
    if arm.name == "hybrid":
        return replace(base, arch="hybrid")
    if arm.name == "layerwise":
        lw = replace(
            base, truncate="all", freeze_until=layerwise_freeze(backbone), backbone_lr_mult=config.layerwise_lr_mult
        )
        return _lpft(lw, config, out, full_address(backbone), config.lpft == "all")
    raise UsageError(f"study arm {arm} is not finetuned (a {arm.kind} arm)")


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


def run_history(run_dir: Path) -> list[dict]:
    """A run's evaluations so far: ``history.csv`` once it finished, else the history its resume state
    (``last.pt``) holds (a run paused by successive halving); empty when it has not evaluated."""
    from ..finetune.outputs import read_history

    if (run_dir / "history.csv").is_file():
        return read_history(run_dir / "history.csv")
    if not (run_dir / "last.pt").is_file():
        return []
    import torch

    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["state"]
    return json.loads(state)["history"]
