"""The searches judged on exhaustive results: ``search.csv`` and the report's section.

When every block end of a fraction was finetuned at every seed (``--search exhaustive``, or any
study extended to it), every search's choice at that fraction can be read off those runs without
training anything again (:func:`judge_fraction`):

- ``probe``: the top ``top_blocks`` block ends by the probes' validation AUPRC;
- ``similarity``: the top ``top_blocks`` by the drop in feature reuse after a short finetune (the
  short runs an exhaustive study makes, ``runs/full-f<f>-s<s>-b<steps>/feature_reuse.csv``);
- ``halving``: successive halving replayed from the runs' ``history.csv`` (a halving run is the
  exhaustive run paused at its rung, :mod:`~tlmic_feats.study.search`, so its evaluations are
  these, exactly);
- ``exhaustive``: every block end.

Each hands over the cut point with the best mean validation AUPRC among those it finetuned and
full finetuning (:func:`~tlmic_feats.study.search.choose_on_validation`). Per search and metric:
Spearman's rho and Kendall's tau (scipy) between its signal and the finetuned test metric (means
over seeds) over the candidate block ends; its regret, the test metric of its choice minus that of
the best block end (the best by mean test metric over seeds, full finetuning included), mean over
seeds, with the 95% interval of the verdicts' seed-and-image bootstrap
(:func:`~tlmic_feats.metrics.verdicts.compare_runs`, paired by seed); and its measured compute:
the seconds of training steps and validations (``history.csv``) of every run it needs, up to the
step it trains it to (full finetuning included), plus its signal's own cost (probe: extraction and
probing, shared evenly by the fractions; similarity: the short finetunes and the CKA), against
the exhaustive search's.

The best block end is picked on the same test images it is scored on, so the regret of a search
that missed it is, if anything, overstated (the winner's curse); the interval covers training runs
and test images, not that selection.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ...runtime.files import atomic_path
from ..arms import Arm, Run, probe_ranking, rank_by_validation, run_history
from ..search import (
    REUSE_METHOD,
    REUSE_SPLIT,
    SEARCHES,
    SIGNALS,
    choose_on_validation,
    halving_choice,
    halving_schedule,
    loop_seconds,
    reuse_drop_scores,
    short_steps,
    steps_trained,
    val_auprc_at,
)
from .summary import aligned_test_scores

SEARCH_COLUMNS = (
    "fraction",
    "search",
    "signal",
    "metric",
    "rho",
    "rho_p",
    "tau",
    "tau_p",
    "finetuned",
    "chosen",
    "best",
    "chosen_test",
    "best_test",
    "regret",
    "regret_lo",
    "regret_hi",
    "seeds",
    "steps",
    "seconds",
    "signal_seconds",
    "exhaustive_seconds",
    "saving",
)
METRICS = ("auroc", "auprc")


def exhaustive_complete(rows: list[dict], ends: list[str], fraction: float, seeds: tuple[int, ...]) -> bool:
    """Whether ``rows`` (``results.csv``) hold every block end of ``ends`` (the deepest: full
    finetuning) finetuned at every seed at ``fraction``."""
    have = {(r["arm"], r["seed"]) for r in rows if r["fraction"] == fraction and r["stage"] != "probe"}
    names = [str(Arm("truncated", a)) for a in ends[:-1]] + [str(Arm("full"))]
    return bool(seeds) and all((n, s) in have for n in names for s in seeds)


def judge_fraction(
    out: Path,
    rows: list[dict],
    fraction: float,
    ends: list[str],
    seeds: tuple[int, ...],
    budget,
    label_kind: str,
    *,
    top_blocks: int,
    signal_seconds: dict[str, float] | None = None,
    n_resamples: int = 1000,
    rope: float = 0.01,
) -> list[dict]:
    """Every search judged at ``fraction`` on its exhaustive runs (:func:`exhaustive_complete` must
    hold): one row of :data:`SEARCH_COLUMNS` per search and metric. ``ends``: the block ends, the
    deepest being full finetuning's; ``budget``: the fraction's
    :class:`~tlmic_feats.finetune.budget.StepBudget`; ``signal_seconds``: the probe and
    similarity signals' own measured seconds at this fraction (beyond their runs)."""
    from ...metrics.verdicts import compare_runs

    full, candidates = ends[-1], ends[:-1]
    arm_of = {a: Arm("truncated", a) for a in candidates} | {full: Arm("full")}
    mine = [r for r in rows if r["fraction"] == fraction and r["stage"] != "probe" and r["seed"] in seeds]
    runs_of = {
        a: sorted((r for r in mine if r["arm"] == str(arm)), key=lambda r: r["seed"]) for a, arm in arm_of.items()
    }
    val = {a: float(np.mean([r["val_auprc"] for r in rs])) for a, rs in runs_of.items()}
    test = {m: {a: float(np.mean([r[m] for r in rs])) for a, rs in runs_of.items()} for m in METRICS}
    histories = {a: [run_history((out / r["predictions"]).parent) for r in rs] for a, rs in runs_of.items()}
    signals, finetuned, until = _signals(out, fraction, ends, seeds, budget, histories, val, top_blocks)
    y, scores = aligned_test_scores(out, {a: runs_of[a] for a in ends}, label_kind)
    signal_seconds = signal_seconds or {}
    seconds, steps = {}, {}
    for search in SEARCHES:
        if finetuned.get(search) is None:
            continue
        stop = until.get(search, {})  # halving: the candidates it stopped, and where
        trained = [*finetuned[search], *stop, full]
        seconds[search] = sum(loop_seconds(h, stop.get(a)) for a in trained for h in histories[a])
        seconds[search] += signal_seconds.get(search, 0.0)
        steps[search] = sum(steps_trained(h, stop.get(a)) for a in trained for h in histories[a])
        if search == "similarity":
            steps[search] += signals["similarity_steps"]
    out_rows = []
    for metric in METRICS:
        best = rank_by_validation(test[metric])[0][0]
        for search in SEARCHES:
            row = dict.fromkeys(SEARCH_COLUMNS, "")
            row.update(fraction=f"{fraction:g}", search=search, signal=SIGNALS[search], metric=metric, best=best)
            row.update(best_test=test[metric][best], seeds=" ".join(map(str, seeds)))
            if finetuned.get(search) is None:
                out_rows.append(row)
                continue
            chosen = choose_on_validation(finetuned[search], full, val)
            row.update(rho_tau(signals[search], test[metric], candidates))
            row.update(finetuned=" ".join(finetuned[search]), chosen=chosen, chosen_test=test[metric][chosen])
            if chosen == best:
                row.update(regret=0.0, regret_lo=0.0, regret_hi=0.0)
            else:
                v = compare_runs(
                    y, scores[chosen], scores[best], label_kind, names=(chosen, best), seeds=list(seeds),
                    rope=rope, metrics=(metric,), n_resamples=n_resamples,
                )[metric]  # fmt: skip
                row.update(regret=v.diff, regret_lo=v.ci95[0], regret_hi=v.ci95[1])
            row.update(
                steps=steps[search],
                seconds=round(seconds[search], 2),
                signal_seconds=round(signal_seconds.get(search, 0.0), 2),
                exhaustive_seconds=round(seconds["exhaustive"], 2),
                saving=seconds["exhaustive"] / seconds[search] if seconds[search] > 0 else float("nan"),
            )
            out_rows.append(row)
    return out_rows


