"""The documentation's examples run as a user would paste them, and produce real results."""

from __future__ import annotations

import json
import os
import runpy
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart_runs_and_its_results_are_real(tmp_path, monkeypatch):
    from tlmic_feats.metrics.predictions import read_predictions

    monkeypatch.chdir(tmp_path)  # the example writes tlmic-quickstart/ under the working directory
    assert os.environ["TLMIC_CACHE"] == str(tmp_path / "cache")  # conftest: the cache is this test's too
    ns = runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")

    store, table, best = ns["store"], ns["table"], ns["best"]
    assert (tmp_path / "tlmic-quickstart" / "features.zarr").is_dir() and store.path.resolve().is_relative_to(tmp_path)
    assert table["layer"].tolist() == store.addresses and len(table) == len(store.addresses) > 10  # one row per layer
    assert table[["auroc", "auprc", "val_auprc"]].apply(lambda c: c.between(0, 1)).all().all()
    assert best["val_auprc"] == table["val_auprc"].max()
    # the best layer's test AUROC, recomputed from its predictions file
    ids, y, s = read_predictions(ns["probes"].out / best["predictions"], "binary")["test"]
    assert skm.roc_auc_score(y[:, 0], s) == pytest.approx(best["auroc"], abs=1e-12)

    finetuned = ns["finetuned"]
    metrics = json.loads((finetuned.out / "metrics.json").read_text())
    row = finetuned.to_pandas().loc[0]
    assert row["address"] == metrics["address"] == best["layer"] and row["auroc"] == metrics["auroc"]
    assert 0 <= row["auroc_lo"] <= row["auroc"] <= row["auroc_hi"] <= 1 and row["steps_run"] == 30
    assert finetuned.out.resolve().is_relative_to(tmp_path)

    comparison = ns["comparison"].to_pandas().set_index("metric")
    assert comparison.loc["auroc", "value_a"] == pytest.approx(best["auroc"])
    assert comparison.loc["auroc", "value_b"] == pytest.approx(metrics["auroc"])
    assert np.isfinite(comparison["p"]).all() and comparison.loc["auroc", "n_images"] == len(ids)
