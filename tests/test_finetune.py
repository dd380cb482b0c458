"""The truncated-finetuning arm."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tlmic_cli.main import cli

from tlmic_feats.runtime.options import from_flat
from tlmic_feats import DataConfig, ExtractConfig, extract_features
from tlmic_feats.backbones.networks import build_network
from tlmic_feats.finetune.config import FinetuneConfig
from tlmic_feats.finetune.lpft import head_from_probe
from tlmic_feats.finetune.trainer import run_finetune
from tlmic_feats.runtime.errors import UnknownCutPointError, UsageError
from tlmic_feats.testing.datasets import disk_dataset


@pytest.fixture(scope="module")
def easy_dir(tmp_path_factory):
    """Trivially separable images: class 'disk' has a bright disk, 'plain' not."""
    return disk_dataset(tmp_path_factory.mktemp("easy"), counts=(32, 16, 16))


def cfg(data, out, **kw):
    base = dict(
        data=DataConfig(str(data)),
        backbone="resnet18",
        weights="random:0",
        truncate="2",
        input_size=64,  # the images' own size (resized to 73, cropped to 64)
        out=str(out),
        steps=6,
        eval_every=2,
        batch_size=16,
        lr=1e-3,
        precision="fp32",
        bootstrap=100,
        patience=10,
    )
    base.update(kw)
    return from_flat(FinetuneConfig, **base)


@pytest.fixture(scope="module")
def easy_run(easy_dir, tmp_path_factory):
    return run_finetune(cfg(easy_dir, tmp_path_factory.mktemp("ft") / "run"), progress=False, log=lambda m: None)


def test_short_run_on_easy_data_learns(easy_run):
    r = easy_run
    assert max(h["val_auroc"] for h in r.history) > 0.9
    assert r.metrics["auroc"] > 0.9 and r.metrics["auroc_lo"] <= r.metrics["auroc"] <= r.metrics["auroc_hi"]
    for f in (
        "history.csv",
        "curves.png",
        "predictions.csv",
        "model.onnx",
        "compactness.md",
        "metrics.json",
        "best.pt",
    ):
        assert (r.out / f).exists(), f


def test_metrics_recompute_from_predictions_and_onnx_matches(easy_run, easy_dir):
    import onnxruntime as ort
    from sklearn.metrics import average_precision_score, roc_auc_score

    r = easy_run
    with open(r.out / "predictions.csv") as f:
        test = [row for row in csv.DictReader(f) if row["split"] == "test"]
    y = np.array([int(t["y"]) for t in test])
    s = np.array([float(t["score"]) for t in test])
    assert r.metrics["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert r.metrics["auprc"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    # the exported graph, run by onnxruntime on the test images, gives the same scores
    from tlmic_feats.data import load_manifest
    from tlmic_feats.data.images import resize_center_crop

    m = load_manifest(DataConfig(str(easy_dir)))
    index = {i: k for k, i in enumerate(m.ids)}
    x = np.stack([resize_center_crop(m.source.load(index[t["id"]]), resize_size=73, input_size=64) for t in test])
    sess = ort.InferenceSession(str(r.out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x[:, None]})[0]
    np.testing.assert_allclose(1 / (1 + np.exp(-logits[:, 0])), s, atol=1e-4)
    assert r.onnx["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("pool", ["avg", "avgmax"])
def test_truncated_network_features_equal_extracted(phantom_dir, tmp_path, pool):
    """One registry and one pooling: the finetuning network's pooled map at k is what extract stores
    at k with the same --pool."""
    from tlmic_feats.backbones import build_backbone
    from tlmic_feats.backbones.preprocess import center_crop
    from tlmic_feats.data import load_manifest
    from tlmic_feats.features.pixels import load_pixels

    store = extract_features(
        ExtractConfig(
            data=DataConfig(str(phantom_dir / "val")),
            backbone="resnet18",
            weights="random:3",
            layers="2.1,3",
            pool=pool,
            store=str(tmp_path / "s.zarr"),
        ),
        progress=False,
    ).store
    b = build_backbone("resnet18", "random:3")
    m = load_manifest(DataConfig(str(phantom_dir / "val")))
    px = torch.from_numpy(load_pixels(m.source, np.arange(len(m)), 256, "bilinear"))[:, None]
    for address in ("2.1", "3"):
        net = build_network(b, address, 1, 0.2, pool).eval()
        assert net.head.in_features == store.features(address).shape[1]
        with torch.inference_mode():
            feats = net.features(center_crop(px, 224)).numpy()
        # the store runs channels_last, this network NCHW: other conv kernels, float-rounding apart
        np.testing.assert_allclose(feats, store.features(address), rtol=1e-4, atol=1e-5)


def test_resume_mid_run_continues_to_the_same_weights(easy_dir, tmp_path):
    """Interrupted after the evaluation at step 2 of 6 (mid-epoch: 32 images at batch 12), resumed:
    the same history and the same final weights as an uninterrupted run, step for step."""
    kw = dict(export_onnx=False, batch_size=12, keep_checkpoints=True)
    whole = run_finetune(cfg(easy_dir, tmp_path / "whole", **kw), progress=False, log=lambda m: None)

    class Stop(Exception):
        pass

    def stop_at_step_2(step):
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        run_finetune(cfg(easy_dir, tmp_path / "cut", **kw), progress=False, log=lambda m: None, on_eval=stop_at_step_2)
    resumed = run_finetune(cfg(easy_dir, tmp_path / "cut", **kw), resume=True, progress=False, log=lambda m: None)
    assert resumed.resumed_from == 2
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("seconds", "eval_seconds")} for e in h]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    assert [h["step"] for h in whole.history] == [2, 4, 6]
    for name in ("best.pt", "last.pt"):
        a = torch.load(whole.out / name, weights_only=True)["model"]
        b = torch.load(resumed.out / name, weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert resumed.metrics["auroc"] == whole.metrics["auroc"]


def test_run_directory_rules(easy_dir, easy_run, tmp_path, monkeypatch):
    import os

    with pytest.raises(UsageError, match="holds a finetuning run; pass --resume"):
        run_finetune(cfg(easy_dir, easy_run.out), resume=False, progress=False, log=lambda m: None)
    again = run_finetune(cfg(easy_dir, easy_run.out), progress=False, log=lambda m: None)  # a rerun: the stored result
    assert again.already_complete and again.metrics == easy_run.metrics
    # the same data and run directory spelled relative to where one stands are the same run, not another
    monkeypatch.chdir(easy_run.out.parent)
    relative = cfg(os.path.relpath(easy_dir), os.path.relpath(easy_run.out))
    assert relative.data.path != str(easy_dir)
    again = run_finetune(relative, progress=False, log=lambda m: None)
    assert again.already_complete and again.metrics == easy_run.metrics
    with pytest.raises(
        UsageError, match=r"holds another finetuning run \(differs in: config\.training\.lr \(0\.001 -> 0\.01\)\)"
    ):
        run_finetune(cfg(easy_dir, easy_run.out, lr=1e-2), resume=True, progress=False, log=lambda m: None)
    with pytest.raises(UnknownCutPointError, match=r"layer 9 is not a cut point of resnet18; valid: all, blocks"):
        run_finetune(cfg(easy_dir, tmp_path / "x", truncate="9"), progress=False, log=lambda m: None)


def test_frozen_backbone_changes_no_backbone_weight(easy_dir, tmp_path):
    from tlmic_feats.backbones import build_backbone

    r = run_finetune(
        cfg(easy_dir, tmp_path / "frozen", freeze_backbone=True, steps=4, lr=1e-2, export_onnx=False),
        progress=False,
        log=lambda m: None,
    )
    trained = torch.load(r.out / "best.pt", weights_only=True)["model"]
    initial = build_network(build_backbone("resnet18", "random:0"), "2", 1, 0.2).state_dict()
    backbone_keys = [k for k in initial if k.startswith("backbone.")]
    assert backbone_keys and all(torch.equal(trained[k], initial[k]) for k in backbone_keys)  # BN buffers too
    assert not torch.equal(trained["head.weight"], initial["head.weight"])


def _logreg_probes(phantom_dir, tmp_path):
    """Features of resnet18 (random:1) at cut point 2 and the logistic-regression probe run on them."""
    from tlmic_feats.probes.config import ProbeConfig
    from tlmic_feats.probes.grid import run_probes

    store = extract_features(
        ExtractConfig(
            data=DataConfig(str(phantom_dir)),
            backbone="resnet18",
            weights="random:1",
            layers="2.2,2",  # an alias: block end 2 is unit 2.2, fitted once (under 2.2)
            store=str(tmp_path / "s.zarr"),
        ),
        progress=False,
    ).store
    run = run_probes(
        ProbeConfig(store=str(store.path), models=("logreg",), seeds=1, bootstrap=10, out=str(tmp_path / "p")),
        progress=False,
    )
    return store, run


def test_head_init_reproduces_the_probe(phantom_dir, tmp_path):
    from tlmic_feats.probes.estimators import load_probe

    store, run = _logreg_probes(phantom_dir, tmp_path)
    w, b, name = head_from_probe(run.out, "2", 1.0, 0, "resnet18")
    X = store.features("2")
    probe = load_probe(run.out / "probes" / name)
    np.testing.assert_allclose(X @ w.T[:, 0] + b[0], probe.decision_function(X), rtol=1e-4, atol=1e-4)
    assert name == "L2.2-logreg-f1-s0"
    with pytest.raises(UsageError, match="LP-FT needs resnet50"):
        head_from_probe(run.out, "2", 1.0, 0, "resnet50")
    with pytest.raises(UsageError, match=r"no logreg probe at layer 2, fraction 0.5, seed 0; it has fraction 1 seed 0"):
        head_from_probe(run.out, "2", 0.5, 0, "resnet18")  # never another subset's probe


def test_lpft_head_keeps_the_probe_under_bf16_autocast(phantom_dir, tmp_path):
    """The folded head (w = coef / scale, b = intercept - sum(coef * mean / scale)) gives its logit
    as a difference of large terms. Under bf16 autocast the network's head still computes in fp32,
    so an LP-FT run starts from the probe's logits on the features it is given (a bf16 head is off
    by up to 5e-4 here, on logits of about 0.03)."""
    from tlmic_feats.backbones import build_backbone
    from tlmic_feats.probes.estimators import load_probe

    store, run = _logreg_probes(phantom_dir, tmp_path)
    w, b, name = head_from_probe(run.out, "2", 1.0, 0, "resnet18")
    X = store.features("2")
    net = build_network(build_backbone("resnet18", "random:1"), "2", 1, 0.0).eval()
    with torch.no_grad():
        net.head.weight.copy_(torch.from_numpy(w))
        net.head.bias.copy_(torch.from_numpy(b))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net.head(torch.from_numpy(X))
            from_pixels = net(torch.zeros(2, 1, 64, 64, dtype=torch.uint8))
    reference = load_probe(run.out / "probes" / name).decision_function(X)  # numpy float64: standardize, then linear
    np.testing.assert_allclose(logits[:, 0].double().numpy(), reference, rtol=1e-5, atol=1e-5)
    assert logits.dtype == from_pixels.dtype == torch.float32


def test_finetune_cli(easy_dir, tmp_path):
    args = [
        "finetune",
        "--data",
        str(easy_dir),
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--truncate",
        "1",
        "--input-size",
        "64",
        "--steps",
        "2",
        "--lr",
        "1e-3",
        "--out",
        str(tmp_path / "r"),
        "--precision",
        "fp32",
        "--bootstrap",
        "50",
        "--quiet",
    ]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output + r.stderr
    assert "truncated at 1" in r.output and "resnet18 full (4)" in r.output and "model.onnx" in r.output
    assert "--backbone resnet18 --weights random`" in r.output  # the next command keeps the run's weights
    r = CliRunner().invoke(cli, args)  # a rerun of a finished run: its stored result, as extract/probe/study do
    assert r.exit_code == 0 and f"run {tmp_path / 'r'} is complete: its stored result" in r.output, r.output
    assert "truncated at 1" in r.output
    r = CliRunner().invoke(cli, [*args[:8], "4.7", *args[9:]])
    assert r.exit_code == 2 and "layer 4.7 is not a cut point of resnet18" in r.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["steps_run"] == 2 and metrics["address"] == "1"
    bare = [str(tmp_path / "bare") if a == str(tmp_path / "r") else a for a in args] + ["--no-compactness"]
    r = CliRunner().invoke(cli, bare)  # no compactness.md to show: the summary says the rest, no traceback
    assert r.exit_code == 0 and r.exception is None, r.output + r.stderr
    assert "truncated at 1" in r.output and not (tmp_path / "bare" / "compactness.md").exists()


def test_scores_from_logits_are_the_logistic_and_softmax_without_overflow():
    from scipy.special import softmax

    from tlmic_feats.finetune.losses import scores_from_logits

    logits = np.array([[-800.0, 3.0], [0.0, 900.0], [2.0, -1.0]])
    # torch's own sigmoid is the independent reference (float64: exact at these magnitudes)
    np.testing.assert_allclose(scores_from_logits("binary", logits), torch.sigmoid(torch.from_numpy(logits[:, 0])).numpy())
    np.testing.assert_allclose(scores_from_logits("multilabel", logits), torch.sigmoid(torch.from_numpy(logits)).numpy())
    np.testing.assert_allclose(scores_from_logits("multiclass", logits), softmax(logits, axis=1))


def test_a_finished_run_drops_its_resume_state_and_resuming_it_returns_its_result(easy_dir, easy_run):
    assert (easy_run.out / "best.pt").is_file() and not (easy_run.out / "last.pt").exists()
    again = run_finetune(cfg(easy_dir, easy_run.out), resume=True, progress=False, log=lambda m: None)
    assert again.already_complete and again.metrics == json.loads((easy_run.out / "metrics.json").read_text())
    assert again.history == easy_run.history and again.best_step == easy_run.best_step
    m = easy_run.metrics
    assert (m["steps"], m["steps_run"], m["eval_every"], m["budget_policy"]) == (6, 6, 2, "steps")
    assert m["best_step"] in (2, 4, 6) and m["train_seconds"] > 0
    with open(easy_run.out / "history.csv") as f:
        header = next(csv.reader(f))
    assert header[:3] == ["step", "epoch", "train_loss"]


def test_pooling_and_input_size_are_part_of_a_runs_identity(easy_dir, easy_run):
    with pytest.raises(UsageError, match=r"config\.pool \('avg' -> 'avgmax'\)"):
        run_finetune(cfg(easy_dir, easy_run.out, pool="avgmax"), resume=True, progress=False, log=lambda m: None)
    with pytest.raises(UsageError, match=r"config\.input_size \(64 -> 96\)"):
        run_finetune(cfg(easy_dir, easy_run.out, input_size=96), resume=True, progress=False, log=lambda m: None)


def test_input_size_sets_the_crop_and_the_resize_keeps_the_weights_ratio(easy_dir, tmp_path):
    from tlmic_feats.backbones import build_backbone

    pre = build_backbone("resnet18", "random:0", input_size=128).preprocess
    assert (pre.input_size, pre.resize_size) == (128, 146)  # 224 of 256
    r = run_finetune(
        cfg(easy_dir, tmp_path / "small", input_size=96, pool="avgmax", export_onnx=False, steps=2),
        progress=False,
        log=lambda m: None,
    )
    assert r.metrics["input_size"] == 96 and r.metrics["pool"] == "avgmax"
    run = json.loads((r.out / "run.json").read_text())
    assert (run["preprocess"]["input_size"], run["preprocess"]["resize_size"]) == (96, 109)
    with pytest.raises(UsageError, match="--input-size 16 is too small"):
        build_backbone("resnet18", "random:0", input_size=16)


@pytest.mark.slow
def test_the_default_budget_learns_from_60_training_images(tmp_path):
    """The data-poor regime: 60 training phantoms (24 with nodules), every default of the budget and
    recipe. Test AUROC recomputed by scikit-learn from the saved predictions."""
    from sklearn.metrics import roc_auc_score

    from tlmic_feats.data.phantom import PhantomConfig, make_phantom_dataset
    from tlmic_feats.finetune.budget import MIN_STEPS

    data = make_phantom_dataset(
        tmp_path / "data", PhantomConfig(n_train=60, n_val=40, n_test=80, size=128, nodule_px=(3.5, 6.5), seed=7)
    )
    r = run_finetune(
        from_flat(FinetuneConfig,
            data=DataConfig(str(data)),
            backbone="efficientnet_lite0",
            weights="imagenet",
            truncate="5",
            pool="avgmax",
            input_size=96,
            bootstrap=10,
            export_onnx=False,
            compactness=False,
            out=str(tmp_path / "run"),
        ),
        progress=False,
        log=lambda m: None,
    )
    assert (r.metrics["steps"], r.metrics["budget_policy"]) == (MIN_STEPS, "min_steps")  # 20 epochs: 40 steps
    with open(r.out / "predictions.csv") as f:
        test = [row for row in csv.DictReader(f) if row["split"] == "test"]
    auroc = roc_auc_score([int(t["y"]) for t in test], [float(t["score"]) for t in test])
    assert auroc == pytest.approx(r.metrics["auroc"], abs=1e-12)
    assert auroc >= 0.8, r.history
