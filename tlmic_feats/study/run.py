"""``tlmic study``: the paper's experiment as one resumable command, with a truncation search.

1. Extract every cut point once (an existing store of the same inputs is reused).
2. Probe every cut point with both probe models, at every fraction and seed.
3. Search, stage 1: per fraction, the search (``search``, :mod:`~tlmic_feats.study.search`: probe,
   similarity, halving or exhaustive) picks among the block ends (all but the deepest, which full
   finetuning covers) the top ``top_blocks`` (exhaustive: all) and finetunes them truncated, plus
   full finetuning and training from scratch, for every seed.
4. Search, stage 2: per fraction, the best block is the stage-1 truncated arm with the highest mean
   validation AUPRC of its finetuned models; among its unit-level cut points (those not equal to the
   block end) the search picks the top ``top_units`` (exhaustive: all), which are finetuned.
5. Baselines (``baselines``): the CBR networks of Transfusion (from scratch), the TransFusion-style
   hybrid, and layer-wise finetuning (bottom half frozen, the rest at a tenth of the learning rate).

Every choice reads validation data only; a finetuned model's test labels are read once, by its own
final evaluation, and by the report. The study directory records everything::

    study.json        config, progress, the choices made and why, compute spent
    calibration.json  the cost model: measured step, evaluation and fixed seconds of each network
    probes/           the probe run (tlmic probe's outputs)
    runs/<run>/       one finetuning run each (tlmic finetune's outputs; <run>-b<steps>: a short
                      finetune of the similarity search, with its feature_reuse.csv)
    results.csv       one row per finished run: arm, fraction, seed, val and test metrics, cost
    search.csv        with exhaustive results: every search judged (rank correlations, regret, compute)
    report.md, report.html, figures/

A rerun skips finished runs and resumes unfinished ones. ``budget`` caps finetuning runs (stage 1
first, then stage 2, then baselines); ``max_minutes`` stops starting new runs after that long;
:func:`plan_study` prints what would run and its estimated cost without running anything.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..backbones.cutpoints import block_ends, units_of
from ..runtime.errors import SubsetTooSmallError
from ..runtime.files import write_json
from ..runtime.progress import default_log
from ..runtime.rundir import claim_run_dir
from .arms import (
    Arm,
    Run,
    describe_tie,
    finetune_config,
    probe_ranking,
    rank_by_validation,
    run_history,
    run_val_auprc,
    tie_at_cut,
)
from .config import StudyConfig, StudyResult, default_out
from .plan import calibrate, fraction_budgets
from .search import (
    REUSE_METHOD,
    REUSE_SPLIT,
    SIGNALS,
    halving_rung,
    halving_schedule,
    reuse_drop_scores,
    short_steps,
)


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
    from ..runtime.locks import StoreLock

    config.validate()
    log = log or default_log(progress)
    out = Path(config.out) if config.out else default_out(config)
    with StoreLock(out):  # one process writes a study at a time; `tlmic cache clean` leaves it alone
        study = _Study(config, out, log=log, progress=progress, budget=budget, max_minutes=max_minutes, on_run=on_run)
        return study.run()


class _Study:
    """One invocation of a study: its recorded state, and the steps that add to it."""

    def __init__(self, config: StudyConfig, out: Path, *, log, progress: bool, budget: int, max_minutes: float, on_run):
        self.config, self.out, self.log, self.progress = config, out, log, progress
        self.budget, self.max_minutes, self.on_run = budget, max_minutes, on_run
        self.state_file = out / "study.json"
        self.not_run: list[str] = []
        self.deadline: float | None = None

    def save(self) -> None:
        write_json(self.state_file, self.state, default=float)

    def run(self) -> StudyResult:
        from ..backbones.registry import build_backbone
        from .report import collect_rows, render_study_report

        config, out = self.config, self.out
        claim_run_dir(out, {"config": config.results_key}, what="study", record_file="study.json")
        self.state = json.loads(self.state_file.read_text())
        for key in ("compute", "runs", "choices"):
            self.state.setdefault(key, {})
        self.warn_small_samples()
        self.save()
        t_start = time.perf_counter()
        store = self.extract()
        probes = self.probe(store)
        self.backbone = build_backbone(config.backbone, config.weights, input_size=config.input_size)
        calibration = calibrate(config, self.backbone, out, log=self.log)
        self.budgets = fraction_budgets(config)
        self.deadline = t_start + self.max_minutes * 60 if self.max_minutes else None
        self.stage1(probes.rows)
        self.stage2(probes.rows)
        for fraction in config.fractions:
            for seed in config.seed_list:
                for b in config.baselines:
                    self.execute(Run("baseline", Arm("baseline", name=b), float(fraction), seed))
        self.state["not_run"] = self.not_run
        self.save()
        rows = collect_rows(out, config, probes.out)
        report = render_study_report(out, config, self.backbone, calibration, rows, self.state)
        return StudyResult(out, rows, self.state["choices"], self.not_run, report)

    def warn_small_samples(self) -> None:
        """Say, before anything runs, which fractions train on few images of a class and whether
        validation or test hold few positives (:mod:`~tlmic_feats.data.sample_size`); the report
        repeats it."""
        from ..data.readers import load_manifest
        from ..data.sample_size import small_sample_warnings

        c = self.config
        self.state["small_samples"] = small_sample_warnings(load_manifest(c.data), c.fractions, c.seed_list)
        for w in self.state["small_samples"]:
            self.log(f"study: {w}")

    def extract(self):
        """Every cut point, once (a store of the same inputs is reused)."""
        from ..features.config import ExtractConfig
        from ..features.extract import extract_features

        c = self.config
        extracted = extract_features(
            ExtractConfig(
                data=c.data,
                backbone=c.backbone,
                weights=c.weights,
                layers="all",
                pool=c.pool,
                store=c.store,
                cluster=c.cluster,
                device=c.device,
                input_size=c.input_size,
                engine=c.engine,
                precision=c.extract_precision,
            ),
            progress=self.progress,
            log=self.log,
        )
        self.state["store"] = str(extracted.store.path)
        if not extracted.already_complete:
            self.state["compute"]["extract_seconds"] = round(extracted.seconds, 2)
        self.state["compute"].setdefault("extract_seconds", 0.0)
        self.save()
        return extracted.store

    def probe(self, store):
        """Both probe models on every cut point, at every fraction and seed."""
        from ..probes.config import ProbeConfig
        from ..probes.grid import run_probes

        c = self.config
        t = time.perf_counter()
        probes = run_probes(
            ProbeConfig(
                store=str(store.path),
                layers="all",
                models=c.probe_models,
                fractions=c.fractions,
                seeds=c.seeds,
                bootstrap=c.bootstrap,
                out=str(self.out / "probes"),
                cluster=c.cluster,
            ),
            progress=self.progress,
            log=self.log,
        )
        self.state["compute"].setdefault("probe_seconds", round(time.perf_counter() - t, 2))
        self.save()
        return probes

    def stage1(self, probe_rows: list[dict]) -> None:
        """Per fraction, the block ends (but the deepest, full finetuning's) the search picks, full
        finetuning and training from scratch, at every seed."""
        config, choices = self.config, self.state["choices"]
        candidates = block_ends(self.backbone)[:-1]
        for fraction in config.fractions:
            f = float(fraction)
            n_train, steps = self.budgets[f]
            c = choices[f"{fraction:g}"] = {"search": config.search, "n_train": n_train, "budget": asdict(steps)}
            ranking = probe_ranking(probe_rows, f, candidates)
            c["stage1_ranking"] = ranking
            arms = [Arm("full")] + ([Arm("scratch")] if config.scratch else [])
            if config.search in ("similarity", "exhaustive"):  # exhaustive: so that the similarity search can be judged
                c["stage1_similarity"] = self.similarity_ranking(f, block_ends(self.backbone))
            if config.search == "similarity":
                ranking = c["stage1_similarity"]
            if config.search == "halving":
                top, c["stage1_halving"] = self.halving("stage1", candidates, config.top_blocks, f)
            elif config.search == "exhaustive":
                top = list(candidates)
            else:
                top = [a for a, _ in ranking[: config.top_blocks]]
                what = "block ends by " + SIGNALS[config.search]
                self._tie(fraction, tie_at_cut(ranking, config.top_blocks, what))
            c["blocks"] = top
            for seed in config.seed_list:
                for arm in [Arm("truncated", a) for a in top] + arms:
                    self.execute(Run("stage1", arm, f, seed))
        self.save()

    def stage2(self, probe_rows: list[dict]) -> None:
        """Inside the stage-1 block whose finetuned models did best on validation, the units the
        search picks (exhaustive: every one)."""
        config = self.config
        for fraction in config.fractions:
            f = float(fraction)
            c = self.state["choices"][f"{fraction:g}"]
            finetuned = self._finetuned_blocks(c["blocks"], f)
            if not finetuned or len(finetuned) < len(c["blocks"]) or not config.top_units:
                c["stage2"] = None if config.top_units else "skipped (--top-units 0)"
                if config.top_units:
                    self.not_run.append(f"stage 2 at fraction {fraction:g} (stage 1 unfinished)")
                continue
            blocks = rank_by_validation(finetuned)
            best = blocks[0][0]
            inside = units_of(self.backbone, best)
            ranking = probe_ranking(probe_rows, f, inside)
            if config.search == "similarity":
                ranking = self.similarity_ranking(f, [*inside, best])
            c.update(best_block=best, stage1_val_auprc=finetuned, stage2_ranking=ranking)
            self._tie(fraction, tie_at_cut(blocks, 1, "finetuned blocks by val AUPRC"))
            if config.search == "halving":
                units, c["stage2_halving"] = self.halving("stage2", inside, config.top_units, f)
            elif config.search == "exhaustive":
                units = list(inside)
            else:
                units = [a for a, _ in ranking[: config.top_units]]
                self._tie(fraction, tie_at_cut(ranking, config.top_units, "units by " + SIGNALS[config.search]))
            c["units"] = units
            for seed in config.seed_list:
                for a in units:
                    self.execute(Run("stage2", Arm("truncated", a), f, seed))
        self.save()

    def similarity_ranking(self, fraction: float, sequence: list[str]) -> list[tuple[str, float]]:
        """The similarity search's ranking of ``sequence`` but its last (shallow to deep): the full
        network finetuned for :func:`~tlmic_feats.study.search.short_steps` at every seed, its
        feature reuse per cut point on the validation images (mean over seeds), and each cut point
        scored by the drop to the next (:func:`~tlmic_feats.study.search.reuse_drop_scores`)."""
        from ..finetune.reuse import stored_feature_reuse

        budget = self.budgets[fraction][1]
        steps = short_steps(budget.steps, budget.eval_every)
        per_seed = []
        for seed in self.config.seed_list:
            run = Run("similarity", Arm("full"), fraction, seed, steps=steps)
            run_dir = self.out / "runs" / run.id
            if not self.execute(run) or not (run_dir / "metrics.json").is_file():
                continue
            reuse, spent = stored_feature_reuse(run_dir, method=REUSE_METHOD, split=REUSE_SPLIT)
            if spent:
                seconds = self.state["compute"].setdefault("similarity_seconds", {})
                seconds[f"{fraction:g}"] = round(seconds.get(f"{fraction:g}", 0.0) + spent, 2)
            per_seed.append(reuse.by_address())
        mean = {
            a: float(np.mean([r[a] for r in per_seed if a in r])) for a in sequence if any(a in r for r in per_seed)
        }
        return rank_by_validation(reuse_drop_scores(mean, sequence))

    def halving(self, stage: str, candidates: list[str], keep: int, fraction: float) -> tuple[list[str], list[dict]]:
        """Successive halving of ``candidates`` down to ``keep`` (:func:`~tlmic_feats.study.search.halving_schedule`):
        every seed's run of each candidate still in trains to the rung's step and pauses there;
        the better ones on validation resume. Returns the candidates that trained the full budget
        and the rungs (their rankings); none when budget or time stopped it before the end."""
        budget = self.budgets[fraction][1]
        schedule = halving_schedule(len(candidates), keep, budget.steps, budget.eval_every)
        alive, rungs = list(candidates), []
        for j, (steps, _) in enumerate(schedule):
            runs = {a: [Run(stage, Arm("truncated", a), fraction, s) for s in self.config.seed_list] for a in alive}
            until = steps if steps < budget.steps else 0
            ran = [self.execute(r, until=until) for rs in runs.values() for r in rs]
            if not all(ran):  # budget or time (listed as not run): a rerun continues where it stopped
                self.not_run.append(f"successive halving at fraction {fraction:g} ({stage}, rung at step {steps})")
                return [], rungs
            if j == len(schedule) - 1:
                break
            histories = {a: [run_history(self.out / "runs" / r.id) for r in rs] for a, rs in runs.items()}
            rung = halving_rung(histories, steps, schedule[j + 1][1])
            rungs.append(rung)
            alive = rung["kept"]
        return alive, rungs

    def _tie(self, fraction: float, tie: dict | None) -> None:
        """Record a tie the tie rule broke in the fraction's choices, and say so."""
        if tie is None:
            return
        ties = self.state["choices"][f"{fraction:g}"].setdefault("ties", [])
        if tie not in ties:
            ties.append(tie)
        self.log(f"study: at fraction {fraction:g}, {describe_tie(tie)}")

    def _finetuned_blocks(self, blocks: list[str], fraction: float) -> dict[str, float]:
        """Mean validation AUPRC of each stage-1 block whose every possible run has finished."""
        finetuned = {}
        for a in blocks:
            ids = [Run("stage1", Arm("truncated", a), fraction, s).id for s in self.config.seed_list]
            possible = [i for i in ids if self.state["runs"].get(i, {}).get("status") != "impossible"]
            runs = self.out / "runs"
            vals = [run_val_auprc(runs / i) for i in possible if (runs / i / "metrics.json").is_file()]
            if possible and len(vals) == len(possible):
                finetuned[a] = float(np.mean(vals))
        return finetuned

    def execute(self, run: Run, until: int = 0) -> bool:
        """Run (or resume, or skip as finished) one finetuning run; False when budget or time forbid it.
        ``until``: pause it at that evaluation step instead of finishing (successive halving; a
        paused run resumes to the same weights as one never paused)."""
        from ..finetune.trainer import run_finetune

        run_dir = self.out / "runs" / run.id
        record = self.state["runs"].get(run.id, {})
        if (run_dir / "metrics.json").is_file():
            if record.get("status") != "done":
                self._record(run, "done", seconds=record.get("seconds"))
            return True
        if until and record.get("status") == "paused" and record.get("step", 0) >= until:
            return True
        why = self._why_not(record)
        if why:
            self.not_run.append(f"{run.id} ({why})")
            return False
        self._record(run, "started", seconds=record.get("seconds"))
        self.log(f"study: {run.stage} {run.id}" + (f" (to step {until})" if until else ""))

        def pause(step: int) -> None:
            if until and step >= until:
                raise _Paused(step)

        t0 = time.perf_counter()
        before = float(record.get("seconds") or 0)
        try:
            run_finetune(
                finetune_config(self.config, run, self.out, self.backbone, self.budgets[run.fraction][1]),
                resume=(run_dir / "run.json").is_file(),
                progress=self.progress,
                log=self.log,
                on_eval=pause if until else None,
            )
        except SubsetTooSmallError as e:  # a tiny fraction without one class: say so, go on
            self._record(run, "impossible", why=str(e))
            self.not_run.append(f"{run.id} ({e})")
            return False
        except _Paused as p:
            self._record(run, "paused", step=p.step, seconds=round(time.perf_counter() - t0 + before, 2))
            return True
        self._record(run, "done", seconds=round(time.perf_counter() - t0 + before, 2))
        if self.on_run:
            self.on_run(run.id)
        return True

    def _why_not(self, record: dict) -> str:
        """Why a run must not start now ("" when it may)."""
        if record.get("status") == "impossible":
            return record["why"]
        started = sum(1 for r in self.state["runs"].values() if r.get("status") in ("done", "started", "paused"))
        if self.budget and record.get("status") not in ("started", "paused") and started >= self.budget:
            return f"budget of {self.budget} runs"
        if self.deadline is not None and time.perf_counter() > self.deadline:
            return f"--max-minutes {self.max_minutes:g}"
        return ""

    def _record(self, run: Run, status: str, **extra) -> None:
        self.state["runs"][run.id] = {**run.record(), "status": status, **extra}
        self.save()


class _Paused(Exception):
    """Raised at the evaluation where successive halving pauses a run (its resume state is written)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"paused at step {step}")
        self.step = step
