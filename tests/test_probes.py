"""The fixed-feature arm: probes, nested subsets, the grid runner, its outputs and report."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn import metrics as skm
from tlmic_cli.main import cli

from tlmic_feats import FeatureStore
from tlmic_feats.data.subsets import nested_subsets
from tlmic_feats.probes.config import ProbeConfig
from tlmic_feats.probes.estimators import LightGBMProbe, LogisticProbe, load_probe
from tlmic_feats.probes.grid import run_probes
from tlmic_feats.runtime.errors import StoreIncompleteError, UnknownCutPointError, UsageError
from tlmic_feats.testing.stores import SPLITS, planted_store


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe")
    store = planted_store(tmp / "s.zarr")
    run = run_probes(PLANTED_CONFIG(store=str(store.path), out=str(tmp / "run")), progress=False)
    return store, run


def PLANTED_CONFIG(**kw):
    defaults = {"fractions": (0.2, 1.0), "seeds": 2, "control": "shuffle", "permutations": 10, "bootstrap": 200}
    return ProbeConfig(**{**defaults, **kw})


def test_planted_layer_wins_with_both_models(planted_run):
    store, run = planted_run
    summary = (run.out / "summary.md").read_text()
    for model in ("logreg", "lightgbm"):
        for fraction in ("0.2", "1"):
            assert f"| {model} | {fraction} |" in summary
            line = next(ln for ln in summary.splitlines() if ln.startswith(f"| {model} | {fraction} |"))
            assert line.split("|")[4].strip() == "2", line
    from tlmic_feats.probes.report import aggregate

    for a in aggregate(run.rows):
        if a["control"] == "none":
            if a["layer"] == "2":
                assert a["auroc"] > 0.85, a
            else:
                assert a["auroc"] < 0.72, a
    assert (run.out / "layers.png").stat().st_size > 10_000


def test_permutation_null_is_at_chance_on_a_strong_signal_without_a_leak(planted_run):
    from tlmic_feats.probes.permutation import verdicts
    from tlmic_feats.probes.report import picked_layers

    _, run = planted_run
    draws = [r for r in run.rows if r["control"] == "shuffle"]
    count = {}
    for r in draws:
        count[(r["model"], r["fraction"], r["layer"])] = count.get((r["model"], r["fraction"], r["layer"]), 0) + 1
    # every layer gets the same 10 draws (the corrected p-value takes each draw's best layer)
    assert set(count.values()) == {10} and len(count) == 2 * 2 * 4
    judged = verdicts(run.rows, picked_layers(run.rows))
    assert len(judged) == 4 and all(v["at_chance"] for v in judged.values()), judged
    real = {r["layer"]: r["auroc"] for r in run.rows if r["control"] == "none" and r["layer"] == "2"}
    assert real["2"] > 0.9  # a strong signal, and still at chance
    summary = (run.out / "summary.md").read_text()
    assert summary.count("| at chance |") == 4 and "NOT at chance" not in summary
    # the real probe on the signal layer beats every draw on every layer: both p-values at their floor
    # 1 / (10 + 1), printed as such
    v = judged[("logreg", 1.0)]
    assert v["layer"] == "2" and v["p"] == v["p_corrected"] == v["p_floor"] == pytest.approx(1 / 11)
    line = next(ln for ln in summary.splitlines() if ln.startswith("| logreg | 1 | 2 ★ |"))
    assert [c.strip() for c in line.split("|")[-3:-1]] == [f"≤ {1 / 11:.3f}"] * 2
    line = next(ln for ln in summary.splitlines() if ln.startswith("| logreg | 1 | ") and "at chance" in ln)
    assert f"| 2: {v['real']:.3f} | ≤ 0.091 | ≤ 0.091 (10 draws) |" in line
    # and results.json keeps it for whoever reads the run (the study)
    doc = json.loads((run.out / "results.json").read_text())["permutation_null"]
    (kept,) = [e for e in doc["verdicts"] if (e["model"], e["fraction"]) == ("logreg", 1.0)]
    assert kept["p_corrected"] == pytest.approx(1 / 11) and kept["layer"] == "2" and kept["corrected_draws"] == 10
    assert len(doc["layers"]) == 2 * 2 * 4


def test_every_draw_has_its_own_permutation_shared_by_every_layer(planted_run):
    from tlmic_feats.probes.cells import Cell, GridContext, cell_targets

    store, run = planted_run
    rows_of = {s: np.flatnonzero(store.splits == s) for s in ("train", "val", "test")}
    ctx = GridContext(store.label_matrix, "binary", ["neg", "pos"], rows_of, store.ids, ProbeConfig(store=""), run.out)
    train = rows_of["train"]

    def labels(model="logreg", fraction=1.0, seed=0, k=0):
        return cell_targets(ctx, Cell(model, fraction, seed, "shuffle", train, permutation=k))[0][:, 0]

    first = labels()
    np.testing.assert_array_equal(first, labels())  # reproducible
    assert sorted(first) == sorted(store.labels[train])  # a permutation of the true labels
    for other in (labels(model="lightgbm"), labels(fraction=0.2), labels(seed=1), labels(k=1)):
        assert (other != first).any()
    real = cell_targets(ctx, Cell("logreg", 1.0, 0, "none", train))[0][:, 0]
    np.testing.assert_array_equal(real, store.labels[train])



def test_a_draw_permutes_every_layer_alike(tmp_path):
    """Two layers holding the same features in two arrays: each draw's probe learns the same permuted
    labels on both, so its test AUROC is the same on both (per-layer permutations made them differ)."""
    rng = np.random.default_rng(5)
    y = (rng.random(len(SPLITS)) < 0.3).astype(float)
    x = rng.normal(size=(len(SPLITS), 6)).astype(np.float32)
    x[:, 0] += 2 * y
    store = FeatureStore.from_arrays(
        tmp_path / "twin.zarr", {"1": x, "2": x.copy()}, labels=y, label_kind="binary",
        label_names=["neg", "pos"], splits=SPLITS,
    )  # fmt: skip
    config = PLANTED_CONFIG(
        store=str(store.path), models=("logreg",), fractions=(1.0,), seeds=1, permutations=5, out=str(tmp_path / "r")
    )
    draws = sorted((r for r in run_probes(config, progress=False).rows if r["control"] == "shuffle"),
                   key=lambda r: r["permutation"])  # fmt: skip
    by_layer = {a: [r["auroc"] for r in draws if r["layer"] == a] for a in ("1", "2")}
    assert len(by_layer["1"]) == 5 and len(set(by_layer["1"])) > 1
    assert by_layer["1"] == by_layer["2"]


def _wy_rows(real: dict, draws: np.ndarray, seeds: int = 2) -> list[dict]:
    """Results rows of one model x fraction: ``real[(layer, seed)]`` test AUROC of the real probes and
    ``draws`` (B, L) of the permutation draws (draw k on the training subset of seed k mod seeds)."""
    layers = sorted({a for a, _ in real})
    rows = [
        dict(model="m", fraction=1.0, layer=a, depth=int(a), array=a, control="none", seed=s, auroc=v, val_auprc=0.5)
        for (a, s), v in real.items()
    ]
    for k, scores in enumerate(draws):
        for a, v in zip(layers, scores, strict=True):
            rows.append(dict(model="m", fraction=1.0, layer=a, depth=int(a), array=a, control="shuffle",
                             seed=k % seeds, permutation=k, auroc=float(v), val_auprc=float("nan")))  # fmt: skip
    return rows


def test_layer_corrected_p_equals_a_direct_max_statistic_computation():
    """Three layers, two seeds, 9 draws: Westfall-Young's p of each layer is (1 + #{draws whose max
    over the layers reaches that layer's real probe of the draw's seed}) / (1 + 9), and the verdict's
    p_corrected is the picked layer's; the per-layer p counts that layer's own draws."""
    from tlmic_feats.probes.permutation import max_statistic_p, null_by_layer, verdicts

    rng = np.random.default_rng(11)
    draws = rng.uniform(0.3, 0.75, size=(9, 3))
    real = {("1", 0): 0.6, ("1", 1): 0.62, ("2", 0): 0.7, ("2", 1): 0.66, ("3", 0): 0.55, ("3", 1): 0.5}
    rows = _wy_rows(real, draws)
    seed = np.arange(9) % 2
    best = draws.max(axis=1)
    entries = {e["layer"]: e for e in null_by_layer(rows, {("m", 1.0): "2"})}
    for j, a in enumerate(("1", "2", "3")):
        observed = np.array([real[(a, s)] for s in seed])
        assert entries[a]["p_corrected"] == pytest.approx((1 + (best >= observed).sum()) / 10)
        assert entries[a]["p"] == pytest.approx((1 + (draws[:, j] >= observed).sum()) / 10)
        assert entries[a]["p_corrected"] >= entries[a]["p"] and entries[a]["corrected_draws"] == 9
        assert entries[a]["p_floor"] == entries[a]["p_corrected_floor"] == pytest.approx(0.1)
    v = verdicts(rows, {("m", 1.0): "2"})[("m", 1.0)]
    assert (v["layer"], v["p_corrected"], v["p"]) == ("2", entries["2"]["p_corrected"], entries["2"]["p"])
    # the leak verdict: a draw's layers share its permutation, so each draw is one value, its mean
    # over the layers (9 values, not 27)
    per_draw = draws.mean(axis=1)
    assert (v["draws"], v["layers"]) == (9, 3) and v["mean"] == pytest.approx(per_draw.mean())
    assert v["se"] == pytest.approx(per_draw.std(ddof=1) / 3)
    # the array form, against numpy written out: one observed value per layer
    null = rng.normal(size=(50, 4))
    obs = np.array([0.5, 1.5, 2.0, -1.0])
    want = [(1 + sum(null[b].max() >= o for b in range(50))) / 51 for o in obs]
    np.testing.assert_allclose(max_statistic_p(obs, null), want)
    # a draw missing on one layer is left out of the max (it is not a draw of every layer)
    partial = [r for r in rows if not (r["control"] == "shuffle" and r["permutation"] == 0 and r["layer"] == "3")]
    assert {e["corrected_draws"] for e in null_by_layer(partial, {})} == {8}


def test_layer_corrected_p_is_uniform_under_the_null_where_the_best_uncorrected_p_is_not():
    """Random labels, eight correlated layers scored on 60 test images, 99 permutations applied to all
    layers alike, 400 data sets: the corrected p of the best layer (the smallest over layers) falls
    below a in about a of the data sets; the smallest uncorrected p over layers falls below 0.05
    several times as often."""
    from tlmic_feats.metrics.scores import auroc_rows
    from tlmic_feats.probes.permutation import max_statistic_p

    rng = np.random.default_rng(0)
    n, n_layers, b, sets = 60, 8, 99, 400
    corrected, uncorrected = [], []
    for _ in range(sets):
        y = (rng.random(n) < 0.4).astype(float)
        x = 0.7 * rng.normal(size=(1, n)) + rng.normal(size=(n_layers, n))  # correlated layers, no signal
        perms = np.stack([rng.permutation(y) for _ in range(b)])
        observed = auroc_rows(np.tile(y, (n_layers, 1)), x)  # (L,)
        null = np.stack([auroc_rows(perms, np.tile(x[j], (b, 1))) for j in range(n_layers)], axis=1)  # (B, L)
        corrected.append(max_statistic_p(observed, null).min())
        uncorrected.append(((1 + (null >= observed).sum(0)) / (b + 1)).min())
    corrected, uncorrected = np.array(corrected), np.array(uncorrected)
    for a in (0.05, 0.1, 0.25, 0.5):
        share = (corrected <= a + 1e-9).mean()
        assert abs(share - a) < 3.5 * np.sqrt(a * (1 - a) / sets), (a, share)
    assert (uncorrected <= 0.05 + 1e-9).mean() > 3 * 0.05


def test_permutation_null_flags_labels_that_reach_the_fit(tmp_path, monkeypatch):
    """A leak the null exists to catch: true labels reaching the fit although the labels were shuffled
    (planted as a pipeline that joins the shuffled labels back to the rows by image id, which undoes the
    shuffle for the 60% of rows whose ids it finds). The null's mean rises far above 0.5: flagged."""
    import tlmic_feats.probes.cells as cells
    from tlmic_feats.probes.permutation import permute, verdicts
    from tlmic_feats.probes.report import picked_layers

    def rejoined_by_id(y_train, y_val, rng):
        shuffled_train, shuffled_val = permute(y_train, y_val, rng)
        found = rng.random(len(y_train)) < 0.6
        shuffled_train[found] = y_train[found]
        return shuffled_train, shuffled_val

    monkeypatch.setattr(cells, "permute", rejoined_by_id)
    store = planted_store(tmp_path / "s.zarr", n_layers=2)
    run = run_probes(PLANTED_CONFIG(store=str(store.path), fractions=(1.0,), out=str(tmp_path / "r")), progress=False)
    judged = verdicts(run.rows, picked_layers(run.rows))
    assert len(judged) == 2 and not any(v["at_chance"] for v in judged.values()), judged
    assert all(v["mean"] > 0.6 for v in judged.values())
    assert (run.out / "summary.md").read_text().count("NOT at chance") == 2