def _signals(out, fraction, ends, seeds, budget, histories, val, top_blocks):
    """Per search, its score of each candidate block end, what it finetunes with the full budget,
    and the step it trains each candidate to (halving; None: the full budget)."""
    from ...finetune.reuse import read_feature_reuse
    from ...runtime.errors import UsageError

    candidates = ends[:-1]
    probe_file = out / "probes" / "results.json"
    probe_rows = json.loads(probe_file.read_text())["rows"] if probe_file.is_file() else []
    signals: dict = {"exhaustive": {a: val[a] for a in candidates}}
    finetuned: dict[str, list[str] | None] = {"exhaustive": list(candidates)}
    until: dict[str, dict[str, int]] = {}
    ranking = probe_ranking(probe_rows, fraction, candidates) if probe_rows else []
    signals["probe"] = dict(ranking)
    finetuned["probe"] = [a for a, _ in ranking[:top_blocks]] if probe_rows else None
    short = short_steps(budget.steps, budget.eval_every)
    reuse, short_histories = [], []
    for s in seeds:
        run_dir = out / "runs" / Run("similarity", Arm("full"), fraction, s, steps=short).id
        try:
            reuse.append(read_feature_reuse(run_dir, method=REUSE_METHOD, split=REUSE_SPLIT).by_address())
            short_histories.append(run_history(run_dir))
        except UsageError:
            break
    if len(reuse) == len(seeds):
        mean = {a: float(np.mean([r[a] for r in reuse if a in r])) for a in ends if any(a in r for r in reuse)}
        signals["similarity"] = reuse_drop_scores(mean, ends)
        ranked = rank_by_validation(signals["similarity"])
        finetuned["similarity"] = [a for a, _ in ranked[:top_blocks]]
        signals["similarity_steps"] = sum(steps_trained(h) for h in short_histories)
    else:
        signals["similarity"], finetuned["similarity"] = {}, None
    schedule = halving_schedule(len(candidates), top_blocks, budget.steps, budget.eval_every)
    survivors, rungs = halving_choice({a: histories[a] for a in candidates}, schedule)
    first = schedule[0][0]
    signals["halving"] = {a: float(np.mean([val_auprc_at(h, first) for h in histories[a]])) for a in candidates}
    finetuned["halving"] = survivors
    reached = {a: first for a in candidates}
    for rung, (steps, _) in zip(rungs, schedule[1:], strict=True):
        reached.update({a: steps for a in rung["kept"]})
    until["halving"] = {a: s for a, s in reached.items() if a not in survivors}
    return signals, finetuned, until


