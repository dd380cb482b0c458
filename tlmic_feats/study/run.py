"""``tlmic study``: the paper's experiment as one resumable command, with a probe-guided search.

1. Extract every cut point once (an existing store of the same inputs is reused).
2. Probe every cut point with both probe models, at every fraction and seed.
3. Search, stage 1: per fraction, rank the block ends (all but the deepest, which full finetuning
   covers) by the probes' mean validation AUPRC; finetune truncated at the top ``top_blocks``, plus
   full finetuning and training from scratch, for every seed.
4. Search, stage 2: per fraction, the best block is the stage-1 truncated arm with the highest mean
   validation AUPRC of its finetuned models; its unit-level cut points (those not equal to the block
   end) are ranked by probe validation AUPRC and the top ``top_units`` are finetuned.
5. Baselines (``baselines``): the CBR networks of Transfusion (from scratch), the TransFusion-style
   hybrid, and layer-wise finetuning (bottom half frozen, the rest at a tenth of the learning rate).

Every choice reads validation data only; a finetuned model's test labels are read once, by its own
final evaluation, and by the report. The study directory records everything::

    study.json        config, progress, the choices made and why, compute spent
    calibration.json  measured seconds per training image of each network (the cost model)
    probes/           the probe run (tlmic probe's outputs)
    runs/<run>/       one finetuning run each (tlmic finetune's outputs)
    results.csv       one row per finished run: arm, fraction, seed, val and test metrics, cost
    report.md, report.html, figures/

A rerun skips finished runs and resumes unfinished ones. ``budget`` caps finetuning runs (stage 1
first, then stage 2, then baselines); ``max_minutes`` stops starting new runs after that long;
:func:`plan_study` prints what would run and its estimated cost without running anything.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..runtime.errors import SubsetTooSmallError, UsageError
from .arms import block_ends, finetune_config, probe_ranking, run_val_auprc, units_of
from .config import Run, StudyConfig, StudyResult, default_out
from .plan import calibrate, fraction_budgets


class _Study:
    """State shared by the steps of one study invocation."""

    def __init__(self, config: StudyConfig, out: Path, log, progress: bool) -> None:
        self.config, self.out, self.log, self.progress = config, out, log, progress
        self.state_file = out / "study.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}

    def save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1, default=float))
        tmp.replace(self.state_file)

    def claim(self) -> None:
        key = self.config.results_key
        if self.state:
            old = self.state.get("config", {})
            diff = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
            if diff:
                raise UsageError(
                    f"study directory {self.out} holds another study (differs in: {', '.join(diff)}); "
                    "choose another --out or delete it"
                )
        elif self.out.exists() and any(self.out.iterdir()):
            raise UsageError(f"{self.out} exists and is not a study directory; choose another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        self.state.setdefault("config", key)
        self.state.setdefault("compute", {})
        self.state.setdefault("runs", {})
        self.save()


def run_study(
    config: StudyConfig,
    *,
    budget: int = 0,
    max_minutes: float = 0.0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_run: Callable[[str], None] | None = None,
) -> StudyResult:
    """Run (or resume) a study; see the module docstring. ``budget`` (maximum finetuning runs in the
    study, 0: no limit) and ``max_minutes`` (no new run starts after that long, 0: no limit) are not
    part of the study's identity: a rerun with a larger budget continues it."""

    from ..features.store import StoreLock

    config.validate()
    log = log or (lambda m: print(m, file=sys.stderr))
    out = Path(config.out) if config.out else default_out(config)
    with StoreLock(out):  # one process writes a study at a time; `tlmic cache clean` leaves it alone
        return _run_study(config, out, budget, max_minutes, progress, log, on_run)