def test_a_feature_that_encodes_the_label_is_not_what_the_null_sees(tmp_path):
    """The limit, measured: a feature derived from the image id, where the id spells the class, lifts
    the real probes above 0.9; from permuted labels a probe learns it with a random sign, so the null
    stays at 0.5 (wide) and the control cannot tell this leak from a real signal."""
    from tlmic_feats.probes.permutation import verdicts
    from tlmic_feats.probes.report import picked_layers

    rng = np.random.default_rng(3)
    y = (rng.random(len(SPLITS)) < 0.3).astype(float)
    ids = np.array([f"{'pos' if v else 'neg'}-{i:04d}" for i, v in enumerate(y)])
    x = rng.normal(size=(len(SPLITS), 8)).astype(np.float32)
    x[:, 0] = [float(i.startswith("pos")) for i in ids]  # the id-derived column
    store = FeatureStore.from_arrays(
        tmp_path / "id.zarr",
        {"1": x},
        labels=y,
        label_kind="binary",
        label_names=["neg", "pos"],
        splits=SPLITS,
        ids=ids,
    )
    run = run_probes(
        PLANTED_CONFIG(store=str(store.path), fractions=(1.0,), seeds=1, permutations=20, out=str(tmp_path / "r")),
        progress=False,
    )
    assert all(r["auroc"] > 0.9 for r in run.rows if r["control"] == "none")
    judged = verdicts(run.rows, picked_layers(run.rows))
    assert all(v["at_chance"] for v in judged.values()), judged
    spread = [r["auroc"] for r in run.rows if r["control"] == "shuffle" and r["model"] == "logreg"]
    assert min(spread) < 0.2 and max(spread) > 0.8  # random signs: draws near 0 and near 1