def rho_tau(signal: dict[str, float], test: dict[str, float], candidates: list[str]) -> dict:
    """Spearman's rho and Kendall's tau (scipy.stats, with their p-values) between a search's signal
    and the finetuned test metric over ``candidates``; NaN when either is constant or missing."""
    from scipy.stats import kendalltau, spearmanr

    pairs = [(signal.get(a, np.nan), test[a]) for a in candidates]
    x = np.array([p[0] for p in pairs], float)
    t = np.array([p[1] for p in pairs], float)
    ok = np.isfinite(x) & np.isfinite(t)
    nan = float("nan")
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(t[ok]) == 0:
        return {"rho": nan, "rho_p": nan, "tau": nan, "tau_p": nan}
    rho = spearmanr(x[ok], t[ok])
    tau = kendalltau(x[ok], t[ok])
    return {
        "rho": float(rho.statistic),
        "rho_p": float(rho.pvalue),
        "tau": float(tau.statistic),
        "tau_p": float(tau.pvalue),
    }


def judge_searches(out: Path, config, backbone, rows: list[dict], state: dict, label_kind: str, *, top_blocks=None):
    """:func:`judge_fraction` at every fraction whose exhaustive results are complete: ``{fraction:
    rows}`` (empty when none is). ``top_blocks``: the guided searches' number of block ends (default:
    the study's)."""
    from ...backbones.cutpoints import block_ends
    from ...finetune.budget import StepBudget

    ends = block_ends(backbone)
    seeds = config.seed_list
    compute = state.get("compute", {})
    probe_share = (float(compute.get("extract_seconds", 0.0)) + float(compute.get("probe_seconds", 0.0))) / max(
        1, len(config.fractions)
    )
    judged = {}
    for fraction in sorted({float(f) for f in config.fractions}):
        c = state.get("choices", {}).get(f"{fraction:g}", {})
        if "budget" not in c or not exhaustive_complete(rows, ends, fraction, seeds):
            continue
        budget = StepBudget(**c["budget"])
        sim = float(compute.get("similarity_seconds", {}).get(f"{fraction:g}", 0.0))
        short = short_steps(budget.steps, budget.eval_every)
        short_loop = sum(
            loop_seconds(run_history(out / "runs" / Run("similarity", Arm("full"), fraction, s, steps=short).id))
            for s in seeds
        )
        judged[fraction] = judge_fraction(
            out,
            rows,
            fraction,
            ends,
            seeds,
            budget,
            label_kind,
            top_blocks=top_blocks or config.top_blocks,
            signal_seconds={"probe": probe_share, "similarity": sim + short_loop},
            n_resamples=config.bootstrap,
            rope=config.rope,
        )
    return judged


