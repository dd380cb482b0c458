"""The extract arm against independent computations, and its resume / refusal behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlmic_feats import DataConfig, ExtractConfig, FeatureStore, extract_features
from tlmic_feats.runtime.errors import BadImageError, StoreIncompleteError, StoreMismatchError, UsageError


def _independent_nodes(backbone: str, address: str, model) -> tuple[str, bool]:
    """FX node (torchvision feature_extraction) whose output is the map at ``address``, and
    whether a ReLU follows. Written from the architectures, not from tlmic's registry."""
    block, _, unit = address.partition(".")
    k = int(block)
    if backbone.startswith("resnet"):
        n = len(getattr(model, f"layer{k}"))
        u = int(unit) if unit else n
        last = "relu_2" if backbone == "resnet50" else "relu_1"
        return f"layer{k}.{u - 1}.{last}", False
    # densenet121
    if not unit:
        return ("features.norm5", True) if k == 4 else (f"features.transition{k}.pool", False)
    n = len(getattr(model.features, f"denseblock{k}"))
    u = int(unit)
    if u < n:  # the next layer's input concatenation is the map after layer u
        return f"features.denseblock{k}.denselayer{u + 1}.cat", False
    return f"features.denseblock{k}.cat", False


def _reference_inputs(store: FeatureStore, data_root, backbone: str) -> torch.Tensor:
    """The store's images preprocessed by torchvision's own ImageNet transforms (RGB PIL)."""
    import torchvision.models as tvm
    from PIL import Image

    enum = {"resnet50": tvm.ResNet50_Weights, "densenet121": tvm.DenseNet121_Weights}[backbone]
    tf = enum.IMAGENET1K_V1.transforms()
    return torch.stack([tf(Image.open(data_root / i).convert("RGB")) for i in store.ids])


@pytest.mark.parametrize("backbone", ["resnet50", "densenet121"])
def test_every_cut_point_equals_independent_computation(backbone, phantom_dir, tmp_path):
    import torchvision.models as tvm
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(123)
    model = getattr(tvm, backbone)(weights=None).eval()
    weights_file = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights_file)

    report = extract_features(
        ExtractConfig(
            data=DataConfig(str(phantom_dir / "val")),
            backbone=backbone,
            weights=str(weights_file),
            layers="all",
            store=str(tmp_path / "s.zarr"),
            batch_size=4,
            chunk_rows=4,
        ),
        progress=False,
    )
    store = report.store
    assert store.status == "complete" and len(store) == 8

    x = _reference_inputs(store, phantom_dir / "val", backbone)
    nodes = {li.address: _independent_nodes(backbone, li.address, model) for li in store.layers}
    fx = create_feature_extractor(model, return_nodes=sorted({n for n, _ in nodes.values()}))
    with torch.inference_mode():
        maps = fx(x)
    expected_count = {"resnet50": 16 + 4, "densenet121": 58 + 4}[backbone]
    assert len(store.layers) == expected_count
    for li in store.layers:
        node, relu = nodes[li.address]
        m = maps[node].relu() if relu else maps[node]
        want = m.mean(dim=(2, 3)).numpy()
        got = store.features(li.address)
        assert got.shape == want.shape == (8, li.channels)
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < 1e-5, f"{backbone} layer {li.address}: relative error {err:.2e}"


def test_avgmax_pooling_is_avg_then_max(phantom_dir, tmp_path):
    cfg = dict(data=DataConfig(str(phantom_dir / "val")), backbone="resnet18", weights="random:3", layers="2,3.1")
    avg = extract_features(ExtractConfig(**cfg, pool="avg", store=str(tmp_path / "a.zarr")), progress=False).store
    mx = extract_features(ExtractConfig(**cfg, pool="max", store=str(tmp_path / "m.zarr")), progress=False).store
    both = extract_features(ExtractConfig(**cfg, pool="avgmax", store=str(tmp_path / "b.zarr")), progress=False).store
    for a in ("2", "3.1"):
        c = avg.features(a).shape[1]
        assert both.layer(a).channels == 2 * c
        np.testing.assert_array_equal(both.features(a)[:, :c], avg.features(a))
        np.testing.assert_array_equal(both.features(a)[:, c:], mx.features(a))
        assert (mx.features(a) >= avg.features(a) - 1e-6).all()