def test_verdict_and_p_value_against_a_direct_computation():
    from scipy import stats

    from tlmic_feats.probes.permutation import null_by_layer, verdicts

    rng = np.random.default_rng(0)

    def rows(center):
        out = [
            dict(model="m", fraction=1.0, layer="1", depth=0, array="1", control="none", seed=s, auroc=0.8)
            for s in range(2)
        ]
        for k in range(30):
            out.append(
                dict(
                    model="m",
                    fraction=1.0,
                    layer="1",
                    depth=0,
                    array="1",
                    control="shuffle",
                    seed=k % 2,
                    permutation=k,
                    auroc=float(np.clip(rng.normal(center, 0.15), 0, 1)),
                )
            )
        return out

    at = rows(0.5)
    (entry,) = null_by_layer(at, {("m", 1.0): "1"})
    draws = np.array([r["auroc"] for r in at if r["control"] == "shuffle"])
    assert entry["p"] == pytest.approx((1 + (draws >= 0.8).sum()) / 31)
    assert entry["mean"] == pytest.approx(draws.mean()) and entry["picked"]
    assert entry["lo"] == pytest.approx(np.percentile(draws, 2.5))
    picked = {("m", 1.0): "1"}
    v = verdicts(at, picked)[("m", 1.0)]
    lower = draws.mean() - stats.t.ppf(0.95, 29) * draws.std(ddof=1) / np.sqrt(30)
    assert v["lower"] == pytest.approx(lower) and v["at_chance"] == (lower <= 0.5)
    assert v["p"] == v["p_corrected"] == entry["p"]  # one layer: nothing to correct for
    assert verdicts(rows(0.5), picked)[("m", 1.0)]["at_chance"]
    assert not verdicts(rows(0.62), picked)[("m", 1.0)]["at_chance"]
    assert verdicts(rows(0.38), picked)[("m", 1.0)]["at_chance"]  # below chance is not a leak