def write_search_csv(path: Path, judged: dict) -> None:
    """``search.csv``: one row per fraction, search and metric (:data:`SEARCH_COLUMNS`)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SEARCH_COLUMNS)
        w.writeheader()
        for rows in judged.values():
            w.writerows(rows)


def search_section(judged: dict, top_blocks: int) -> list[str]:
    """The report's "Searches judged" section: per fraction, every search's rank correlations,
    choice, regret with its interval and compute against the exhaustive search's."""
    if not judged:
        return []
    lines = [
        "## Searches judged on the exhaustive runs",
        "",
        f"Every block end was finetuned at every seed, so each search's choice is read off these runs (the guided "
        f"searches finetune their top {top_blocks} block end(s) beside full finetuning and keep the best on "
        "validation; halving replayed from the runs' history.csv). Regret: the choice's test metric minus the "
        "best block end's (full finetuning included), mean over seeds [95% CI over training runs and test images, "
        "the verdicts' bootstrap]; rho / tau: Spearman / Kendall between the search's signal and the finetuned test "
        "metric over the candidate block ends; seconds: measured training and validation of the runs it needs "
        "(to the step it trains them to) and its signal's own cost.",
        "",
    ]
    for fraction, rows in judged.items():
        by = {(r["search"], r["metric"]): r for r in rows}
        best = {m: by[("exhaustive", m)] for m in METRICS}
        lines += [
            f"### {fraction:g} of the training set",
            "",
            f"Best block end on test: {best['auroc']['best']} (AUROC {best['auroc']['best_test']:.3f}), "
            f"{best['auprc']['best']} (AUPRC {best['auprc']['best_test']:.3f}).",
            "",
            "| search | signal | finetuned | chosen | regret AUROC | regret AUPRC | rho / tau (AUROC) | steps "
            "| seconds | "
            "exhaustive / search |",
            "| --- | --- | --- | --- | --- | --- | --- | ---: | ---: | ---: |",
        ]
        for search in SEARCHES:
            a, p = by[(search, "auroc")], by[(search, "auprc")]
            if a["chosen"] == "":
                lines.append(f"| {search} | {a['signal']} | not judged (its signal is missing) | | | | | | | |")
                continue
            lines.append(
                f"| {search} | {a['signal']} | {a['finetuned']} + full | {a['chosen']} | {_regret(a)} | {_regret(p)} | "
                f"{_num(a['rho'])} / {_num(a['tau'])} | {a['steps']} | {a['seconds']:.0f} | {a['saving']:.1f}x |"
            )
        lines.append("")
    return lines


def _regret(r: dict) -> str:
    return f"{r['regret']:+.3f} [{r['regret_lo']:+.3f}, {r['regret_hi']:+.3f}]"


def _num(v) -> str:
    return "n/a" if v == "" or not np.isfinite(v) else f"{v:+.2f}"
