"""The truncated-finetuning arm."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tlmic_cli.main import cli

from tlmic_feats import DataConfig, ExtractConfig, extract_features
from tlmic_feats.errors import UnknownCutPointError, UsageError
from tlmic_feats.finetune import FinetuneConfig, build_network, finetune, head_from_probe


@pytest.fixture(scope="module")
def easy_dir(tmp_path_factory):
    """Trivially separable radiograph-sized images: class 'disk' has a bright disk, 'plain' not."""
    from PIL import Image

    root = tmp_path_factory.mktemp("easy")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256]
    for split, n in (("train", 32), ("val", 16), ("test", 16)):
        for i in range(n):
            cls = ("plain", "disk")[i % 2]
            img = rng.normal(90, 20, (256, 256))
            if cls == "disk":
                cy, cx = rng.integers(80, 176, 2)
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < 35**2] += 110
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / split / cls / f"{split}{i:02d}.png")
    return root


def cfg(data, out, **kw):
    base = dict(
        data=DataConfig(str(data)),
        backbone="resnet18",
        weights="random:0",
        truncate="2",
        out=str(out),
        epochs=3,
        batch_size=16,
        lr=1e-3,
        precision="fp32",
        bootstrap=100,
        patience=10,
    )
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.fixture(scope="module")
def easy_run(easy_dir, tmp_path_factory):
    return finetune(cfg(easy_dir, tmp_path_factory.mktemp("ft") / "run"), progress=False, log=lambda m: None)


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
    x = np.stack([resize_center_crop(m.source.load(index[t["id"]]), resize_size=256, input_size=224) for t in test])
    sess = ort.InferenceSession(str(r.out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x[:, None]})[0]
    np.testing.assert_allclose(1 / (1 + np.exp(-logits[:, 0])), s, atol=1e-4)
    assert r.onnx["max_abs_diff"] <= 1e-4


def test_truncated_network_features_equal_extracted(phantom_dir, tmp_path):
    """One registry: the finetuning network's pooled map at k is what extract stores at k."""
    from tlmic_feats.augment import center_crop
    from tlmic_feats.backbones import build_backbone
    from tlmic_feats.data import load_manifest
    from tlmic_feats.pixels import load_pixels

    store = extract_features(
        ExtractConfig(
            data=DataConfig(str(phantom_dir / "val")),
            backbone="resnet18",
            weights="random:3",
            layers="2.1,3",
            store=str(tmp_path / "s.zarr"),
        ),
        progress=False,
    ).store
    b = build_backbone("resnet18", "random:3")
    m = load_manifest(DataConfig(str(phantom_dir / "val")))
    px = torch.from_numpy(load_pixels(m.source, np.arange(len(m)), 256, "bilinear"))[:, None]
    for address in ("2.1", "3"):
        net = build_network(b, address, 1, 0.2).eval()
        with torch.inference_mode():
            feats = net.features(center_crop(px, 224)).numpy()
        np.testing.assert_allclose(feats, store.features(address), rtol=1e-5, atol=1e-6)


def test_resume_continues_to_the_same_result(easy_dir, tmp_path):
    whole = finetune(cfg(easy_dir, tmp_path / "whole", export_onnx=False), progress=False, log=lambda m: None)

    class Stop(Exception):
        pass

    def stop_after_first(epoch):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        finetune(
            cfg(easy_dir, tmp_path / "cut", export_onnx=False),
            progress=False,
            log=lambda m: None,
            on_epoch=stop_after_first,
        )
    resumed = finetune(
        cfg(easy_dir, tmp_path / "cut", export_onnx=False), resume=True, progress=False, log=lambda m: None
    )
    assert resumed.resumed_from == 1
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    a = torch.load(whole.out / "best.pt", weights_only=True)["model"]
    b = torch.load(resumed.out / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["auroc"] == whole.metrics["auroc"]


def test_run_directory_rules(easy_dir, easy_run, tmp_path):
    with pytest.raises(UsageError, match="holds a finetuning run; pass --resume"):
        finetune(cfg(easy_dir, easy_run.out), progress=False, log=lambda m: None)
    with pytest.raises(UsageError, match=r"configuration differs in config\.lr \(0\.001 -> 0\.01\)"):
        finetune(cfg(easy_dir, easy_run.out, lr=1e-2), resume=True, progress=False, log=lambda m: None)
    with pytest.raises(UnknownCutPointError, match=r"layer 9 is not a cut point of resnet18; valid: all, blocks"):
        finetune(cfg(easy_dir, tmp_path / "x", truncate="9"), progress=False, log=lambda m: None)


def test_frozen_backbone_changes_no_backbone_weight(easy_dir, tmp_path):
    from tlmic_feats.backbones import build_backbone

    r = finetune(
        cfg(easy_dir, tmp_path / "frozen", freeze_backbone=True, epochs=2, lr=1e-2, export_onnx=False),
        progress=False,
        log=lambda m: None,
    )
    trained = torch.load(r.out / "best.pt", weights_only=True)["model"]
    initial = build_network(build_backbone("resnet18", "random:0"), "2", 1, 0.2).state_dict()
    backbone_keys = [k for k in initial if k.startswith("backbone.")]
    assert backbone_keys and all(torch.equal(trained[k], initial[k]) for k in backbone_keys)  # BN buffers too
    assert not torch.equal(trained["head.weight"], initial["head.weight"])


def test_head_init_reproduces_the_probe(phantom_dir, tmp_path):
    from tlmic_feats.probes import load_probe
    from tlmic_feats.probing import ProbeConfig, run_probes

    store = extract_features(
        ExtractConfig(
            data=DataConfig(str(phantom_dir)),
            backbone="resnet18",
            weights="random:1",
            layers="2",
            store=str(tmp_path / "s.zarr"),
        ),
        progress=False,
    ).store
    run = run_probes(
        ProbeConfig(store=str(store.path), models=("logreg",), seeds=1, bootstrap=10, out=str(tmp_path / "p")),
        progress=False,
    )
    w, b, name = head_from_probe(run.out, "2", 1.0, 0, "resnet18")
    X = store.features("2")
    probe = load_probe(run.out / "probes" / name)
    np.testing.assert_allclose(X @ w.T[:, 0] + b[0], probe.decision_function(X), rtol=1e-4, atol=1e-4)
    with pytest.raises(UsageError, match="LP-FT needs resnet50"):
        head_from_probe(run.out, "2", 1.0, 0, "resnet50")


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
        "--epochs",
        "1",
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
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2 and "--resume" in r.stderr
    r = CliRunner().invoke(cli, [*args[:8], "4.7", *args[9:]])
    assert r.exit_code == 2 and "layer 4.7 is not a cut point of resnet18" in r.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and metrics["address"] == "1"
