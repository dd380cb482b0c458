"""What every command pays before its work: the cut-point table without building a network, the
resume state written at a cadence (a kill still resumes to the same weights), and a library call
with ``progress=False`` that prints nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tlmic_feats import DataConfig
from tlmic_feats.runtime.options import from_flat
from tlmic_feats.backbones.layers import compute_table_entry, layer_table, table_entry
from tlmic_feats.backbones.registry import list_backbones

from .conftest import REPO


@pytest.mark.parametrize("name", list_backbones())
def test_shipped_cut_point_tables_equal_fresh_builds(name):
    from tlmic_feats.backbones.layer_tables import TABLES

    fresh = compute_table_entry(name)
    shipped = TABLES[name]
    assert [list(r) for r in shipped["cut_points"]] == fresh["cut_points"]
    assert shipped["full_params"] == fresh["full_params"]
    assert {**shipped["preprocess"], "mean": list(shipped["preprocess"]["mean"])} == {
        **fresh["preprocess"],
        "mean": list(fresh["preprocess"]["mean"]),
    }


def test_a_shipped_table_at_another_input_size_is_the_built_one():
    """The map sizes follow the input size; channels, strides and parameters do not change."""
    from tlmic_feats.backbones.registry import build_backbone

    rows = layer_table("efficientnet_lite0", granularity="blocks", input_size=96)
    b = build_backbone("efficientnet_lite0", "random", input_size=96)
    blocks = [cp for cp in b.cut_points if cp.is_block]
    assert [r.address for r in rows] == [cp.address for cp in blocks]
    assert [(r.channels, r.stride) for r in rows] == [(cp.channels, cp.stride) for cp in blocks]
    import torch

    x = torch.zeros(1, 3, 96, 96)
    for r, cp in zip(rows, blocks, strict=True):
        net = b.truncated(cp)
        assert r.params == sum(p.numel() for p in net.parameters())
        with torch.no_grad():
            h, w = net(x).shape[-2:]
        assert r.grid == f"{h}x{w}"


def test_tlmic_layers_imports_no_torch():
    code = textwrap.dedent(
        """
        import sys
        from click.testing import CliRunner
        from tlmic_cli.main import cli
        r = CliRunner().invoke(cli, ["layers", "--backbone", "resnet18", "--granularity", "blocks"])
        assert r.exit_code == 0, r.output
        print(r.output)
        heavy = [m for m in ("torch", "timm", "torchvision") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()[2:] if ln.strip()}
    assert rows["4"][1:5] == ["layer4", "512", "32", "7x7"] and rows["full"][-1] == "11,689,512"


def test_a_derived_backbones_table_is_computed_once_then_read(tmp_path):
    name = "timm:vit_tiny_patch16_224"
    first = layer_table(name, granularity="blocks", input_size=64)
    cached = sorted((tmp_path / "cache" / "tables").glob("*.json"))
    assert len(cached) == 1 and "64px" in cached[0].name
    assert json.loads(cached[0].read_text()) == json.loads(json.dumps(compute_table_entry(name, 64)))
    assert layer_table(name, granularity="blocks", input_size=64) == first
    assert table_entry(name, 64)["full_params"] == compute_table_entry(name, 64)["full_params"]


# --- the resume state at a cadence -----------------------------------------------------------------


def _ft(data, out, **kw):
    from tlmic_feats.finetune.config import FinetuneConfig
    from tlmic_feats.runtime.options import from_flat

    base = dict(
        data=DataConfig(str(data)),
        backbone="resnet18",
        weights="random:0",
        truncate="2",
        input_size=64,  # the images' own size: the cadence and the resume do not depend on it
        out=str(out),
        steps=6,
        eval_every=1,
        batch_size=12,
        precision="fp32",
        bootstrap=50,
        patience=10,
        export_onnx=False,
        compactness=False,
        keep_checkpoints=True,
    )
    return from_flat(FinetuneConfig, **{**base, **kw})


def test_the_resume_state_is_written_at_the_cadence_and_at_the_end(disk_dir, tmp_path, monkeypatch):
    from tlmic_feats.finetune import loop
    from tlmic_feats.finetune.trainer import run_finetune

    saved = []
    real = loop.save_torch
    monkeypatch.setattr(loop, "save_torch", lambda obj, path: (saved.append(path.name), real(obj, path)))
    monkeypatch.setattr(loop, "CHECKPOINT_SECONDS", 1e9)
    r = run_finetune(_ft(disk_dir, tmp_path / "rare"), progress=False)
    assert saved.count("last.pt") == 1 and saved.count("best.pt") == 1  # six evaluations, one write each
    monkeypatch.setattr(loop, "CHECKPOINT_SECONDS", 0.0)
    saved.clear()
    every = run_finetune(_ft(disk_dir, tmp_path / "every"), progress=False)
    assert saved.count("last.pt") == 6 and saved.count("best.pt") == sum(h["best"] for h in every.history)
    import torch

    for name in ("best.pt", "last.pt"):  # the same files either way
        a = torch.load(r.out / name, weights_only=True)["model"]
        b = torch.load(every.out / name, weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert r.metrics["auroc"] == every.metrics["auroc"]


def test_a_kill_between_checkpoints_resumes_to_the_same_weights(disk_dir, tmp_path):
    """Killed (os._exit) after the evaluation at step 4 with no checkpoint written since the start:
    the resumed run replays from step 0 to the history and weights of an uninterrupted run."""
    import torch

    from tlmic_feats.finetune.trainer import run_finetune

    whole = run_finetune(_ft(disk_dir, tmp_path / "whole"), progress=False)
    code = textwrap.dedent(
        f"""
        import os
        from tests.test_fixed_costs import _ft
        from tlmic_feats.finetune import loop
        from tlmic_feats.finetune.trainer import run_finetune
        loop.CHECKPOINT_SECONDS = 1e9
        config = _ft({str(disk_dir)!r}, {str(tmp_path / "killed")!r})
        run_finetune(config, progress=False, on_eval=lambda step: step == 4 and os._exit(17))
        """
    )
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert killed.returncode == 17, killed.stderr[-2000:]
    assert not (tmp_path / "killed" / "last.pt").exists()
    resumed = run_finetune(_ft(disk_dir, tmp_path / "killed"), resume=True, progress=False)
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("seconds", "eval_seconds")} for e in h]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    for name in ("best.pt", "last.pt"):
        a = torch.load(whole.out / name, weights_only=True)["model"]
        b = torch.load(resumed.out / name, weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), name