def test_interrupted_extraction_resumes_to_identical_store(phantom_dir, tmp_path):
    def cfg(name, **kw):
        return ExtractConfig(
            data=DataConfig(str(phantom_dir)),
            backbone="resnet18",
            weights="random:1",
            layers="blocks",
            store=str(tmp_path / name),
            batch_size=3,
            chunk_rows=8,
            **kw,
        )

    full = extract_features(cfg("full.zarr"), progress=False).store

    class Stop(Exception):
        pass

    def stop_after_two(done, total):
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        extract_features(cfg("resumed.zarr"), progress=False, on_shard=stop_after_two)
    with pytest.raises(StoreIncompleteError, match="2 of 5 shards"):
        FeatureStore.open(tmp_path / "resumed.zarr")
    calls = []
    report = extract_features(cfg("resumed.zarr"), progress=False, on_shard=lambda d, t: calls.append(d))
    assert report.computed_images == 36 - 16  # only the three unfinished shards
    assert calls == [3, 4, 5]
    resumed = report.store
    np.testing.assert_array_equal(resumed.ids, full.ids)
    for a in full.addresses:
        np.testing.assert_array_equal(resumed.features(a), full.features(a))
    again = extract_features(cfg("resumed.zarr"), progress=False)
    assert again.already_complete and again.computed_images == 0


def test_changed_inputs_are_refused_unless_overwrite(phantom_dir, tmp_path):
    base = dict(
        data=DataConfig(str(phantom_dir / "val")), backbone="resnet18", layers="1", store=str(tmp_path / "s.zarr")
    )
    extract_features(ExtractConfig(**base, weights="random:1"), progress=False)
    with pytest.raises(StoreMismatchError, match="weights"):
        extract_features(ExtractConfig(**base, weights="random:2"), progress=False)
    with pytest.raises(StoreMismatchError, match="pool"):
        extract_features(ExtractConfig(**base, weights="random:1", pool="max"), progress=False)
    r = extract_features(ExtractConfig(**base, weights="random:2", overwrite=True), progress=False)
    assert r.store.fingerprint["weights"]["id"] == "2"


def test_store_records_split_labels_and_config(phantom_dir, tmp_path):
    store = extract_features(
        ExtractConfig(
            data=DataConfig(str(phantom_dir)),
            backbone="resnet18",
            weights="random",
            layers="4",
            store=str(tmp_path / "s.zarr"),
            dtype="float16",
        ),
        progress=False,
    ).store
    assert store.label_names == ["normal", "nodule"] and store.label_kind == "binary"
    assert {s: int((store.splits == s).sum()) for s in ("train", "val", "test")} == {"train": 20, "val": 8, "test": 8}
    positives = np.array(["/nodule/" in f"/{i}" for i in store.ids])
    np.testing.assert_array_equal(store.labels == 1, positives)
    np.testing.assert_array_equal(store.splits, [i.split("/")[0] for i in store.ids])
    assert store.features("4").dtype == np.float16
    assert store.config["data"]["path"] == str(phantom_dir) and store.fingerprint["dataset"]