def _run_study(config: StudyConfig, out: Path, budget: int, max_minutes: float, progress: bool, log, on_run):
    from ..backbones.registry import build_backbone
    from ..features.extract import ExtractConfig, extract_features
    from ..probes.grid import ProbeConfig, run_probes

    study = _Study(config, out, log, progress)
    study.claim()
    t_start = time.perf_counter()

    # 1. extract (or reuse) every cut point
    extracted = extract_features(
        ExtractConfig(
            data=config.data,
            backbone=config.backbone,
            weights=config.weights,
            layers="all",
            pool=config.pool,
            store=config.store,
            cluster=config.cluster,
            device=config.device,
            input_size=config.input_size,
        ),
        progress=progress,
        log=log,
    )
    study.state["store"] = str(extracted.store.path)
    if not extracted.already_complete:
        study.state["compute"]["extract_seconds"] = round(extracted.seconds, 2)
    study.state["compute"].setdefault("extract_seconds", 0.0)
    study.save()

    # 2. probe every cut point
    t = time.perf_counter()
    probes = run_probes(
        ProbeConfig(
            store=str(extracted.store.path),
            layers="all",
            models=config.probe_models,
            fractions=config.fractions,
            seeds=config.seeds,
            bootstrap=config.bootstrap,
            out=str(out / "probes"),
            cluster=config.cluster,
        ),
        progress=progress,
        log=log,
    )
    if "probe_seconds" not in study.state["compute"]:
        study.state["compute"]["probe_seconds"] = round(time.perf_counter() - t, 2)
    study.save()

    backbone = build_backbone(config.backbone, config.weights, input_size=config.input_size)
    calibration = calibrate(config, backbone, out, log=log)
    budgets = fraction_budgets(config)
    deadline = t_start + max_minutes * 60 if max_minutes else None
    not_run: list[str] = []
    choices = study.state.setdefault("choices", {})

    def execute(run: Run) -> bool:
        """Run (or resume, or skip as finished) one finetuning run; False when budget or time forbid it."""
        from ..finetune.trainer import finetune

        run_dir = out / "runs" / run.id
        record = study.state["runs"].get(run.id, {})
        if (run_dir / "metrics.json").is_file():
            if record.get("status") != "done":
                study.state["runs"][run.id] = {**asdict(run), "status": "done", "seconds": record.get("seconds")}
                study.save()
            return True
        if record.get("status") == "impossible":
            not_run.append(f"{run.id} ({record['why']})")
            return False
        started = sum(1 for r in study.state["runs"].values() if r.get("status") in ("done", "started"))
        if budget and record.get("status") != "started" and started >= budget:
            not_run.append(f"{run.id} (budget of {budget} runs)")
            return False
        if deadline is not None and time.perf_counter() > deadline:
            not_run.append(f"{run.id} (--max-minutes {max_minutes:g})")
            return False
        study.state["runs"][run.id] = {**asdict(run), "status": "started"}
        study.save()
        log(f"study: {run.stage} {run.id}")
        t0 = time.perf_counter()
        try:
            finetune(
                finetune_config(config, run, out, backbone, budgets[run.fraction][1]),
                resume=(run_dir / "run.json").is_file(),
                progress=progress,
                log=log,
            )
        except SubsetTooSmallError as e:  # a tiny fraction without one class: say so, go on
            study.state["runs"][run.id] = {**asdict(run), "status": "impossible", "why": str(e)}
            study.save()
            not_run.append(f"{run.id} ({e})")
            return False
        seconds = round(time.perf_counter() - t0, 2) + float(record.get("seconds") or 0)
        study.state["runs"][run.id] = {**asdict(run), "status": "done", "seconds": seconds}
        study.save()
        if on_run:
            on_run(run.id)
        return True

    ends = block_ends(backbone)
    candidates = ends[:-1]  # the deepest block end is full finetuning's
    # 3. stage 1: top block ends by probe validation AUPRC, full, scratch
    for fraction in config.fractions:
        ranking = probe_ranking(probes.rows, float(fraction), candidates)
        top = [a for a, _ in ranking[: config.top_blocks]]
        n_train, steps = budgets[float(fraction)]
        choices[f"{fraction:g}"] = {
            "stage1_ranking": ranking,
            "blocks": top,
            "n_train": n_train,
            "budget": asdict(steps),
        }
        for seed in range(config.seeds):
            for arm in [f"t{a}" for a in top] + ["full", "scratch"]:
                execute(Run("stage1", arm, float(fraction), seed))
    study.save()
    # 4. stage 2: inside the best finetuned block, the top units by probe validation AUPRC
    for fraction in config.fractions:
        c = choices[f"{fraction:g}"]
        finetuned = {}
        for a in c["blocks"]:
            ids = [Run("stage1", f"t{a}", float(fraction), s).id for s in range(config.seeds)]
            possible = [i for i in ids if study.state["runs"].get(i, {}).get("status") != "impossible"]
            vals = [run_val_auprc(out / "runs" / i) for i in possible if (out / "runs" / i / "metrics.json").is_file()]
            if possible and len(vals) == len(possible):
                finetuned[a] = float(np.mean(vals))
        if len(finetuned) < len(c["blocks"]) or not config.top_units:
            c["stage2"] = None if config.top_units else "skipped (--top-units 0)"
            if config.top_units:
                not_run.append(f"stage 2 at fraction {fraction:g} (stage 1 unfinished)")
            continue
        best = max(finetuned, key=finetuned.get)
        ranking = probe_ranking(probes.rows, float(fraction), units_of(backbone, best))
        units = [a for a, _ in ranking[: config.top_units]]
        c.update(best_block=best, stage1_val_auprc=finetuned, stage2_ranking=ranking, units=units)
        for seed in range(config.seeds):
            for a in units:
                execute(Run("stage2", f"t{a}", float(fraction), seed))
    study.save()
    # 5. baselines
    for fraction in config.fractions:
        for seed in range(config.seeds):
            for b in config.baselines:
                execute(Run("baseline", b, float(fraction), seed))
    study.state["not_run"] = not_run
    study.save()

    from .report import collect_rows, render_study_report

    rows = collect_rows(out, config, probes.out)
    report = render_study_report(out, config, backbone, calibration, rows, study.state)
    return StudyResult(out, rows, choices, not_run, report)
