"""`tlmic study`: a tiny study end to end, selection blind to test labels, kill and resume, the plan,
the budget, and the baselines' training rules."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tlmic_feats.runtime.options import from_flat
from tlmic_feats.data.readers import DataConfig
from tlmic_feats.finetune.reuse import read_feature_reuse
from tlmic_feats.study.arms import TIE_TOLERANCE
from tlmic_feats.study.config import StudyConfig
from tlmic_feats.study.plan import plan_study
from tlmic_feats.study.run import run_study
from tlmic_feats.testing.datasets import disk_dataset


CLI = [sys.executable, "-c", "from tlmic_cli.main import main; main()"]


def _config(data: Path, out: Path, store: Path, **kw) -> StudyConfig:
    base = dict(
        data=DataConfig(str(data), format="imagefolder"),
        backbone="resnet18",
        weights="random:3",
        input_size=64,  # the images' own size
        fractions=(1.0,),
        seeds=1,
        top_blocks=1,
        top_units=1,
        search="probe",
        baselines=(),
        scratch=True,
        steps=3,
        eval_every=3,
        batch_size=8,
        bootstrap=100,
        out=str(out),
        store=str(store),
    )
    base.update(kw)
    return from_flat(StudyConfig, **base)


@pytest.fixture(scope="module")
def small_study(disk_dir, tmp_path_factory):
    """The 4-run study (best block, full, scratch, best unit) that other tests compare against."""
    root = tmp_path_factory.mktemp("small")
    config = _config(disk_dir, root / "study", root / "store.zarr")
    with pytest.MonkeyPatch.context() as mp:  # module scope: the per-test cache fixture is not active yet
        mp.setenv("TLMIC_CACHE", str(root / "cache"))
        return config, run_study(config, progress=False)


@pytest.mark.slow
def test_tiny_study_end_to_end_with_every_arm_gives_verdicts(disk_dir, tmp_path):
    config = _config(
        disk_dir,
        tmp_path / "study",
        tmp_path / "store.zarr",
        seeds=2,
        baselines=("cbr-tiny", "hybrid", "layerwise"),
    )
    result = run_study(config, progress=False)
    arms = {(r["arm"], r["stage"]) for r in result.rows}
    c = result.choices["1"]
    assert {("full", "stage1"), ("scratch", "stage1"), (f"t{c['blocks'][0]}", "stage1")} <= arms
    assert (f"t{c['units'][0]}", "stage2") in arms and c["units"][0].startswith(c["best_block"] + ".")
    assert {("cbr-tiny", "baseline"), ("hybrid", "baseline"), ("layerwise", "baseline")} <= arms
    assert {("probe-logreg", "probe"), ("probe-lightgbm", "probe")} <= arms
    finetuned = [r for r in result.rows if r["stage"] != "probe"]
    assert len(finetuned) == 2 * 7 and not result.not_run
    report = result.report.read_text()
    assert "**Chosen on validation:" in report and "These trained models on these test images" in report
    assert "Finetuning precision: fp32" in report
    assert "- **primary**: AUROC:" in report and "exploratory:" in report
    with open(result.out / "verdicts.csv") as f:
        verdicts = list(csv.DictReader(f))
    primary = [v for v in verdicts if v["primary"] == "true"]
    assert {(v["fraction"], v["metric"]) for v in primary} == {("1", "auroc"), ("1", "auprc")}
    assert all(v["b"] == "full finetuning" and v["seeds"] == "0 1" and v["precision"] for v in primary)
    assert {v["verdict"] for v in verdicts} <= {"a_better", "b_better", "equivalent", "inconclusive"}
    assert "(DeLong)" in report and "Best probe layer vs the head (the deepest cut point)" in report
    assert "| cbr-tiny (from scratch) |" in report and "| layer-wise finetuning |" in report
    assert "less finetuning compute by the cost model" in report
    assert "Budget: 3 steps (given; 1.0 epochs at batch 8), validation every 3" in report
    assert "Pooling: avg for the probes' features and for every finetuned network's head" in report
    assert "| disk | measured | estimated (plan, upper bound) |" in report
    # feature reuse: full finetuning and the best truncated arm (here the probes' block and its unit,
    # picked on validation), seed 0, each run's CKA per cut point on the test images, plotted
    assert "![feature reuse of full finetuning and the best truncated arm at 1](figures/feature-reuse-f1.png)" in report
    assert (result.out / "figures" / "feature-reuse-f1.png").is_file()
    compared = [r for r in finetuned if (result.out / r["predictions"]).parent.joinpath("feature_reuse.csv").is_file()]
    assert len(compared) == 2 and all(r["seed"] == 0 for r in compared)
    (arm,) = {r["arm"] for r in compared} - {"full"}
    val = {a: np.mean([r["val_auprc"] for r in finetuned if r["arm"] == a]) for a in {"t" + c["blocks"][0], "t" + c["units"][0]}}
    assert arm in val and val[arm] >= max(val.values()) - TIE_TOLERANCE
    for r in compared:
        reuse = read_feature_reuse((result.out / r["predictions"]).parent)
        assert reuse.split == "test" and reuse.method == "cka" and all(-1e-9 <= v <= 1 + 1e-9 for v in reuse.values)
    # finished runs keep their best weights, not their resume state
    runs = [p for p in (result.out / "runs").iterdir() if p.is_dir()]
    assert runs and all((p / "best.pt").is_file() and not (p / "last.pt").exists() for p in runs)
    html = result.report.with_suffix(".html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    with open(result.out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(result.rows)
    # the parameter counts in the table are the networks' own
    cbr = next(r for r in result.rows if r["arm"] == "cbr-tiny" and r["seed"] == 0)
    from tlmic_feats.backbones.cbr import expected_parameters

    assert cbr["params"] == expected_parameters("cbr-tiny", 1)
    # the easy signal is learned by the best arm
    best = max((r for r in finetuned), key=lambda r: r["auroc"])
    assert best["auroc"] > 0.8


@pytest.mark.slow
def test_selection_never_reads_test_labels(small_study, tmp_path):
    config, original = small_study
    permuted = disk_dataset(tmp_path / "permuted", shuffle_test_labels=True)
    other = run_study(
        _config(permuted, tmp_path / "study", tmp_path / "store.zarr"),
        progress=False,
    )
    strip = ("stage1_ranking", "stage2_ranking", "stage1_val_auprc", "blocks", "best_block", "units")
    assert {k: original.choices["1"][k] for k in strip} == {k: other.choices["1"][k] for k in strip}
    key = lambda rows: sorted((r["arm"], r["seed"], round(r["val_auprc"], 9)) for r in rows)  # noqa: E731
    assert key(original.rows) == key(other.rows)  # every validation score the same
    assert [r["auroc"] for r in original.rows] != [r["auroc"] for r in other.rows]  # the test labels did differ


def _stable(report: str) -> str:
    """The report without what is measured in seconds (training seconds, latency column, compute section)."""
    import re

    lines = []
    for line in report.split("\n## Compute")[0].splitlines():
        lines.append(re.sub(r"\), \d+ \|", ") |", line.rsplit("|", 2)[0]) if line.startswith("| ") else line)
    return "\n".join(lines)


@pytest.mark.slow
def test_killed_study_finishes_only_the_remaining_runs_and_gives_the_same_report(disk_dir, small_study, tmp_path):
    config, reference = small_study
    out = tmp_path / "study"
    args = ["study", "--data", str(disk_dir), "--format", "imagefolder", "--backbone", "resnet18"]
    args += ["--weights", "random:3", "--input-size", "64", "--fractions", "1.0", "--seeds", "1"]
    args += ["--top-blocks", "1", "--top-units", "1", "--search", "probe", "--baselines", "none", "--steps", "3"]
    args += ["--eval-every", "3"]
    args += ["--batch-size", "8", "--bootstrap", "100", "--scratch"]
    args += ["--out", str(out), "--store", config.store, "--quiet"]
    env = {**os.environ, "TLMIC_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([*CLI, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "runs").glob("*/metrics.json"))) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the study finished before it could be killed"
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/metrics.json")}
    assert 2 <= len(finished) < 4
    # a rerun with a budget of one more run does exactly that, and says what it left out
    limited = run_study(replace_out(config, out), budget=len(finished) + 1, progress=False)
    assert len(limited.not_run) == 4 - len(finished) - 1 and "budget" in limited.not_run[0]
    done = run_study(replace_out(config, out), progress=False)
    assert not done.not_run
    for name, mtime in finished.items():
        assert (out / "runs" / name / "metrics.json").stat().st_mtime_ns == mtime  # not redone
    assert _stable(done.report.read_text()) == _stable(reference.report.read_text())


def replace_out(config: StudyConfig, out: Path) -> StudyConfig:
    from dataclasses import replace

    return replace(config, out=str(out))


@pytest.mark.slow
def test_plan_lists_runs_and_costs_without_running_any(disk_dir, small_study, tmp_path):
    config, _ = small_study
    fresh = replace_out(config, tmp_path / "fresh")
    text = plan_study(fresh)
    assert "block#1-f1-s0" in text and "unit#1-f1-s0" in text and "full-f1-s0" in text
    assert "to run: 4 finetuning runs" in text and "every truncation instead" in text
    assert "budget per run (every arm of a fraction alike): 1: 24 images, 3 steps" in text
    assert "disk it will write (upper bounds, before compression): feature store" in text
    assert not (tmp_path / "fresh").exists()  # nothing made in the study directory
    assert "| done |" in plan_study(config)  # the finished study's runs are known as done


@pytest.mark.slow
def test_study_refuses_another_configuration_in_its_directory(small_study, monkeypatch):
    """Another configuration is refused; the same study with its paths spelled relative to where one stands
    (it was made with absolute ones) is the same study: it answers with its results, nothing refused."""
    from dataclasses import replace

    from tlmic_feats.runtime.errors import UsageError
    from tlmic_feats.runtime.options import replace_flat

    config, result = small_study
    with pytest.raises(UsageError, match=r"holds another study \(differs in: config\.training\.epochs \(20 -> 2\)\)"):
        run_study(replace_flat(config, epochs=2), progress=False)
    monkeypatch.chdir(os.path.dirname(config.out))
    relative = replace(
        config,
        out=os.path.relpath(config.out),
        store=os.path.relpath(config.store),
        data=replace(config.data, path=os.path.relpath(config.data.path)),
    )
    assert relative.data.path != config.data.path and relative.out == "study"
    again = run_study(relative, progress=False)
    assert [(r["arm"], r["auroc"]) for r in again.rows] == [(r["arm"], r["auroc"]) for r in result.rows]


def test_layerwise_finetuning_keeps_the_bottom_frozen_and_the_hybrid_is_slimmer(phantom_dir, tmp_path):
    import torch

    from tlmic_feats.backbones.networks import build_hybrid, build_network
    from tlmic_feats.backbones.registry import build_backbone
    from tlmic_feats.finetune.config import FinetuneConfig
    from tlmic_feats.finetune.trainer import run_finetune

    result = run_finetune(
        from_flat(FinetuneConfig,
            data=DataConfig(str(phantom_dir)),
            backbone="resnet18",
            weights="random:2",
            truncate="all",
            freeze_until="2",
            backbone_lr_mult=0.1,
            steps=3,
            batch_size=8,
            keep_checkpoints=True,
            bootstrap=20,
            export_onnx=False,
            compactness=False,
            out=str(tmp_path / "lw"),
        ),
        progress=False,
    )
    trained = torch.load(result.out / "last.pt", weights_only=True)["model"]
    start = build_backbone("resnet18", "random:2").model.state_dict()
    # the network's backbone is nn.Sequential(conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4)
    seq = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    frozen = changed = 0
    for k, v in start.items():
        top = k.split(".")[0]
        if top not in seq:
            continue
        got = trained[f"backbone.{seq[top]}.{k.split('.', 1)[1]}"]
        if top in ("conv1", "bn1", "layer1", "layer2"):
            torch.testing.assert_close(got, v, rtol=0, atol=0)  # frozen: weights and BatchNorm statistics
            frozen += 1
        elif v.dtype.is_floating_point and not torch.equal(got, v):
            changed += 1
    assert frozen > 20 and changed > 20
    backbone = build_backbone("resnet18", "random:2")
    hybrid = sum(p.numel() for p in build_hybrid(backbone, 1, 0.0).parameters())
    full = sum(p.numel() for p in build_network(backbone, "4", 1, 0.0).parameters())
    assert hybrid < full / 2