def test_corrupt_image_stops_with_file_and_row_or_is_skipped(phantom_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(phantom_dir / "val", data)
    victim = sorted((data / "nodule").glob("*.png"))[1]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    cfg = dict(data=DataConfig(str(data)), backbone="resnet18", weights="random", layers="1", batch_size=4)
    with pytest.raises(BadImageError, match=rf"{victim.name}.*row \d+"):
        extract_features(ExtractConfig(**cfg, store=str(tmp_path / "a.zarr")), progress=False)
    logged = []
    r = extract_features(
        ExtractConfig(**cfg, store=str(tmp_path / "b.zarr"), on_bad_image="skip"), progress=False, log=logged.append
    )
    store = r.store
    rel = f"nodule/{victim.name}"
    assert r.skipped_ids == [rel] and len(logged) == 1
    row = list(store.ids).index(rel)
    assert store.skipped.sum() == 1 and store.skipped[row]
    assert np.isnan(store.features("1")[row]).all()
    assert np.isfinite(np.delete(store.features("1"), row, axis=0)).all()
    assert store.meta["n_skipped"] == 1


def test_real_kermany_xrays_go_through_extract(kermany_dir, tmp_path):
    r = extract_features(
        ExtractConfig(
            data=DataConfig(str(kermany_dir)),
            backbone="efficientnet_lite0",
            weights="imagenet",
            layers="blocks",
            pool="avgmax",
            store=str(tmp_path / "k.zarr"),
        ),
        progress=False,
    )
    s = r.store
    assert len(s) == 16 and s.label_names == ["NORMAL", "PNEUMONIA"]
    assert (s.labels == 1).sum() == 8
    assert set(s.splits) == {"train", "val", "test"}  # the folder has no split: one was made
    for a in s.addresses:
        f = s.features(a)
        assert np.isfinite(f).all() and f.std(axis=0).max() > 0


def test_onnx_engine_matches_torch_and_caches_its_graph(phantom_dir, tmp_path):
    base = dict(data=DataConfig(str(phantom_dir / "val")), backbone="resnet18", weights="random:2", layers="all")
    t = extract_features(ExtractConfig(**base, store=str(tmp_path / "t.zarr")), progress=False).store
    o = extract_features(ExtractConfig(**base, engine="onnx", store=str(tmp_path / "o.zarr")), progress=False).store
    assert o.fingerprint["engine"] == "onnx" and o.fingerprint["precision"] == "fp32"
    for a in t.addresses:
        want, got = t.features(a), o.features(a)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), a
    graphs = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(graphs) == 1
    before = graphs[0].stat().st_mtime_ns
    extract_features(ExtractConfig(**base, engine="onnx", store=str(tmp_path / "o2.zarr")), progress=False)
    assert graphs[0].stat().st_mtime_ns == before  # exported once, reused


