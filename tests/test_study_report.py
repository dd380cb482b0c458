"""The study report's paired comparisons, on prediction files written here (no study run needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tlmic_feats.metrics.paired import bootstrap_difference, delong_mean
from tlmic_feats.metrics.predictions import write_predictions
from tlmic_feats.metrics.scores import evaluate, paired_bootstrap
from tlmic_feats.study.arms import Arm
from tlmic_feats.study.report import summarize


def _write(path, ids, y, scores):
    n = len(ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(
        path,
        ids=ids,
        labels=y[:, None],
        rows={"test": np.arange(n)},
        scores={"test": scores},
        label_kind="binary",
        label_names=["neg", "pos"],
    )


def test_truncated_vs_full_and_best_layer_vs_head_are_paired_on_the_same_images(tmp_path):
    rng = np.random.default_rng(0)
    n = 150
    ids = np.array([f"img{i:03d}" for i in range(n)])
    y = (rng.random(n) < 0.4).astype(float)
    shared = rng.normal(size=n)
    scores = {
        name: [y * strength + shared + rng.normal(size=n) for _ in range(2)]
        for name, strength in (("t3", 1.6), ("full", 1.0), ("probe3", 1.3), ("probe5", 0.7))
    }
    rows, probe_rows = [], []
    for arm in ("t3", "full"):
        for seed in range(2):
            path = tmp_path / "runs" / f"{arm}-f1-s{seed}" / "predictions.csv"
            _write(path, ids, y, scores[arm][seed])
            m = evaluate(y, scores[arm][seed], "binary")
            rows.append(
                dict(stage="stage1", arm=arm, address="3" if arm == "t3" else "5", fraction=1.0, seed=seed,
                     val_auprc=0.9 if arm == "t3" else 0.8, auroc=m["auroc"], auprc=m["auprc"], params=None,
                     macs=None, latency_ms=None, n_train=100, steps_run=10, best_step=10, train_seconds=1.0,
                     predictions=str(path.relative_to(tmp_path)))
            )  # fmt: skip
    for layer, depth in (("3", 0), ("5", 1)):
        for seed in range(2):
            rel = f"predictions/L{layer}-logreg-f1-s{seed}.csv"
            _write(tmp_path / "probes" / rel, ids, y, scores[f"probe{layer}"][seed])
            m = evaluate(y, scores[f"probe{layer}"][seed], "binary")
            probe_rows.append(
                dict(layer=layer, depth=depth, model="logreg", fraction=1.0, seed=seed, control="none",
                     auroc=m["auroc"], auprc=m["auprc"], val_auprc=0.7, predictions=rel)
            )  # fmt: skip
            if layer == "3":
                rows.append(
                    dict(stage="probe", arm="probe-logreg", address="3", fraction=1.0, seed=seed, val_auprc=0.7,
                         auroc=m["auroc"], auprc=m["auprc"], params=None, macs=None, latency_ms=None, n_train=100,
                         steps_run=None, best_step=None, train_seconds=0.1,
                         predictions=str((tmp_path / "probes" / rel).relative_to(tmp_path)))
                )  # fmt: skip
    (tmp_path / "probes" / "results.json").write_text(json.dumps({"rows": probe_rows}))

    doc = summarize(tmp_path, rows, "binary", n_resamples=300)[1.0]
    # verdicts over training runs: the truncated arm chosen on validation against full, paired by seed
    from tlmic_feats.metrics.verdicts import arm_interval, compare_runs

    want = compare_runs(y, scores["t3"], scores["full"], n_resamples=300)
    primary = [v for v in doc["verdicts"] if v.b == "full finetuning"]
    assert [v.metric for v in primary] == ["auroc", "auprc"]
    for v in primary:
        assert v.a == "truncated @ 3" and v.seeds == (0, 1)
        assert v.diff == pytest.approx(want[v.metric].diff) and v.ci95 == pytest.approx(want[v.metric].ci95)
    assert {v.b for v in doc["verdicts"]} == {"full finetuning", "probe: logreg @ 3"}
    t3 = next(a for a in doc["table"] if a["arm"] == Arm("truncated", "3"))
    assert t3["auroc_ci"] == pytest.approx(arm_interval(y, scores["t3"], n_resamples=300)["auroc"])
    d = doc["paired"]
    want = delong_mean(y, scores["t3"], scores["full"])
    assert d["arm"] == Arm("truncated", "3")
    assert d["auroc"]["diff"] == pytest.approx(want["diff"]) and d["auroc"]["p"] == want["p"]
    # AUPRC: the same resamples for every arm, so the study's bootstrap is the one computed here
    boot = paired_bootstrap(
        y,
        {"t3": scores["t3"], "full": scores["full"], "probe-logreg": scores["probe3"], "head-logreg": scores["probe5"]},
        "binary",
        n_resamples=300,
        seed=0,
    )
    table = {str(a["arm"]): a for a in doc["table"]}  # by name
    auprc = bootstrap_difference(
        table["t3"]["auprc"] - table["full"]["auprc"], boot["t3"]["auprc"] - boot["full"]["auprc"]
    )
    assert d["auprc"]["ci"] == pytest.approx(auprc["ci"]) and d["auprc"]["p"] == auprc["p"]
    (head,) = doc["versus_head"]
    assert (head["model"], head["best"], head["head"]) == ("logreg", "3", "5")
    want = delong_mean(y, scores["probe3"], scores["probe5"])
    assert head["auroc"]["diff"] == pytest.approx(want["diff"]) and head["auroc"]["p"] == pytest.approx(want["p"])
    assert "head-logreg" not in table  # compared, not listed as an arm


def test_compare_command_pairs_two_prediction_files(tmp_path):
    from click.testing import CliRunner
    from tlmic_cli.main import cli

    from tlmic_feats.metrics.paired import delong

    rng = np.random.default_rng(1)
    n = 120
    ids = np.array([f"img{i:03d}" for i in range(n)])
    y = (rng.random(n) < 0.4).astype(float)
    a, b = y * 1.5 + rng.normal(size=n), y * 0.5 + rng.normal(size=n)
    _write(tmp_path / "a.csv", ids, y, a)
    order = rng.permutation(n)  # the same images in another order: matched by id
    _write(tmp_path / "b.csv", ids[order], y[order], b[order])
    r = CliRunner().invoke(cli, ["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--bootstrap", "200"])
    assert r.exit_code == 0, r.output
    want = delong(y, a, b)
    assert f"difference {want['diff']:+.4f} [{want['ci'][0]:+.4f}, {want['ci'][1]:+.4f}]" in r.output
    assert "(DeLong)" in r.output and "(paired bootstrap)" in r.output and f"{n} test images" in r.output
    _write(tmp_path / "c.csv", ids[:-5], y[:-5], b[:-5])
    r = CliRunner().invoke(cli, ["compare", str(tmp_path / "a.csv"), str(tmp_path / "c.csv")])
    assert r.exit_code == 2 and "different test images: 5 only in a.csv" in r.stderr and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["compare", str(tmp_path / "a.csv"), str(tmp_path / "a.csv"), "--split", "val"])
    assert r.exit_code == 2 and "has no 'val' rows" in r.stderr


def test_study_results_csv_keeps_cut_points_apart_in_pandas(tmp_path):
    import pandas as pd

    from tlmic_feats.study.report import ROW_COLUMNS, write_results_csv

    rows = [dict.fromkeys(ROW_COLUMNS) | {"arm": f"t{a}", "address": a, "seed": 0} for a in ("3.1", "3.10", "3", "all")]
    write_results_csv(tmp_path / "results.csv", rows)
    table = pd.read_csv(tmp_path / "results.csv")
    assert table["address"].tolist() == ["L3.1", "L3.10", "L3", "all"] and table["arm"].tolist()[1] == "t3.10"


def test_compare_command_judges_groups_of_runs(tmp_path):
    from click.testing import CliRunner
    from tlmic_cli.main import cli

    from tlmic_feats.metrics.verdicts import compare_runs, format_verdict

    rng = np.random.default_rng(2)
    n = 150
    ids = np.array([f"img{i:03d}" for i in range(n)])
    y = (rng.random(n) < 0.4).astype(float)
    a = [y * 1.6 + rng.normal(size=n) for _ in range(3)]
    b = [y * 0.4 + rng.normal(size=n) for _ in range(3)]
    paths = {}
    for name, runs in (("A", a), ("B", b)):
        for s, scores in enumerate(runs):
            order = rng.permutation(n)  # every file in its own order: matched by id
            paths[name, s] = tmp_path / f"{name}_s{s}.csv"
            _write(paths[name, s], ids[order], y[order], scores[order])
    args = ["compare", *[str(paths["A", s]) for s in range(3)], "--vs", *[str(paths["B", s]) for s in range(3)]]
    r = CliRunner().invoke(cli, [*args, "--bootstrap", "300"])
    assert r.exit_code == 0, r.output
    want = compare_runs(y, a, b, n_resamples=300)
    assert format_verdict(want["auroc"]) in r.output and "verdict: A better" in r.output
    r = CliRunner().invoke(cli, [*args, "--bootstrap", "300", "--json"])
    doc = json.loads(r.output)
    assert doc["verdicts"]["auprc"]["diff"] == pytest.approx(want["auprc"].diff)
    assert doc["verdicts"]["auroc"]["verdict"] == "a_better" and doc["n"] == n
    r = CliRunner().invoke(cli, ["compare", str(paths["A", 0]), str(paths["A", 1]), "--vs", str(paths["B", 0])])
    assert r.exit_code == 2 and "--unpaired" in r.stderr and "Traceback" not in r.output
    r = CliRunner().invoke(cli, [*args[:3], "--vs", str(paths["B", 0]), "--unpaired", "--bootstrap", "100"])
    assert r.exit_code == 0 and "unpaired" in r.output


def test_report_html_embeds_its_figures_and_renders_the_markdown_by_commonmark(tmp_path):
    import base64
    import re

    from tlmic_feats.study.report import markdown_to_html

    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # any bytes: embedded, not decoded
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "curve f1.png").write_bytes(png)
    text = (
        "# tlmic study\n\n| arm | test AUROC |\n| --- | ---: |\n| truncated @ 3.4 (stage 2) | 0.91 |\n\n"
        "**Winner** on test; p < 0.001 & `calibration.json` <b>raw</b>\nSearch: block ends 3 0.8\n\n"
        "![curve](figures/curve%20f1.png)\n\n## Not run\n\n- t3-f1-s0 (budget)\n- full-f1-s0 (budget)\n"
    )
    page = markdown_to_html(text, tmp_path)
    (src,) = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="curve"', page)
    assert base64.b64decode(src) == png
    assert "<h1>tlmic study</h1>" in page and "<th>arm</th>" in page
    assert "<td>truncated @ 3.4 (stage 2)</td>" in page and '<td style="text-align:right">0.91</td>' in page
    # inline markup; raw HTML escaped; each line of a paragraph on its own line
    assert (
        "<p><strong>Winner</strong> on test; p &lt; 0.001 &amp; <code>calibration.json</code> &lt;b&gt;raw&lt;/b&gt;"
        "<br />\nSearch: block ends 3 0.8</p>"
    ) in page
    assert "<h2>Not run</h2>\n<ul>\n<li>t3-f1-s0 (budget)</li>\n<li>full-f1-s0 (budget)</li>\n</ul>" in page
