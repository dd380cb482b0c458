"""The truncation searches: halving's schedule, each search's choice on a synthetic exhaustive study
against hand-computed answers, rank correlations against direct formulas, regret against
scikit-learn and the verdicts' bootstrap, and a tiny study searched exhaustively end to end."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from tlmic_feats.finetune.budget import StepBudget
from tlmic_feats.finetune.outputs import write_history
from tlmic_feats.finetune.reuse import FeatureReuse, write_feature_reuse
from tlmic_feats.metrics.predictions import write_predictions
from tlmic_feats.metrics.verdicts import compare_runs
from tlmic_feats.study.arms import Arm, Run
from tlmic_feats.study.report.search import judge_fraction, rho_tau
from tlmic_feats.study.search import (
    choose_on_validation,
    halving_choice,
    halving_schedule,
    reuse_drop_scores,
    short_steps,
    val_auprc_at,
)


@pytest.mark.parametrize(
    "n, keep, total, every",
    [(8, 1, 320, 10), (7, 1, 120, 15), (7, 2, 120, 15), (16, 1, 1600, 25), (5, 2, 400, 50), (3, 1, 40, 10)],
)
def test_halving_doubles_the_steps_and_halves_the_candidates_down_to_keep(n, keep, total, every):
    # directly: halve (rounding up) until keep remain; the last rung trains the whole budget, each
    # rung before it half the next one's steps
    counts = [n]
    while counts[-1] > keep:
        counts.append(max(keep, -(-counts[-1] // 2)))
    steps = [total // 2 ** (len(counts) - 1 - j) for j in range(len(counts))]
    assert halving_schedule(n, keep, total, every) == list(zip(steps, counts, strict=True))


def test_halving_rungs_sit_on_evaluations_and_a_pool_no_larger_than_keep_trains_the_budget():
    assert halving_schedule(7, 1, 100, 5) == [(15, 7), (25, 4), (50, 2), (100, 1)]  # 12.5 -> 15: the next evaluation
    assert halving_schedule(2, 2, 100, 5) == [(100, 2)] and halving_schedule(1, 3, 100, 5) == [(100, 1)]
    assert short_steps(120, 15) == 15 and short_steps(100, 20) == 20


def _h(*values):
    """A history with evaluations every 10 steps, every one an improvement."""
    return [
        {"step": 10 * (i + 1), "val_auprc": v, "best": True, "seconds": 1.0, "eval_seconds": 0.5}
        for i, v in enumerate(values)
    ]


def test_halving_replays_rung_by_rung_with_seed_means_and_ties_to_the_deeper():
    histories = {
        "1": [_h(0.9, 0.6), _h(0.7, 0.6)],  # rung 1 mean 0.8
        "2": [_h(0.5, 0.9), _h(0.5, 0.9)],  # 0.5: out at rung 1
        "3": [_h(0.8, 0.6), _h(0.8, 0.6)],  # 0.8: ties with 1, goes on as the deeper
        "4": [_h(0.9, 0.9), _h(0.9, 0.9)],  # 0.9
    }
    survivors, rungs = halving_choice(histories, [(10, 4), (20, 2), (40, 1)])
    assert rungs[0]["kept"] == ["4", "3"] and [a for a, _ in rungs[0]["ranking"]] == ["4", "3", "1", "2"]
    assert rungs[1]["kept"] == ["4"] and survivors == ["4"]
    # what a run keeps when stopped: its last improving evaluation up to there
    h = [{"step": 10, "val_auprc": 0.7, "best": True}, {"step": 20, "val_auprc": 0.6, "best": False}]
    assert val_auprc_at(h, 20) == 0.7 and val_auprc_at(h, 10) == 0.7 and math.isnan(val_auprc_at(h, 5))


def test_similarity_scores_the_drop_to_the_next_cut_point_and_the_choice_is_made_on_validation():
    drops = reuse_drop_scores({"1": 0.99, "2": 0.95, "3": 0.6, "4": 0.5}, ["1", "2", "3", "4"])
    assert drops == pytest.approx({"1": 0.04, "2": 0.35, "3": 0.1})
    assert math.isnan(reuse_drop_scores({"1": 0.9}, ["1", "2"])["1"])
    assert choose_on_validation(["2"], "4", {"2": 0.8, "4": 0.75}) == "2"
    assert choose_on_validation(["1"], "4", {"1": 0.7, "4": 0.75}) == "4"
    assert choose_on_validation(["2"], "4", {"2": 0.8, "4": 0.8}) == "4"  # a tie goes to the deeper


def _ranks(v):
    order = np.argsort(v, kind="mergesort")
    r = np.empty(len(v))
    r[order] = np.arange(len(v))
    for x in np.unique(v):  # ties: their mean rank
        r[v == x] = r[v == x].mean()
    return r


@pytest.mark.parametrize("seed", range(5))
def test_rank_correlations_match_their_definitions(seed):
    rng = np.random.default_rng(seed)
    n = 7
    x = np.round(rng.random(n), 1)  # ties likely
    t = rng.random(n)
    names = [str(i + 1) for i in range(n)]
    got = rho_tau(dict(zip(names, x, strict=True)), dict(zip(names, t, strict=True)), names)
    rx, rt = _ranks(x), _ranks(t)
    assert got["rho"] == pytest.approx(np.corrcoef(rx, rt)[0, 1], abs=1e-12)
    # Kendall's tau-b from the pairs: (concordant - discordant) / sqrt((n0 - ties x)(n0 - ties t))
    c = d = tx = tt = 0
    for i in range(n):
        for j in range(i + 1, n):
            s = np.sign(x[i] - x[j]) * np.sign(t[i] - t[j])
            c, d = c + (s > 0), d + (s < 0)
            tx, tt = tx + (x[i] == x[j]), tt + (t[i] == t[j])
    n0 = n * (n - 1) / 2
    assert got["tau"] == pytest.approx((c - d) / math.sqrt((n0 - tx) * (n0 - tt)), abs=1e-12)
    assert np.isnan(rho_tau({"1": 1, "2": 1, "3": 1}, {"1": 0.1, "2": 0.2, "3": 0.3}, ["1", "2", "3"])["rho"])


# --- a synthetic exhaustive study: block ends 1, 2, 3 and full finetuning (4), 3 seeds ------------

SEEDS = (0, 1, 2)
ENDS = ["1", "2", "3", "4"]
BUDGET = StepBudget(steps=40, eval_every=10, warmup_steps=2, batch_size=8, steps_per_epoch=2.0, policy="steps")
STRENGTH = {"1": 0.6, "2": 2.0, "3": 1.2, "4": 0.9}  # test: block end 2 separates best
VAL = {"1": 0.70, "2": 0.80, "3": 0.85, "4": 0.75}  # finetuned val AUPRC: 3 looks best, 2 second
PROBE = {"1": 0.90, "2": 0.60, "3": 0.50}  # the probes rank 1 first
REUSE = {"1": 0.99, "2": 0.95, "3": 0.60, "4": 0.50}  # the largest drop after 2
HALVING = {"1": (0.9, 0.6, 0.6, 0.6), "2": (0.5, 0.9, 0.9, 0.9), "3": (0.7, 0.8, 0.8, 0.8)}  # 1, 3 then 3


def _synthetic_study(out):
    rng = np.random.default_rng(0)
    n = 60
    ids = np.array([f"img{i:02d}" for i in range(n)])
    y = np.r_[np.zeros(35), np.ones(25)]
    rows = []
    for a in ENDS:
        arm = Arm("full") if a == "4" else Arm("truncated", a)
        for s in SEEDS:
            run = Run("stage1", arm, 1.0, s)
            scores = y * STRENGTH[a] + rng.normal(size=n)
            path = out / "runs" / run.id / "predictions.csv"
            path.parent.mkdir(parents=True)
            write_predictions(
                path, ids=ids, labels=y[:, None], rows={"test": np.arange(n)}, scores={"test": scores},
                label_kind="binary", label_names=["neg", "pos"],
            )  # fmt: skip
            write_history(path.parent / "history.csv", _h(*HALVING.get(a, (VAL[a],) * 4)))
            rows.append(
                {"stage": "stage1", "arm": str(arm), "fraction": 1.0, "seed": s, "val_auprc": VAL[a],
                 "auroc": roc_auc_score(y, scores), "auprc": average_precision_score(y, scores),
                 "predictions": str(path.relative_to(out)), "_scores": scores}
            )  # fmt: skip
    short = Run("similarity", Arm("full"), 1.0, 0, steps=10)
    for s in SEEDS:
        d = out / "runs" / Run("similarity", Arm("full"), 1.0, s, steps=short.steps).id
        d.mkdir(parents=True)
        write_history(d / "history.csv", _h(0.5))
        jitter = {a: v + 0.01 * (s - 1) for a, v in REUSE.items()}  # the seed mean is REUSE
        write_feature_reuse(FeatureReuse(d, "cka", "val", 20, tuple(jitter), tuple(jitter.values())))
    (out / "probes").mkdir()
    probe_rows = [
        {"layer": a, "fraction": 1.0, "control": "none", "val_auprc": v + 0.02 * (s - 1)}
        for a, v in PROBE.items()
        for s in SEEDS
    ]
    import json

    (out / "probes" / "results.json").write_text(json.dumps({"rows": probe_rows}))
    return y, rows


def test_each_search_chooses_as_computed_by_hand_and_its_regret_is_the_seed_mean_with_the_verdicts_interval(tmp_path):
    y, rows = _synthetic_study(tmp_path)
    judged = judge_fraction(
        tmp_path, rows, 1.0, ENDS, SEEDS, BUDGET, "binary",
        top_blocks=1, signal_seconds={"probe": 2.0, "similarity": 3.0}, n_resamples=300,
    )  # fmt: skip
    by = {(r["search"], r["metric"]): r for r in judged}
    # by hand: probe finetunes 1 (val 0.70 < full's 0.75: full is handed over); similarity 2 (drop 0.35);
    # halving 1, 2, 3 at step 10 -> 1 (0.9), 3 (0.7) go on -> 3 (0.8 > 0.6) trains the budget; exhaustive: 3
    chosen = {"probe": ("1", "4"), "similarity": ("2", "2"), "halving": ("3", "3"), "exhaustive": ("1 2 3", "3")}
    for search, (finetuned, pick) in chosen.items():
        assert (by[(search, "auroc")]["finetuned"], by[(search, "auroc")]["chosen"]) == (finetuned, pick)
    scores = {a: [r["_scores"] for r in rows if r["arm"] == (f"t{a}" if a != "4" else "full")] for a in ENDS}
    for metric, fn in (("auroc", roc_auc_score), ("auprc", average_precision_score)):
        per_seed = {a: np.array([fn(y, s) for s in scores[a]]) for a in ENDS}
        best = max(ENDS, key=lambda a: per_seed[a].mean())
        for search in chosen:
            r = by[(search, metric)]
            assert r["best"] == best == "2"
            assert r["regret"] == pytest.approx((per_seed[r["chosen"]] - per_seed[best]).mean(), abs=1e-12)
            if r["chosen"] != best:
                v = compare_runs(y, scores[r["chosen"]], scores[best], metrics=(metric,), n_resamples=300)[metric]
                assert (r["regret_lo"], r["regret_hi"]) == pytest.approx(v.ci95, abs=1e-12)
                assert r["regret_lo"] < r["regret"] < 0
            else:
                assert r["regret"] == r["regret_lo"] == r["regret_hi"] == 0
    # rank correlations over the candidates 1, 2, 3 against the test means (2 > 3 > 1)
    assert by[("probe", "auroc")]["rho"] == pytest.approx(-0.5)  # probe order 1 > 2 > 3
    assert by[("similarity", "auroc")]["rho"] == pytest.approx(1.0)  # drops: 2 > 3 > 1
    assert by[("exhaustive", "auroc")]["rho"] == pytest.approx(0.5)  # val: 3 > 2 > 1
    # compute: 1.5 s and 10 steps per evaluation of 10 steps; every search runs full finetuning
    per_run, seeds = 6.0, len(SEEDS)
    expect = {
        "exhaustive": (4 * per_run * seeds, 4 * 40 * seeds),
        "probe": (2 * per_run * seeds + 2.0, 2 * 40 * seeds),
        "similarity": (2 * per_run * seeds + 3.0, 2 * 40 * seeds + 10 * seeds),
        "halving": ((3.0 + 1.5 + 6.0 + 6.0) * seeds, (20 + 10 + 40 + 40) * seeds),  # 1 stops at 20, 2 at 10
    }
    for search, (seconds, steps) in expect.items():
        r = by[(search, "auroc")]
        assert (r["seconds"], r["steps"]) == (pytest.approx(seconds), steps)
        assert r["saving"] == pytest.approx(expect["exhaustive"][0] / seconds)


@pytest.mark.slow
def test_a_halving_study_extended_to_exhaustive_judges_every_search_on_the_same_runs(tmp_path):
    from tlmic_feats.data.phantom import PhantomConfig, make_phantom_dataset
    from tlmic_feats.data.readers import DataConfig
    from tlmic_feats.runtime.options import from_flat
    from tlmic_feats.study.config import StudyConfig
    from tlmic_feats.study.run import run_study

    data = make_phantom_dataset(tmp_path / "data", PhantomConfig(n_train=24, n_val=16, n_test=16, size=64))

    def config(search):
        return from_flat(
            StudyConfig, data=DataConfig(str(data), format="imagefolder"), backbone="resnet18", weights="random:3",
            input_size=64, fractions=(1.0,), seeds=2, top_blocks=1, top_units=1, baselines=(), scratch=False,
            probe_models=("logreg",), steps=4, eval_every=1, batch_size=8, bootstrap=50, search=search,
            out=str(tmp_path / "study"), store=str(tmp_path / "store.zarr"),
        )  # fmt: skip

    stopped = run_study(config("halving"), budget=2, progress=False)  # the first rung cannot finish
    assert any(x.startswith("successive halving at fraction 1") for x in stopped.not_run)
    assert not [r for r in stopped.rows if r["stage"] != "probe"]  # nothing finished: no choice made blind
    halving = run_study(config("halving"), progress=False)  # a rerun continues it
    c = halving.choices["1"]
    assert [r["steps"] for r in c["stage1_halving"]] == [1, 2]  # 3 block ends: rungs at 1, 2, then 4 steps
    paused = {k for k, v in halving_state(halving.out)["runs"].items() if v["status"] == "paused"}
    assert len(paused) == 2 * 2  # two block ends stopped early, at both seeds
    assert not (halving.out / "search.csv").exists()  # nothing to judge against yet

    result = run_study(config("exhaustive"), progress=False)
    assert not result.not_run
    state = halving_state(result.out)
    assert all(v["status"] == "done" for v in state["runs"].values())  # the paused runs resumed and finished
    units = result.choices["1"]["units"]
    assert units and all(u.startswith(result.choices["1"]["best_block"] + ".") for u in units)
    with open(result.out / "search.csv") as f:
        judged = list(csv.DictReader(f))
    assert {(r["search"], r["metric"]) for r in judged} == {
        (s, m) for s in ("probe", "similarity", "halving", "exhaustive") for m in ("auroc", "auprc")
    }
    by = {(r["search"], r["metric"]): r for r in judged}
    # replayed from the exhaustive runs' history.csv, halving finetunes what the halving study did
    assert by[("halving", "auroc")]["finetuned"] == " ".join(c["blocks"])
    assert by[("exhaustive", "auroc")]["finetuned"] == "1 2 3" and float(by[("exhaustive", "auroc")]["saving"]) == 1
    for r in judged:
        assert float(r["regret_lo"]) <= float(r["regret"]) <= min(0.0, float(r["regret_hi"])) + 1e-12
        assert 0 < float(r["seconds"]) <= float(r["exhaustive_seconds"]) + float(r["signal_seconds"]) + 1e-9
    assert "## Searches judged on the exhaustive runs" in result.report.read_text()


def halving_state(out):
    import json

    return json.loads((out / "study.json").read_text())


@pytest.mark.parametrize("search", ["probe", "exhaustive", "halving", "similarity"])
def test_the_plan_lists_every_run_each_search_makes(tmp_path, search):
    """The plan's runs per search, counted by hand: 4 block ends but the deepest, 2 seeds, one
    fraction, 120 steps evaluated every 15, the top block end finetuned to the end."""
    from tlmic_feats.data.readers import DataConfig
    from tlmic_feats.study.config import StudyConfig
    from tlmic_feats.study.plan import planned_runs

    config = StudyConfig(
        data=DataConfig(str(tmp_path)), search=search, fractions=(1.0,), seeds=2, top_blocks=1, top_units=0,
        baselines=(), scratch=False,
    )  # fmt: skip
    budget = StepBudget(steps=120, eval_every=15, warmup_steps=0, batch_size=8, steps_per_epoch=10.0, policy="steps")
    blocks = ["1", "2", "3", "4"]
    runs = list(planned_runs(config, {}, max_blocks=4, max_units=3, candidates=blocks, budgets={1.0: budget}))
    stage1 = [r for r in runs if r.stage == "1"]
    short = [r for r in runs if r.stage == "similarity"]
    assert sum(r.name == "full" for r in stage1) == 2 and not [r for r in runs if r.stage == "2"]
    assert len(short) == (2 if search in ("similarity", "exhaustive") else 0)
    assert all(r.steps == short_steps(120, 15) and r.arm == Arm("full") for r in short)
    truncated = [r for r in stage1 if r.name != "full"]
    if search == "exhaustive":
        assert sorted((str(r.arm), r.seed) for r in truncated) == sorted(
            (str(Arm("truncated", b)), s) for b in blocks for s in (0, 1)
        )
    elif search == "halving":
        schedule = halving_schedule(4, 1, 120, 15)
        assert sum(r.steps for r in truncated) == 2 * sum(
            (steps - before) * count for (steps, count), before in zip(schedule, [0] + [s for s, _ in schedule])
        )
        assert {r.arm for r in truncated if not r.resumed} == {Arm("truncated", b) for b in blocks}
    else:  # probe and similarity: the chosen block end, not known before the study chooses it
        assert [(r.name, r.arm, r.steps) for r in truncated] == [("block#1", None, 0)] * 2


def test_the_compute_section_states_a_saving_only_when_truncated_networks_were_finetuned():
    from tlmic_feats.study.report.text import compute_section

    comp = dict(
        disk_estimate={"total": 10}, disk_measured={"total": 5}, search="probe", extract_seconds=3.0,
        probe_seconds=2.0, search_runs=0, search_measured=0.0, search_estimate=0.0, exhaustive_runs=21,
        exhaustive_estimate=420.0, other_runs=3, other_measured=60.0,
    )  # fmt: skip
    text = "\n".join(compute_section(comp))
    assert "nan" not in text and "finetuned no truncated network yet" in text and "21 runs" in text
    text = "\n".join(compute_section(comp | dict(search_runs=3, search_measured=55.0, search_estimate=60.0)))
    assert "7.0x less finetuning compute" in text
