"""The Python API as a user meets it: the names `tlmic_feats` lists, a function per command, labels in
scikit-learn's shape, and results as DataFrames."""

from __future__ import annotations

import csv
import inspect
import json
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

import tlmic_feats
from tlmic_feats import FeatureStore

# The function behind each `tlmic` command (a group: each of its subcommands' functions).
COMMAND_FUNCTIONS = {
    "extract": ["extract_features"],
    "layers": ["layer_table", "list_backbones"],
    "backbones": ["available_backbones"],
    "probe": ["run_probes"],
    "finetune": ["run_finetune"],
    "report": ["render_report"],
    "similarity": ["run_similarity", "feature_reuse"],  # --store (and --vs); --run
    "compare": ["compare_runs"],
    "doctor": ["diagnose"],
    "data": ["check_dataset"],  # data check
    "study": ["run_study", "plan_study"],  # study, study --plan
    "demo": ["run_demo"],
    "cache": ["scan_cache", "select_items", "clean_cache"],  # cache info / list, cache clean
}
HEAVY = ("torch", "torchvision", "timm", "numpy", "pandas", "zarr", "sklearn", "lightgbm", "matplotlib")


def test_dir_lists_the_public_names_without_importing_them():
    code = (
        "import json, sys, tlmic_feats\n"
        "names = dir(tlmic_feats)\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "print(json.dumps([names, tlmic_feats.__all__, heavy]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names, public, heavy = json.loads(out)
    assert heavy == []  # dir() named everything and loaded nothing
    assert set(public) <= set(names) and "annotations" not in names
    assert {"run_probes", "run_finetune", "FeatureStore", "compare_runs", "DataConfig"} <= set(public)


def test_every_public_name_resolves_to_the_object_of_its_module():
    for name in tlmic_feats.__all__:
        obj = getattr(tlmic_feats, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__name__ == name, name  # exported under its own name: one name per object
            assert getattr(sys.modules[obj.__module__], name) is obj
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tlmic_feats.nope  # noqa: B018


def test_every_command_has_an_exported_function_the_cli_calls():
    from tlmic_cli.main import COMMANDS

    assert set(COMMAND_FUNCTIONS) == set(COMMANDS)  # a new command needs its function here
    for command, functions in COMMAND_FUNCTIONS.items():
        module = sys.modules.get(COMMANDS[command][0].split(":")[0]) or __import__(
            COMMANDS[command][0].split(":")[0], fromlist=["_"]
        )
        source = inspect.getsource(module)
        for name in functions:
            assert name in tlmic_feats.__all__ and callable(getattr(tlmic_feats, name))
            assert name in source, f"`tlmic {command}` does not call {name}"


def _store(path, kind: str, labels: np.ndarray, names) -> FeatureStore:
    n = len(labels)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 0] += 2 * np.nan_to_num(labels if labels.ndim == 1 else labels[:, 0])
    splits = np.array(["train", "val", "test"])[np.arange(n) % 3]
    return FeatureStore.from_arrays(
        path, {"1": x, "3": x[:, ::-1].copy()}, labels=labels, label_kind=kind, label_names=names, splits=splits
    )


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_store_labels_have_scikit_learns_shape(tmp_path, kind):
    rng = np.random.default_rng(1)
    n = 60
    if kind == "binary":
        given, names = rng.integers(0, 2, n), ["normal", "nodule"]
    elif kind == "multiclass":
        given, names = rng.integers(0, 3, n), ["a", "b", "c"]
    else:
        given, names = (rng.random((n, 2)) < 0.4).astype(np.float32), ["x", "y"]
        given[rng.random((n, 2)) < 0.1] = np.nan  # missing labels stay NaN
    store = FeatureStore.open(_store(tmp_path / "s.zarr", kind, given, names).path)
    y = store.labels
    if kind == "multilabel":
        assert y.shape == (n, 2) and y.dtype == np.float32
        np.testing.assert_array_equal(np.isnan(y), np.isnan(given))
        np.testing.assert_array_equal(np.nan_to_num(y), np.nan_to_num(given))
    else:
        assert y.shape == (n,) and y.dtype == np.int64
        np.testing.assert_array_equal(y, given)
        assert store.label_matrix.shape == (n, 1)  # as stored, as the manifest holds it
        np.testing.assert_array_equal(store.label_matrix[:, 0], given)


def test_a_probe_fits_store_labels_without_a_warning(tmp_path):
    from sklearn.exceptions import DataConversionWarning
    from sklearn.linear_model import LogisticRegression

    from tlmic_feats import LogisticProbe

    rng = np.random.default_rng(2)
    store = _store(tmp_path / "s.zarr", "binary", rng.integers(0, 2, 90), ["neg", "pos"])
    X, y = store.features("3"), store.labels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LogisticRegression().fit(X, y)
        probe = LogisticProbe().fit(X, y)
    assert set(probe.classes_.tolist()) == {0, 1}
    with pytest.warns(DataConversionWarning):  # what the stored (N, 1) column did
        LogisticRegression().fit(X, store.label_matrix)


def test_probe_run_to_pandas_is_results_csv(tmp_path):
    from tlmic_feats import ProbeConfig, run_probes
    from tlmic_feats.probes.grid import RESULT_COLUMNS

    rng = np.random.default_rng(3)
    store = _store(tmp_path / "s.zarr", "binary", rng.integers(0, 2, 150), ["neg", "pos"])
    run = run_probes(
        ProbeConfig(store=str(store.path), models=("logreg",), seeds=2, bootstrap=50, out=str(tmp_path / "run")),
        progress=False,
        log=lambda m: None,
    )
    table = run.to_pandas()
    with open(run.out / "results.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert list(table.columns) == list(RESULT_COLUMNS) and len(table) == len(written) == 2 * 2
    assert table["layer"].tolist() == [r["layer"].removeprefix("L") for r in written]
    np.testing.assert_allclose(table["auroc"], [float(r["auroc"]) for r in written])
    test = store.splits == "test"
    for _, row in table.iterrows():
        preds = pd.read_csv(run.out / row["predictions"], dtype={"id": str})
        preds = preds[preds["split"] == "test"]
        np.testing.assert_array_equal(preds["y"], store.labels[test])
        assert skm.roc_auc_score(store.labels[test], preds["score"]) == pytest.approx(row["auroc"], abs=1e-12)


def _write_predictions(path, ids, y, scores):
    from tlmic_feats.metrics.predictions import write_predictions

    path.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(
        path,
        ids=ids,
        labels=y[:, None],
        rows={"test": np.arange(len(ids))},
        scores={"test": scores},
        label_kind="binary",
        label_names=["neg", "pos"],
    )


def test_compare_runs_two_models_and_two_arms(tmp_path):
    from tlmic_feats import compare_runs
    from tlmic_feats.metrics.paired import delong
    from tlmic_feats.metrics.verdicts import compare_runs as verdicts_of_scores

    rng = np.random.default_rng(4)
    n = 120
    ids = np.array([f"img{i:03d}" for i in range(n)])
    y = (rng.random(n) < 0.4).astype(float)
    runs = {arm: [y * w + rng.normal(size=n) for _ in range(3)] for arm, w in (("t3", 1.6), ("full", 0.4))}
    for arm, scores in runs.items():
        for s, sc in enumerate(scores):
            _write_predictions(tmp_path / f"{arm}-s{s}" / "predictions.csv", ids, y, sc)

    two = compare_runs(tmp_path / "t3-s0", tmp_path / "full-s0" / "predictions.csv", n_resamples=200)
    table = two.to_pandas()
    want = delong(y, runs["t3"][0], runs["full"][0])
    auroc = table.set_index("metric").loc["auroc"]
    assert (auroc["a"], auroc["b"]) == ("t3-s0", "full-s0")  # named by run, not "predictions"
    assert auroc["diff"] == pytest.approx(want["diff"]) and auroc["p"] == pytest.approx(want["p"])
    assert auroc["value_a"] == pytest.approx(skm.roc_auc_score(y, runs["t3"][0]))
    assert table["verdict"].tolist() == ["", ""] and two.verdicts == {}

    arms = compare_runs(
        [tmp_path / f"t3-s{s}" for s in range(3)], [tmp_path / f"full-s{s}" for s in range(3)], n_resamples=300,
        names=("t3", "full"),
    )  # fmt: skip
    table = arms.to_pandas().set_index("metric")
    want = verdicts_of_scores(y, runs["t3"], runs["full"], names=("t3", "full"), n_resamples=300)
    for metric, v in want.items():
        assert table.loc[metric, "verdict"] == v.verdict == arms.verdicts[metric].verdict
        assert table.loc[metric, "diff"] == pytest.approx(v.diff)
        assert (table.loc[metric, "ci95_lo"], table.loc[metric, "ci95_hi"]) == pytest.approx(v.ci95)
    assert table.loc["auroc", "value_a"] == pytest.approx(np.mean([skm.roc_auc_score(y, s) for s in runs["t3"]]))
    assert table.loc["auroc", "verdict"] == "a_better" and table.loc["auroc", "runs_a"] == 3

    from tlmic_feats.runtime.errors import UsageError

    with pytest.raises(UsageError, match="does not exist"):
        compare_runs(tmp_path / "nope.csv", tmp_path / "t3-s0")


def test_finetune_and_study_results_to_pandas(tmp_path):
    from tlmic_feats import FinetuneResult, StudyResult
    from tlmic_feats.finetune.compactness import Compactness
    from tlmic_feats.metrics.verdicts import VERDICT_COLUMNS
    from tlmic_feats.study.report import ROW_COLUMNS

    metrics = {"address": "3.2", "arch": "truncated", "n_train": 100, "steps_run": 30, "best_step": 10}
    metrics |= {"auroc": 0.9, "auroc_lo": 0.8, "auroc_hi": 0.95, "precision": "fp32", "per_label": {"x": 1}}
    comp = [Compactness("3.2", 55_545, 1_000, 0.5), Compactness("all", 3_000_000, 9_000, 2.0)]
    history = [{"step": 10, "val_auroc": 0.8}, {"step": 20, "val_auroc": 0.85}]
    for c in (comp, [vars(x) for x in comp]):  # a fresh run's objects, a stored run's dicts
        row = FinetuneResult(tmp_path, metrics, history, 10, c).to_pandas()
        assert len(row) == 1 and row.loc[0, "params"] == 55_545 and row.loc[0, "auroc_hi"] == 0.95
        assert row.loc[0, "address"] == "3.2" and row.loc[0, "run"] == str(tmp_path) and "per_label" not in row
    curve = FinetuneResult(tmp_path, metrics, history, 10).to_pandas(history=True)
    assert curve["val_auroc"].tolist() == [0.8, 0.85]
    assert pd.isna(FinetuneResult(tmp_path, metrics, [], 10).to_pandas().loc[0, "params"])  # no compactness

    rows = [{"stage": "stage1", "arm": "t3.10", "address": "3.10", "seed": s, "auroc": [0.7, 0.8][s]} for s in range(2)]
    result = StudyResult(tmp_path, rows, {})
    table = result.to_pandas()
    assert list(table.columns) == list(ROW_COLUMNS) and table["address"].tolist() == ["3.10", "3.10"]
    assert table["auroc"].tolist() == [0.7, 0.8]
    assert list(result.to_pandas(verdicts=True).columns) == list(VERDICT_COLUMNS)  # no verdicts yet: empty
    with open(tmp_path / "verdicts.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=VERDICT_COLUMNS)
        w.writeheader()
        verdict = {"a": "t3.10", "b": "full", "diff": "0.02", "verdict": "a_better"}
        w.writerow(dict.fromkeys(VERDICT_COLUMNS, "") | verdict)
    verdicts = result.to_pandas(verdicts=True)
    assert verdicts.loc[0, ["a", "b", "verdict"]].tolist() == ["t3.10", "full", "a_better"]
    assert verdicts.loc[0, "diff"] == 0.02
