"""Scale-out: extraction and probe grids on a Dask LocalCluster of 2 worker processes, LightGBM
across the cluster, stores on fsspec URLs, and finetuning under torchrun (2 CPU processes, gloo)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tlmic_feats import DataConfig, ExtractConfig, FeatureStore, extract_features
from tlmic_feats.runtime.errors import ClusterError, UsageError


CLI = [sys.executable, "-c", "from tlmic_cli.main import main; main()"]
SMALL = dict(backbone="resnet18", weights="random:5", layers="all", chunk_rows=4, batch_size=2)


def _assert_same_store(a: FeatureStore, b: FeatureStore) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.skipped, b.skipped)
    assert a.addresses == b.addresses
    for address in a.addresses:
        np.testing.assert_array_equal(a.features(address), b.features(address))  # bit for bit


@pytest.fixture(scope="module")
def phantom200(tmp_path_factory):
    from tlmic_feats.data.phantom import PhantomConfig, make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("ph200"), PhantomConfig(n_train=160, n_val=20, n_test=20))


def test_cluster_spec_is_parsed_or_refused():
    from tlmic_feats.runtime.cluster import parse_cluster

    assert parse_cluster("local:3", device="cpu").n_workers == 3
    assert parse_cluster("tcp://10.0.0.1:8786").address == "tcp://10.0.0.1:8786"
    for bad in ("local", "10.0.0.1:8786", "http://x:1"):
        with pytest.raises(UsageError, match="valid: local:N, local:gpus, tcp://HOST:PORT"):
            ExtractConfig(data=DataConfig("."), cluster=bad).validate()
    with pytest.raises(UsageError, match="'local:0': need at least one worker"):
        parse_cluster("local:0")


@pytest.mark.slow
def test_cluster_store_equals_single_process_store(phantom_dir, tmp_path):
    data = DataConfig(str(phantom_dir / "train"))
    single = extract_features(ExtractConfig(data=data, **SMALL, store=str(tmp_path / "a.zarr")), progress=False)
    spread = extract_features(
        ExtractConfig(data=data, **SMALL, store=str(tmp_path / "b.zarr"), cluster="local:2"), progress=False
    )
    assert spread.computed_images == len(single.store) == 20
    _assert_same_store(single.store, spread.store)
    assert spread.store.config["cluster"] == "local:2"
    assert spread.store.fingerprint == single.store.fingerprint  # where it ran is not what it holds


@pytest.mark.slow
def test_worker_killed_then_client_killed_then_rerun_gives_the_identical_store(phantom200, tmp_path):
    import psutil

    env = {**os.environ, "TLMIC_CACHE": str(tmp_path / "cache")}
    reference = extract_features(
        ExtractConfig(data=DataConfig(str(phantom200)), **SMALL, store=str(tmp_path / "ref.zarr")), progress=False
    ).store
    victim = tmp_path / "victim.zarr"
    args = ["extract", "--data", str(phantom200), "--store", str(victim), "--cluster", "local:2", "--quiet"]
    args += ["--backbone", "resnet18", "--weights", "random:5", "--chunk-rows", "4", "--batch-size", "2"]

    def done_shards() -> int:
        try:
            import zarr

            return int(np.asarray(zarr.open_group(str(victim), mode="r")["shard_done"][:]).sum())
        except Exception:
            return 0

    log = open(tmp_path / "victim.log", "w")  # noqa: SIM115 -- closed below, after the kills
    proc = subprocess.Popen([*CLI, *args], env=env, stdout=log, stderr=log, start_new_session=True)
    killed_worker = killed_client = False
    deadline = time.time() + 180
    while proc.poll() is None and time.time() < deadline:
        n = done_shards()
        if not killed_worker and n >= 3:
            workers = [
                c for c in psutil.Process(proc.pid).children(recursive=True) if "spawn_main" in " ".join(c.cmdline())
            ]
            assert workers, "no Dask worker process found"
            workers[0].send_signal(signal.SIGKILL)  # Dask reruns its task elsewhere
            killed_worker = True
        if killed_worker and n >= 20:
            os.killpg(proc.pid, signal.SIGKILL)  # the client and its local cluster, mid-run
            killed_client = True
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    log.close()
    assert killed_worker and killed_client, "the run ended before both kills; make it longer"
    before = done_shards()
    assert 20 <= before < 50
    with pytest.raises(Exception, match="unfinished"):
        FeatureStore.open(victim)
    rerun = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    computed = int(rerun.stdout.split("extracted ")[1].split(" images")[0])
    assert computed == 200 - 4 * before  # only the shards not flagged done
    _assert_same_store(reference, FeatureStore.open(victim))
    assert not (tmp_path / "victim.zarr.lock").exists()


def test_workers_that_cannot_see_the_store_are_refused(phantom_dir):
    # memory:// lives in this process only: the workers cannot see it.
    config = ExtractConfig(
        data=DataConfig(str(phantom_dir / "val")), **SMALL, store="memory://tlmic-test/s.zarr", cluster="local:2"
    )
    with pytest.raises(ClusterError, match=r"2 of 2 Dask worker\(s\) cannot see the store at memory://"):
        extract_features(config, progress=False)


def test_store_on_an_fsspec_url_equals_the_local_one(phantom_dir, tmp_path):
    data = DataConfig(str(phantom_dir / "val"))
    local = extract_features(ExtractConfig(data=data, **SMALL, store=str(tmp_path / "a.zarr")), progress=False).store
    url = "memory://tlmic-test/url.zarr"
    remote = extract_features(ExtractConfig(data=data, **SMALL, store=url), progress=False).store
    assert str(remote.path) == url
    _assert_same_store(local, FeatureStore.open(url))
    again = extract_features(ExtractConfig(data=data, **SMALL, store=url), progress=False)
    assert again.already_complete  # resume logic works through fsspec too
    file_url = extract_features(
        ExtractConfig(data=data, **SMALL, store=f"file://{tmp_path / 'a.zarr'}"), progress=False
    )
    assert file_url.already_complete  # file:// is the same local store


@pytest.fixture(scope="module")
def easy_store(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 240
    y = (rng.random(n) < 0.35).astype(np.float32)
    feats = {
        "1": (rng.normal(size=(n, 12)) + y[:, None] * 0.2).astype(np.float32),
        "2": (rng.normal(size=(n, 24)) + y[:, None] * 0.9).astype(np.float32),
    }
    splits = np.array(["train"] * 160 + ["val"] * 40 + ["test"] * 40)
    path = tmp_path_factory.mktemp("easy") / "easy.zarr"
    FeatureStore.from_arrays(
        path, feats, labels=y[:, None], label_kind="binary", label_names=["no", "yes"], splits=splits, chunk_rows=32
    )
    return path


def _rows(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "fit_seconds"} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_probe_grid_on_the_cluster_equals_the_local_run(easy_store, tmp_path):
    from tlmic_feats.probes.config import ProbeConfig
    from tlmic_feats.probes.grid import run_probes

    base = dict(store=str(easy_store), fractions=(0.5, 1.0), seeds=2, bootstrap=200, control="shuffle", permutations=4)
    here = run_probes(ProbeConfig(**base, out=str(tmp_path / "here")), progress=False)
    there = run_probes(ProbeConfig(**base, out=str(tmp_path / "there"), cluster="local:2"), progress=False)
    # per model x fraction: 2 layers x 2 seeds real, and 4 draws on each of the 2 layers
    assert len(here.rows) == 2 * 2 * (2 * 2 + 4 * 2)
    assert _rows(here.out / "results.csv") == _rows(there.out / "results.csv")
    for f in (here.out / "predictions").iterdir():
        assert f.read_text() == (there.out / "predictions" / f.name).read_text()
    # a rerun on the cluster resumes: every cell is finished already, nothing is refitted
    before = {p.name: p.stat().st_mtime_ns for p in (there.out / "cells").iterdir()}
    run_probes(ProbeConfig(**base, out=str(tmp_path / "there"), cluster="local:2"), progress=False)
    assert before == {p.name: p.stat().st_mtime_ns for p in (there.out / "cells").iterdir()}


@pytest.mark.slow
def test_distributed_lightgbm_fit_learns_and_saves_loadable_probes(easy_store, tmp_path):
    from tlmic_feats.probes.config import ProbeConfig
    from tlmic_feats.probes.estimators import load_probe
    from tlmic_feats.probes.grid import run_probes

    with pytest.raises(UsageError, match="distributed_fit .* needs cluster and models lightgbm"):
        ProbeConfig(store=str(easy_store), distributed_fit=True).validate()
    run = run_probes(
        ProbeConfig(
            store=str(easy_store),
            layers="2",
            models=("lightgbm",),
            seeds=1,
            bootstrap=100,
            out=str(tmp_path / "d"),
            cluster="local:2",
            distributed_fit=True,
        ),
        progress=False,
    )
    (row,) = run.rows
    assert row["auroc"] > 0.8  # strong signal in layer 2
    assert row["hyper"]["best_iteration"] % 10 == 0 or row["hyper"]["best_iteration"] == 300
    store = FeatureStore.open(easy_store)
    test = store.splits == "test"
    probe = load_probe(run.out / "probes" / row["run_id"])
    with open(run.out / row["predictions"]) as f:
        saved = [float(r["score"]) for r in csv.DictReader(f) if r["split"] == "test"]
    np.testing.assert_allclose(probe.predict_proba(store.features("2")[test])[:, 1], saved, rtol=1e-6, atol=1e-9)


# --- torchrun --------------------------------------------------------------------------------------


def _finetune_args(data, out, steps):
    return [
        "finetune",
        "--data",
        str(data),
        "--backbone",
        "resnet18",
        "--weights",
        "random:1",
        "--truncate",
        "2",
        "--freeze-until",  # frozen parameters under DDP: the wrapper must be made after freezing
        "1",
        "--steps",
        str(steps),
        "--eval-every",
        "2",
        "--keep-checkpoints",
        "--batch-size",
        "8",
        "--precision",
        "fp32",
        "--bootstrap",
        "50",
        "--no-onnx",
        "--out",
        str(out),
        "--nproc",
        "2",
        "--quiet",
    ]


@pytest.mark.slow
def test_torchrun_two_processes_train_checkpoint_loads_alone_and_restart_resumes(phantom_dir, tmp_path):
    import torch

    from tlmic_feats.backbones.networks import build_network
    from tlmic_feats.backbones.registry import build_backbone

    env = {**os.environ, "TLMIC_CACHE": str(tmp_path / "cache")}
    whole = subprocess.run(
        [*CLI, *_finetune_args(phantom_dir, tmp_path / "whole", 4)], env=env, capture_output=True, text=True
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    metrics = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps_run"] == 4

    # rank 0's checkpoint loads into a plain single-process network and gives the run's val scores
    net = build_network(build_backbone("resnet18", "random:1"), "2", 1, 0.2)
    net.load_state_dict(torch.load(tmp_path / "whole" / "best.pt", weights_only=True)["model"])
    net.eval()
    from tlmic_feats.backbones.preprocess import center_crop
    from tlmic_feats.data.readers import load_manifest
    from tlmic_feats.finetune.setup import load_pixels_for

    manifest = load_manifest(DataConfig(str(phantom_dir)))
    val = np.flatnonzero(manifest.splits == "val")
    pre = build_backbone("resnet18", "random:1").preprocess
    px = torch.from_numpy(load_pixels_for(manifest, val, pre, 0))
    with torch.no_grad():
        logits = net(center_crop(px[:, None], pre.input_size)).numpy()[:, 0]
    with open(tmp_path / "whole" / "predictions.csv") as f:
        saved = {r["id"]: float(r["score"]) for r in csv.DictReader(f) if r["split"] == "val"}
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), [saved[manifest.ids[i]] for i in val], atol=1e-5)

    # the last rank dies after the evaluation at step 2; torchrun restarts the group, which resumes there
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=1"]
    args = _finetune_args(phantom_dir, tmp_path / "crashed", 4)
    args = args[: args.index("--nproc")] + args[args.index("--nproc") + 2 :]  # torchrun is started here directly
    crashed = subprocess.run(
        [*torchrun, str(Path(__file__).with_name("torchrun_crash.py")), *args],
        env={**env, "TLMIC_TEST_CRASH_AFTER_STEP": "2"},
        capture_output=True,
        text=True,
    )
    assert crashed.returncode == 0, crashed.stderr[-3000:]
    assert "exitcode: 17" in crashed.stderr  # the crash did happen
    again = json.loads((tmp_path / "crashed" / "metrics.json").read_text())
    assert again["steps_run"] == 4
    for k in ("auroc", "auprc", "best_step"):
        assert again[k] == metrics[k]  # resumed to the same result as the uninterrupted run
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "crashed" / "last.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