def test_every_metric_recomputes_from_saved_predictions(planted_run):
    store, run = planted_run
    for r in run.rows[::7]:
        with open(run.out / r["predictions"]) as f:
            rows = list(csv.DictReader(f))
        test = [x for x in rows if x["split"] == "test"]
        y = np.array([int(x["y"]) for x in test])
        s = np.array([float(x["score"]) for x in test])
        ids = [x["id"] for x in test]
        np.testing.assert_array_equal(ids, store.ids[store.splits == "test"])
        pred = (s >= r["threshold"][0]).astype(int)
        assert r["auroc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        assert r["auprc"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
        assert r["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
        assert r["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
        assert r["sensitivity"] == pytest.approx(skm.recall_score(y, pred), abs=1e-12)
        assert r["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0), abs=1e-12)
        if r["control"] == "none":
            assert r["auroc_lo"] <= r["auroc"] <= r["auroc_hi"]
        else:  # a permutation draw: judged by the null's spread, no bootstrap of its own
            assert np.isnan(r["auroc_lo"]) and r["permutation"] >= 0
        val = [x for x in rows if x["split"] == "val"]
        assert len(val) == 100 and r["n_test"] == 100


def test_results_files_and_saved_probes_score_new_features(planted_run):
    store, run = planted_run
    doc = json.loads((run.out / "results.json").read_text())
    # layers x models x fractions x seeds real fits, and per model x fraction 10 draws on each of 4 layers
    assert len(doc["rows"]) == 4 * 2 * 2 * 2 + 2 * 2 * 4 * 10
    with open(run.out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(doc["rows"]) and {"auroc_lo", "auprc_hi", "fit_seconds", "n_train"} <= set(table[0])
    r = next(r for r in doc["rows"] if r["layer"] == "2" and r["model"] == "lightgbm" and r["control"] == "none")
    probe = load_probe(run.out / "probes" / r["run_id"])
    test = store.splits == "test"
    s = probe.predict_proba(store.features("2")[test])[:, 1]
    assert skm.roc_auc_score(store.labels[test], s) == pytest.approx(r["auroc"], abs=1e-12)
    assert not list((run.out / "probes").rglob("*.pkl"))


def test_rerun_resumes_and_refuses_other_config(planted_run, tmp_path):
    store, run = planted_run

    def table():
        with open(run.out / "results.csv") as f:
            return [{k: v for k, v in r.items() if k != "fit_seconds"} for r in csv.DictReader(f)]

    before = table()
    cells = {p: p.stat().st_mtime_ns for p in (run.out / "cells").glob("*.json")}
    victim = sorted(cells)[3]
    victim.unlink()  # as if the run had been killed before this fit finished
    run_probes(PLANTED_CONFIG(store=str(store.path), out=str(run.out)), progress=False)
    assert table() == before  # the refit is deterministic
    after = {p: p.stat().st_mtime_ns for p in (run.out / "cells").glob("*.json")}
    assert after.keys() == cells.keys()
    assert [p for p in cells if after[p] != cells[p]] == [victim]  # only the missing fit was redone
    with pytest.raises(UsageError, match=r"differs in: config\.seeds \(2 -> 3\)"):
        run_probes(PLANTED_CONFIG(store=str(store.path), seeds=3, out=str(run.out)), progress=False)


def test_report_rerenders(planted_run):
    _, run = planted_run
    summary = (run.out / "summary.md").read_text()
    (run.out / "summary.md").unlink()
    (run.out / "layers.png").unlink()
    r = CliRunner().invoke(cli, ["report", "--run", str(run.out)])
    assert r.exit_code == 0, r.output
    assert (run.out / "summary.md").read_text() == summary and (run.out / "layers.png").exists()


def test_nested_subsets_are_nested_stratified_and_grouped():
    rng = np.random.default_rng(1)
    n = 400
    labels = (rng.random((n, 1)) < 0.2).astype(np.float32)
    patients = np.array([f"p{i // 3}" for i in range(n)])
    train = np.arange(0, n, 1)
    for seed in range(3):
        subs = nested_subsets(train, labels, "binary", [0.05, 0.1, 0.5, 1.0], seed=seed, patient_ids=patients)
        prev = set()
        for f in (0.05, 0.1, 0.5, 1.0):
            cur = set(subs[f].tolist())
            assert prev <= cur
            prev = cur
            assert abs(len(cur) - f * n) <= 6
            chosen_patients = set(patients[subs[f]])
            assert all(set(np.flatnonzero(patients == p)) <= cur for p in chosen_patients)  # whole patients
            assert labels[subs[f], 0].sum() >= 1
        assert len(subs[1.0]) == n
    a = nested_subsets(train, labels, "binary", [0.1], seed=0)[0.1]
    b = nested_subsets(train, labels, "binary", [0.1], seed=1)[0.1]
    assert set(a) != set(b)


def test_multilabel_with_one_class_label_in_test(tmp_path):
    store = planted_store(tmp_path / "ml.zarr", kind="multilabel", n_layers=2, signal_layer="1")
    run = run_probes(ProbeConfig(store=str(store.path), seeds=1, bootstrap=50, out=str(tmp_path / "r")), progress=False)
    for r in run.rows:
        assert r["n_labels"] == 1 and r["n_labels_total"] == 2 and np.isfinite(r["auroc"])
    best = {r["layer"]: r["auroc"] for r in run.rows if r["model"] == "logreg"}
    assert best["1"] > 0.85 > best["2"]


def test_estimator_conventions():
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = (X[:, 0] > 0).astype(int)
    for est in (LogisticProbe(Cs=(0.01, 1.0)), LightGBMProbe(n_estimators=30)):
        c = clone(est)
        assert c.get_params() == est.get_params() and not hasattr(c, "classes_")
        assert cross_val_score(c, X, y, cv=3, scoring="roc_auc").mean() > 0.85


# Probe cells fit in threads. LightGBM keeps its thread count in one process-wide variable, so
# concurrent fits and predictions on sparse wide features (ReLU-pooled CNN features are) crashed the
# process (SIGFPE / SIGSEGV inside lib_lightgbm) within seconds before LightGBM's cap was pinned.
_CONCURRENT_LIGHTGBM = """
import numpy as np
from joblib import Parallel, delayed
from tlmic_feats.probes.estimators import LightGBMProbe, LogisticProbe
from tlmic_feats.runtime.limits import one_thread_per_cell

def cell(i):
    r = np.random.default_rng(i)
    X = np.maximum(r.normal(size=(260, 1280)) - 1.3, 0).astype(np.float32)
    y = (X[:, 0] + r.normal(size=260) > 0.1).astype(int)
    probe = (LogisticProbe(Cs=(1.0,)) if i % 5 == 0 else LightGBMProbe(random_state=i, n_estimators=30))
    probe.fit(X[:200], y[:200], eval_set=(X[200:], y[200:]))
    for _ in range(5):
        probe.predict_proba(X[200:])
        if isinstance(probe, LightGBMProbe):  # a call without num_threads resets LightGBM's count
            probe.booster_.predict(X[200:])

with one_thread_per_cell():  # as run_probes runs its cells
    for rep in range(5):
        Parallel(n_jobs=4, prefer="threads")(delayed(cell)(rep * 100 + i) for i in range(20))
print("ok")
"""


def test_concurrent_lightgbm_probes_in_threads_do_not_crash_the_process():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _CONCURRENT_LIGHTGBM], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


def _lightgbm_cap() -> int:
    """LightGBM's process-wide thread cap, read straight from the library."""
    import ctypes

    from lightgbm.basic import _LIB

    c = ctypes.c_int(-7)
    _LIB.LGBM_GetMaxThreads(ctypes.byref(c))
    return c.value


def test_lightgbm_thread_cap_holds_until_the_last_overlapping_holder_leaves():
    # Task threads on one Dask worker enter and leave the cap in any order: the first to leave must
    # not lift it while another still fits.
    import threading

    from tlmic_feats.runtime.limits import lightgbm_max_threads

    cap = _lightgbm_cap
    before = cap()
    inside, release_first, seen = threading.Barrier(2), threading.Event(), {}

    def first():
        with lightgbm_max_threads(1):
            inside.wait(30)
            release_first.wait(30)

    def second():
        with lightgbm_max_threads(2):
            inside.wait(30)
            seen["both in"] = cap()
            release_first.set()
            t1.join(30)
            seen["first left"] = cap()

    t1, t2 = threading.Thread(target=first, daemon=True), threading.Thread(target=second, daemon=True)
    t1.start(), t2.start()
    t2.join(60)
    assert seen == {"both in": 1, "first left": 2}
    assert cap() == before


def test_overlapping_cells_keep_blas_and_lightgbm_at_one_thread_until_the_last_leaves():
    # Cells on a multi-threaded Dask worker: A enters, B enters, A leaves while B still fits. A's
    # thread lives on after its cell, as a worker's pool thread does: while it lives, threadpoolctl
    # ignores B's restore of OpenBLAS's count unless B is handed control (it stayed at one thread).
    import threading

    from threadpoolctl import threadpool_info

    from tlmic_feats.runtime.limits import one_thread_per_cell

    def limits():
        return _lightgbm_cap(), max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

    before = limits()
    if before[1] < 2:
        pytest.skip(f"BLAS runs {before[1]} thread here: a lifted limit would not show")
    a_in, b_in, a_out, b_out = (threading.Event() for _ in range(4))
    seen = {}

    def cell_a():
        with one_thread_per_cell():
            a_in.set()
            b_in.wait(30)
        a_out.set()
        b_out.wait(30)  # the pool thread stays until the other cell is done

    def cell_b():
        a_in.wait(30)
        with one_thread_per_cell():
            b_in.set()
            a_out.wait(30)
            seen["A left, B inside"] = limits()
        b_out.set()

    threads = [threading.Thread(target=f, daemon=True) for f in (cell_a, cell_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert seen == {"A left, B inside": (1, 1)}
    assert limits() == before


def test_bad_inputs(tmp_path, planted_run):
    store, _ = planted_run
    with pytest.raises(
        UnknownCutPointError, match=r"layer 9 is not in the store .*stored: all, blocks, units, 1, 2, 3, 4"
    ):
        run_probes(ProbeConfig(store=str(store.path), layers="9", out=str(tmp_path / "a")), progress=False)
    # no validation split
    rng = np.random.default_rng(0)
    nv = FeatureStore.from_arrays(
        tmp_path / "nv.zarr",
        {"1": rng.normal(size=(40, 3))},
        labels=np.arange(40) % 2,
        label_kind="binary",
        label_names=["a", "b"],
        splits=np.array(["train"] * 30 + ["test"] * 10),
    )
    with pytest.raises(UsageError, match="no validation split.*Re-extract"):
        run_probes(ProbeConfig(store=str(nv.path), out=str(tmp_path / "b")), progress=False)
    # a fraction too small for a class to appear twice: reported and skipped, not a crash
    logged = []
    run = run_probes(
        ProbeConfig(
            store=str(store.path),
            layers="2",
            fractions=(0.004, 1.0),
            seeds=1,
            models=("logreg",),
            bootstrap=20,
            out=str(tmp_path / "c"),
        ),
        progress=False,
        log=logged.append,
    )
    assert len(logged) == 1 and "skipped fraction 0.004 seed 0" in logged[0] and "needs >= 2" in logged[0]
    assert {r["fraction"] for r in run.rows} == {1.0}
    assert "Skipped cells" in (run.out / "summary.md").read_text()
    # an unfinished store
    import zarr

    g = zarr.open_group(str(store.path), mode="r+")
    meta = dict(g.attrs["tlmic"])
    g.attrs["tlmic"] = {**meta, "status": "in_progress"}
    try:
        with pytest.raises(StoreIncompleteError, match="unfinished"):
            run_probes(ProbeConfig(store=str(store.path), out=str(tmp_path / "d")), progress=False)
    finally:
        g.attrs["tlmic"] = meta


def test_probe_cli(planted_run, tmp_path):
    store, _ = planted_run
    r = CliRunner().invoke(
        cli,
        [
            "probe",
            "--store",
            str(store.path),
            "--layer",
            "1,2",
            "--model",
            "logreg",
            "--seeds",
            "1",
            "--bootstrap",
            "50",
            "--out",
            str(tmp_path / "r"),
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output + r.stderr
    assert "| logreg | 1 | 300 | 2 |" in r.output and "2 fits" in r.output
    r = CliRunner().invoke(cli, ["probe", "--store", str(store.path), "--fractions", "0.1,x"])
    assert r.exit_code == 2 and "comma-separated list of numbers" in r.stderr
    r = CliRunner().invoke(cli, ["probe", "--store", str(tmp_path / "none.zarr"), "--quiet"])
    assert r.exit_code == 1 and "no feature store" in r.stderr


def test_from_arrays_fingerprints_contents_and_keeps_existing_stores(tmp_path):
    from tlmic_feats.runtime.errors import StoreMismatchError

    rng = np.random.default_rng(0)
    kw = dict(labels=np.arange(20) % 2, label_kind="binary", label_names=["a", "b"], splits=SPLITS[::25])
    a = FeatureStore.from_arrays(tmp_path / "a.zarr", {"1": rng.normal(size=(20, 3))}, **kw)
    b = FeatureStore.from_arrays(tmp_path / "b.zarr", {"1": rng.normal(size=(20, 3))}, **kw)
    assert a.fingerprint["dataset"] != b.fingerprint["dataset"]
    with pytest.raises(StoreMismatchError, match="exists"):
        FeatureStore.from_arrays(tmp_path / "a.zarr", {"1": rng.normal(size=(20, 3))}, **kw)
    c = FeatureStore.from_arrays(tmp_path / "a.zarr", {"1": np.ones((20, 3))}, overwrite=True, **kw)
    assert (c.features("1") == 1).all()


def test_the_grid_offers_exactly_the_probes_there_are():
    from tlmic_feats.probes.config import MODELS
    from tlmic_feats.probes.estimators import PROBES

    assert tuple(PROBES) == MODELS


def test_results_csv_keeps_all_62_densenet_cut_points_apart_in_pandas(phantom_dir, tmp_path):
    """DenseNet-121's 62 cut points (3.1 and 3.10 among them) read back by plain pandas.read_csv:
    62 distinct strings, and each one accepted back by --layer."""
    import pandas as pd

    from tlmic_feats.data import DataConfig
    from tlmic_feats.features.config import ExtractConfig
    from tlmic_feats.features.extract import extract_features

    store = extract_features(
        ExtractConfig(
            data=DataConfig(str(phantom_dir)),
            backbone="densenet121",
            weights="random:0",
            input_size=32,
            store=str(tmp_path / "d.zarr"),
            batch_size=36,
            workers=0,
            pixel_cache=False,
        ),
        progress=False,
    ).store
    assert len(store.addresses) == 62 and {"3.1", "3.10"} <= set(store.addresses)
    config = ProbeConfig(store=str(store.path), models=("logreg",), seeds=1, bootstrap=10, out=str(tmp_path / "r"))
    run = run_probes(config, progress=False)
    table = pd.read_csv(run.out / "results.csv")
    assert all(isinstance(v, str) for v in table["layer"]) and pd.api.types.is_string_dtype(table["layer"])
    assert table["layer"].nunique() == 62 and table["array"].nunique() == 62
    assert {"L3.1", "L3.10", "L4"} <= set(table["layer"])
    assert [layer[1:] for layer in table["layer"]] == [r["layer"] for r in run.rows]  # the JSON keeps bare ones
    # the written form is accepted back by the layer grammar
    again = run_probes(ProbeConfig(**{**config.__dict__, "layers": "L3.10,L3.1", "out": str(tmp_path / "again")}))
    assert [r["layer"] for r in again.rows] == ["3.1", "3.10"]