def test_bf16_is_close_to_fp32_and_recorded(phantom_dir, tmp_path):
    from tlmic_feats.features.auto import choose_engine
    from tlmic_feats.runtime.devices import cpu_has_fast_bf16, resolve_precision

    base = dict(data=DataConfig(str(phantom_dir / "val")), backbone="resnet18", weights="random:2", layers="blocks")
    f32 = extract_features(ExtractConfig(**base, store=str(tmp_path / "a.zarr")), progress=False).store
    b16 = extract_features(
        ExtractConfig(**base, precision="bf16", store=str(tmp_path / "b.zarr")), progress=False
    ).store
    assert b16.fingerprint["precision"] == "bf16" and f32.fingerprint["precision"] == "fp32"
    for a in f32.addresses:
        x, y = f32.features(a).ravel(), b16.features(a).ravel()
        assert np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y) > 0.999, a
    # no choice is validated for resnet18 (features/auto.py): auto extracts in fp32
    assert choose_engine("torch", "auto", "resnet18", "cpu").precision == "fp32"
    assert resolve_precision("auto", "cpu", purpose="train") == "fp32"  # bf16 changed a study's answer
    assert resolve_precision("auto", "cuda:0", purpose="train") == "fp32"
    assert resolve_precision("bf16", "cpu", purpose="train") == "bf16" and cpu_has_fast_bf16() in (True, False)
    with pytest.raises(UsageError, match="fp16"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(UsageError, match="--engine onnx runs fp32"):
        extract_features(
            ExtractConfig(**base, engine="onnx", precision="bf16", store=str(tmp_path / "c.zarr")), progress=False
        )


def test_pixel_cache_gives_identical_features_and_is_shared(phantom_dir, tmp_path):
    base = dict(data=DataConfig(str(phantom_dir / "val")), weights="random:4", layers="blocks")
    direct = extract_features(
        ExtractConfig(**base, backbone="resnet18", pixel_cache=False, store=str(tmp_path / "d.zarr")), progress=False
    )
    cached = extract_features(
        ExtractConfig(**base, backbone="resnet18", store=str(tmp_path / "c.zarr")), progress=False
    )
    for a in direct.store.addresses:
        np.testing.assert_array_equal(cached.store.features(a), direct.store.features(a))
    caches = list((tmp_path / "cache" / "pixels").glob("*.zarr"))
    assert len(caches) == 1
    stamp = {p: p.stat().st_mtime_ns for p in caches[0].rglob("*") if p.is_file()}
    # another backbone with the same preprocessing reads the same decoded pixels: nothing rewritten
    extract_features(ExtractConfig(**base, backbone="densenet121", store=str(tmp_path / "e.zarr")), progress=False)
    assert {p: p.stat().st_mtime_ns for p in caches[0].rglob("*") if p.is_file()} == stamp
    assert cached.input_wait_seconds < cached.seconds


def test_pixel_cache_built_by_worker_processes_equals_in_process(phantom_dir, tmp_path):
    from tlmic_feats.data import load_manifest
    from tlmic_feats.features.pixels import build_pixel_cache, load_pixels

    m = load_manifest(DataConfig(str(phantom_dir / "test")))
    a = build_pixel_cache(m, 64, "bilinear", tmp_path / "a", workers=0)
    b = build_pixel_cache(m, 64, "bilinear", tmp_path / "b", workers=1)
    rows = np.arange(len(m))
    np.testing.assert_array_equal(a.read(rows), b.read(rows))
    np.testing.assert_array_equal(a.read(rows[::3]), load_pixels(m.source, rows[::3], 64, "bilinear"))


def test_torchxrayvision_pixels_stay_float_in_the_cache_and_an_8bit_cache_is_rebuilt(phantom_dir, tmp_path):
    """``xrv`` pixels are float32 everywhere (cache built in process or by a worker, or decoded without
    it): the same values, not rounded to grey levels; a cache of the same images and size written with
    8-bit pixels (as tlmic did before) is rebuilt, not read."""
    pytest.importorskip("skimage")
    import json

    from tlmic_feats.data import load_manifest
    from tlmic_feats.features.pixels import build_pixel_cache, load_pixels

    m = load_manifest(DataConfig(str(phantom_dir / "test")))
    rows = np.arange(len(m))
    direct = load_pixels(m.source, rows, 64, "xrv")
    assert direct.dtype == np.float32 and (direct != np.round(direct)).mean() > 0.5
    a = build_pixel_cache(m, 64, "xrv", tmp_path / "a", workers=0)
    b = build_pixel_cache(m, 64, "xrv", tmp_path / "b", workers=1)
    np.testing.assert_array_equal(a.read(rows), direct)
    np.testing.assert_array_equal(b.read(rows[::3]), direct[::3])
    # the same cache as an 8-bit one: its pixels rounded and its record without a dtype
    import zarr

    group = zarr.open_group(str(a.path), mode="r+")
    old = np.round(direct).astype(np.uint8)
    del group["pixels"]
    group.create_array("pixels", shape=old.shape, chunks=(64, 64, 64), dtype="uint8", fill_value=0)
    group["pixels"][:] = old
    meta = dict(group.attrs["tlmic_pixels"])
    del meta["dtype"]
    group.attrs["tlmic_pixels"] = meta
    assert json.loads((a.path / "zarr.json").read_text())["attributes"]["tlmic_pixels"].get("dtype") is None
    again = build_pixel_cache(m, 64, "xrv", tmp_path / "a", workers=0)
    np.testing.assert_array_equal(again.read(rows), direct)


# A user's script calling tlmic at top level, without an `if __name__ == "__main__":` guard: each
# spawned decode worker re-runs it and dies. With a source larger than a pipe's buffer (64 KiB,
# here 360 long paths) the parent used to block forever sending it to the dead worker.
_UNGUARDED_SCRIPT = """
from tlmic_feats import DataConfig, ExtractConfig, extract_features
extract_features(ExtractConfig(data=DataConfig({root!r}), backbone="resnet18", weights="random:4", layers="blocks",
                               workers=1, pixel_cache={cache}, store={store!r}), progress=False)
print("finished")
"""


@pytest.mark.parametrize("pixel_cache", [True, False])
def test_unguarded_script_with_decode_workers_fails_with_the_fix_instead_of_hanging(phantom_dir, tmp_path, pixel_cache):
    import os
    import subprocess
    import sys

    root = tmp_path / "data"
    for src in (phantom_dir / "train").rglob("*.png"):
        dest = root / src.parent.name
        dest.mkdir(parents=True, exist_ok=True)
        for k in range(18):
            os.link(src, dest / f"{src.stem}-copy{k:02d}-{'x' * 180}.png")
    script = tmp_path / "unguarded.py"
    script.write_text(_UNGUARDED_SCRIPT.format(root=str(root), cache=pixel_cache, store=str(tmp_path / "s.zarr")))
    env = {**os.environ, "TLMIC_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert done.returncode == 1 and "finished" not in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("tlmic_feats.runtime.errors.RunError: a decode worker process exited unexpectedly"), last
    assert 'if __name__ == "__main__":' in last


def test_a_worker_killed_while_the_consumer_is_busy_is_reported_as_a_run_error():
    # PyTorch raises a worker's death from its SIGCHLD handler in whatever the main thread runs:
    # here the consumer's own code, outside the loader, which is why consumers run their loop
    # under dead_workers_reported.
    import multiprocessing as mp
    import os
    import signal
    import time

    from tlmic_feats.features.workers import dead_workers_reported, spawned_loader
    from tlmic_feats.runtime.errors import RunError

    with (
        pytest.raises(
            RunError,
            match=r"decode worker process exited unexpectedly \(DataLoader worker \(pid \d+\) is killed by signal",
        ),
        dead_workers_reported(),
    ):
        for k, _ in enumerate(spawned_loader(list(range(50)), 1, batch_size=None)):
            if k == 1:
                for worker in mp.active_children():
                    os.kill(worker.pid, signal.SIGKILL)  # as the OOM killer would
                time.sleep(5)  # busy in the consumer when the death is reported


_CACHED_GRAPH_RUN = """
import sys
from tlmic_feats import DataConfig, ExtractConfig, extract_features
for engine in {engines!r}:
    report = extract_features(ExtractConfig(DataConfig({data!r}), engine=engine, **{base!r}), progress=False)
    print(engine, report.store.path)
print("torch" in sys.modules)
"""


def test_a_cached_graph_extracts_without_torch_the_same_store_as_a_build(phantom_dir, tmp_path):
    """Once a backbone's graph is exported (from one dataset), extracting another dataset with onnx or
    openvino imports no torch; the store equals the one made by building the network."""
    import importlib.util
    import os
    import shutil
    import subprocess
    import sys

    engines = ["onnx", *(["openvino"] if importlib.util.find_spec("openvino") else [])]
    base = dict(backbone="resnet18", weights="random:3", layers="blocks", input_size=64)
    for engine in engines:  # exports (and converts) the graph: builds the network
        extract_features(ExtractConfig(DataConfig(str(phantom_dir / "val")), engine=engine, **base), progress=False)
    data = str(phantom_dir / "test")
    script = _CACHED_GRAPH_RUN.format(engines=engines, data=data, base=base)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=os.environ)
    assert done.returncode == 0, done.stderr
    *stores, torch_loaded = done.stdout.strip().splitlines()
    assert torch_loaded == "False"
    shutil.rmtree(tmp_path / "cache" / "backbones")  # no description kept: the network is built
    for engine, path in (line.split(" ", 1) for line in stores):
        free = FeatureStore.open(shutil.move(path, tmp_path / f"{engine}-without-torch.zarr"))
        built = extract_features(ExtractConfig(DataConfig(data), engine=engine, **base), progress=False).store
        assert str(built.path) == path  # the same default store: the same fingerprint
        assert built.fingerprint == free.fingerprint and built.config == free.config
        for a in built.addresses:
            if engine == "onnx":
                np.testing.assert_array_equal(free.features(a), built.features(a))  # the same graph and pixels
            else:  # OpenVINO may split batches differently: the same graph, float-level differences
                np.testing.assert_allclose(free.features(a), built.features(a), rtol=1e-5, atol=1e-6)