# --- progress=False prints nothing -------------------------------------------------------------------


def test_progress_false_prints_nothing(disk_dir, tmp_path, capfd):
    from tlmic_feats import ExtractConfig, ProbeConfig, extract_features, run_probes
    from tlmic_feats.finetune.trainer import run_finetune
    from tlmic_feats.study.config import StudyConfig
    from tlmic_feats.study.run import run_study

    capfd.readouterr()
    ft = _ft(disk_dir, tmp_path / "ft", export_onnx=True, compactness=True, keep_checkpoints=False)
    run_finetune(ft, progress=False)
    assert capfd.readouterr() == ("", ""), "finetune"
    report = extract_features(
        ExtractConfig(DataConfig(str(disk_dir)), backbone="resnet18", weights="random", layers="blocks", input_size=64),
        progress=False,
    )
    assert capfd.readouterr() == ("", ""), "extract"
    run_probes(ProbeConfig(store=str(report.store.path), models=("logreg",), out=str(tmp_path / "p")), progress=False)
    assert capfd.readouterr() == ("", ""), "probes"
    config = from_flat(
        StudyConfig,
        data=DataConfig(str(disk_dir), format="imagefolder"),
        backbone="resnet18",
        weights="random:3",
        input_size=64,
        fractions=(1.0,),
        seeds=1,
        top_blocks=1,
        top_units=0,
        search="probe",
        baselines=(),
        scratch=False,
        steps=2,
        eval_every=2,
        batch_size=8,
        bootstrap=50,
        out=str(tmp_path / "study"),
        store=str(tmp_path / "store.zarr"),
    )
    run_study(config, progress=False)
    assert capfd.readouterr() == ("", ""), "study"


def test_the_full_depth_reference_is_measured_once_per_process(monkeypatch):
    import torch

    from tlmic_feats.backbones.cutpoints import full_depth_address
    from tlmic_feats.backbones.networks import build_network
    from tlmic_feats.backbones.registry import build_backbone
    from tlmic_feats.finetune import compactness, outputs

    measured = []
    real = compactness.measure
    monkeypatch.setattr(compactness, "measure", lambda n, m, x: measured.append(n) or real(n, m, x, runs=3))
    monkeypatch.setattr(outputs, "_FULL_DEPTH", {})
    b = build_backbone("resnet18", "random:0")
    x = torch.randint(0, 256, (1, 1, 64, 64), dtype=torch.uint8)
    full = full_depth_address(b)
    first = outputs.compactness_pair(b, "2", build_network(b, "2", 1, 0.0, "avg").eval(), x, 1)
    second = outputs.compactness_pair(b, "3", build_network(b, "3", 1, 0.0, "avg").eval(), x, 1)
    assert measured == ["resnet18 truncated at 2", f"resnet18 full ({full})", "resnet18 truncated at 3"]
    assert first[1] == second[1]
    assert second[1].params == sum(p.numel() for p in build_network(b, full, 1, 0.0, "avg").parameters())


def test_a_finished_extraction_or_finetune_rerun_answers_without_building_the_network(
    phantom_dir, tmp_path, monkeypatch
):
    """A rerun's answer comes from the record (configuration, data fingerprint, weights file's sha)
    without building the backbone; a changed data set is not mistaken for the finished one."""
    import shutil

    import tlmic_feats.backbones.registry as registry
    from tlmic_feats import ExtractConfig, FinetuneConfig, TrainingConfig, extract_features, run_finetune

    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    ex = ExtractConfig(DataConfig(data), backbone="efficientnet_lite0", layers="blocks", input_size=64)
    first = extract_features(ex, progress=False)
    ft = FinetuneConfig(
        DataConfig(data), truncate="3", input_size=64, training=TrainingConfig(steps=2, batch_size=8),
        bootstrap=10, export_onnx=False, compactness=False,
    )  # fmt: skip
    trained = run_finetune(ft, progress=False)

    def refuse(*a, **k):
        raise AssertionError("the network was built")

    monkeypatch.setattr(registry, "build_backbone", refuse)
    again = extract_features(ex, progress=False)
    assert again.already_complete and again.store.path == first.store.path
    rerun = run_finetune(ft, progress=False)  # the default run directory, found by its record
    assert rerun.already_complete and rerun.out == trained.out and rerun.metrics == trained.metrics
    # another data set under the same path: the full check runs (and builds the network)
    extra = next((data / "test").rglob("*.png"))
    shutil.copy(extra, extra.with_name("copy-" + extra.name))
    with pytest.raises(AssertionError, match="the network was built"):
        extract_features(ex, progress=False)
    with pytest.raises(AssertionError, match="the network was built"):
        run_finetune(ft, progress=False)
