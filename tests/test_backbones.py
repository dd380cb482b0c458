"""Backbones, weights and the cut-point registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlmic_feats.backbones import build_backbone, list_backbones, select_cut_points
from tlmic_feats.runtime.errors import UnknownBackboneError, UnknownCutPointError, WeightsUnavailableError


def test_efficientnet_lite0_shipped_weights_recognise_a_cat():
    """Real ImageNet weights through tlmic's own loader and its recorded preprocessing."""
    from PIL import Image
    from skimage import data

    b = build_backbone("efficientnet_lite0", "imagenet")
    p = b.preprocess
    assert p.interpolation == "bicubic" and p.input_size == 224
    im = Image.fromarray(data.chelsea())  # a real photo of a cat, shipped by scikit-image
    w, h = im.size
    s = p.resize_size / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BICUBIC)
    left, top = (im.size[0] - p.input_size) // 2, (im.size[1] - p.input_size) // 2
    im = im.crop((left, top, left + p.input_size, top + p.input_size))
    x = torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)[None]
    mean = torch.tensor(p.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(p.std).view(1, 3, 1, 1) * 255
    assert torch.allclose(mean, torch.full_like(mean, 127.0)) and torch.allclose(std, torch.full_like(std, 128.0))
    with torch.inference_mode():
        top5 = b.model((x - mean) / std).topk(5).indices[0].tolist()
    cats = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert cats & set(top5), top5
    assert b.weights.kind == "imagenet" and len(b.weights.sha256) == 64


@pytest.mark.parametrize(
    "name,blocks,units",
    [("resnet18", 4, 8), ("resnet50", 4, 16), ("densenet121", 4, 58), ("efficientnet_lite0", 8, 16)],
)
def test_cut_point_counts(name, blocks, units):
    b = build_backbone(name, "random")
    assert len(select_cut_points(b.cut_points, "blocks")) == blocks
    assert len(select_cut_points(b.cut_points, "units")) == units


def test_densenet_block_channels_follow_torchvision_convention():
    b = build_backbone("densenet121", "random")
    got = {cp.address: (cp.channels, cp.stride) for cp in b.cut_points}
    assert [got[k] for k in "1234"] == [(128, 8), (256, 16), (512, 32), (1024, 32)]
    assert got["1.1"] == (96, 4) and got["1.6"] == (256, 4) and got["3.24"] == (1024, 16)


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "efficientnet_lite0"])
def test_truncated_network_output_is_the_tapped_map(name):
    """One registry: the map a truncated network ends with is the map extraction taps."""
    from tlmic_feats.backbones.cutpoints import tap_network

    b = build_backbone(name, "random:7")
    x = torch.randn(2, 3, 64, 64)
    net = tap_network(b.family, b.model, b.cut_points, "avg")
    with torch.inference_mode():
        tapped = dict(zip((cp.address for cp in b.cut_points), net(x), strict=True))
        for cp in b.cut_points:
            out = b.truncated(cp.address)(x)
            assert out.shape[1] == cp.channels, cp.address
            assert x.shape[-1] // out.shape[-1] == cp.stride, cp.address
            torch.testing.assert_close(out.mean(dim=(2, 3)), tapped[cp.address], rtol=1e-5, atol=1e-6)
        # a tap network for shallow cut points stops early: same values, nothing deeper run
        shallow = tap_network(b.family, b.model, b.cut_points[:2], "avg")
        for cp, v in zip(b.cut_points[:2], shallow(x), strict=True):
            torch.testing.assert_close(v, tapped[cp.address])


def test_truncation_removes_what_follows():
    b = build_backbone("resnet50", "random")
    params = {a: sum(p.numel() for p in b.truncated(a).parameters()) for a in ("1", "3.4", "4")}
    assert params["1"] < params["3.4"] < params["4"] < sum(p.numel() for p in b.model.parameters())
    assert 6.2e6 < params["3.4"] < 6.4e6  # the paper's 6.31M inside layer3
    assert 23.4e6 < params["4"] < 23.6e6  # 23.5M without the ImageNet classifier


def test_unknown_names_list_valid_choices():
    with pytest.raises(
        UnknownBackboneError,
        match=r"unknown backbone 'vgg16'; valid: densenet121, efficientnet_lite0, efficientnet_lite1, "
        r"efficientnet_lite2, resnet18, resnet50, timm:NAME, tv:NAME, hf:ORG/NAME, openclip:hf-hub:ORG/NAME, "
        r"xrv:WEIGHTS \(see `tlmic backbones PATTERN`\)",
    ):
        build_backbone("vgg16", "random")
    b = build_backbone("resnet50", "random")
    with pytest.raises(
        UnknownCutPointError, match=r"layer 7 is not a cut point of resnet50; valid: all, blocks, units, 1\.1"
    ):
        select_cut_points(b.cut_points, "7", "resnet50")
    with pytest.raises(UnknownCutPointError, match=r"layer 3\.9 is not a cut point"):
        b.truncated("3.9")
    assert list_backbones() == [
        "densenet121", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet50"
    ]  # fmt: skip


def test_weights_file_random_seed_and_errors(tmp_path):
    a = build_backbone("resnet18", "random:5")
    b = build_backbone("resnet18", "random", seed=5)
    c = build_backbone("resnet18", "random:6")
    assert a.weights.sha256 == b.weights.sha256 != c.weights.sha256
    f = tmp_path / "r18.pt"
    torch.save(a.model.state_dict(), f)
    d = build_backbone("resnet18", str(f))
    assert d.weights.kind == "file"
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, d.model.state_dict()[k])
    with pytest.raises(WeightsUnavailableError, match="does not fit this architecture"):
        build_backbone("resnet50", str(f))
    (tmp_path / "pickled.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="weights_only=True"):
        build_backbone("resnet18", str(tmp_path / "pickled.pt"))


def test_imagenet_offline_fails_with_one_clear_line(monkeypatch, tmp_path):
    import urllib.error

    import torchvision.models._api as api

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    calls = []

    def offline(*a, **k):
        calls.append(a)
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as e:
        build_backbone("resnet50", "imagenet")
    msg = str(e.value)
    assert len(calls) == 1
    assert "\n" not in msg and "--weights PATH" in msg and "resnet50-0676ba61.pth" in msg
