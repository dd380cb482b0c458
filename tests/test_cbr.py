"""The Transfusion CBR baselines are built exactly as their definition says.

Parameter counts are checked three ways: the built network, the closed form in the module, and
literals computed by hand here (so a shared mistake in the module's definition and its closed form
cannot pass unnoticed).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlmic_feats.backbones.cbr import CBR_SPECS, build_cbr, cbr_names, expected_parameters
from tlmic_feats.runtime.errors import UsageError

# name -> (n_blocks, kernel, channels)
DEFINITION = {
    "cbr-tiny": (4, 5, (32, 64, 128, 256)),
    "cbr-small": (4, 7, (32, 64, 128, 256)),
    "cbr-larget": (5, 7, (32, 64, 128, 256, 512)),
    "cbr-largew": (4, 7, (64, 128, 256, 512)),
}

# With 3 input channels and 2 outputs, by hand:
#   tiny:   25 * (3*32 + 32*64 + 64*128 + 128*256) = 25 * 43104 = 1077600; BN 2*480 = 960; head 256*2+2 = 514
#   small:  49 * 43104 = 2112096; BN 960; head 514
#   larget: 49 * (43104 + 256*512) = 49 * 174176 = 8534624; BN 2*992 = 1984; head 512*2+2 = 1026
#   largew: 49 * (3*64 + 64*128 + 128*256 + 256*512) = 49 * 172224 = 8438976; BN 2*960 = 1920; head 1026
PARAMS_2_OUTPUTS = {
    "cbr-tiny": 1_079_074,
    "cbr-small": 2_113_570,
    "cbr-larget": 8_537_634,
    "cbr-largew": 8_441_922,
}

# The paper's rough sizes, in parameters.
PUBLISHED_RANGE = {
    "cbr-tiny": (1_000_000, 1_200_000),
    "cbr-small": (2_000_000, 2_200_000),
    "cbr-larget": (8_400_000, 8_700_000),
    "cbr-largew": (8_300_000, 8_600_000),
}

ALL = pytest.mark.parametrize("name", sorted(DEFINITION))


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_names_are_the_four_variants():
    assert set(cbr_names()) == set(DEFINITION)
    assert set(CBR_SPECS) == set(DEFINITION)


@ALL
def test_structure_matches_definition(name):
    n_blocks, kernel, channels = DEFINITION[name]
    model = build_cbr(name, 2)
    assert len(model.blocks) == n_blocks
    c_in = 3
    for i, block in enumerate(model.blocks):
        assert isinstance(block, nn.Sequential)
        conv, bn, relu = block[0], block[1], block[2]
        assert isinstance(conv, nn.Conv2d)
        assert conv.kernel_size == (kernel, kernel)
        assert conv.stride == (1, 1)
        assert conv.padding == (kernel // 2, kernel // 2)
        assert conv.bias is None
        assert (conv.in_channels, conv.out_channels) == (c_in, channels[i])
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == channels[i]
        assert isinstance(relu, nn.ReLU)
        last = i == n_blocks - 1
        if last:
            assert len(block) == 3, "no max-pool after the last block"
        else:
            assert len(block) == 4
            pool = block[3]
            assert isinstance(pool, nn.MaxPool2d)
            assert (pool.kernel_size, pool.stride, pool.padding) in {(3, 2, 1), ((3, 3), (2, 2), (1, 1))}
        c_in = channels[i]
    n_pools = sum(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert n_pools == n_blocks - 1
    x = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():  # global average pooling by default, as torch's own adaptive pool computes it
        expected = torch.flatten(nn.AdaptiveAvgPool2d(1)(model.blocks(model.normalize(x))), 1)
        torch.testing.assert_close(model.features(x), expected)
    assert isinstance(model.head, nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (channels[-1], 2)


@ALL
def test_init_is_kaiming_and_identity_bn(name):
    model = build_cbr(name, 2)
    conv, bn = model.blocks[0][0], model.blocks[0][1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    # kaiming_normal fan_out/relu: std = sqrt(2 / (c_out * k * k)); the default init is far narrower.
    k = conv.kernel_size[0]
    std = (2.0 / (conv.out_channels * k * k)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(std, rel=0.15)


@ALL
def test_parameter_counts(name):
    model = build_cbr(name, 2)
    n = _n_params(model)
    assert n == expected_parameters(name, 2)
    assert n == PARAMS_2_OUTPUTS[name]
    lo, hi = PUBLISHED_RANGE[name]
    assert lo <= n <= hi


def test_parameter_count_follows_outputs_and_input_channels():
    c = DEFINITION["cbr-tiny"][2][-1]
    assert expected_parameters("cbr-tiny", 5) == PARAMS_2_OUTPUTS["cbr-tiny"] + 3 * (c + 1)
    # One input channel removes a third of the first conv: 25 * 2 * 32.
    assert expected_parameters("cbr-tiny", 2, in_channels=1) == PARAMS_2_OUTPUTS["cbr-tiny"] - 25 * 2 * 32
    assert _n_params(build_cbr("cbr-tiny", 5)) == expected_parameters("cbr-tiny", 5)
    assert _n_params(build_cbr("cbr-tiny", 2, in_channels=1)) == expected_parameters("cbr-tiny", 2, in_channels=1)


@ALL
def test_forward_on_uint8_pixels(name):
    n_blocks, _, channels = DEFINITION[name]
    torch.manual_seed(0)
    model = build_cbr(name, 3).eval()
    x = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
        fmap = model.blocks(model.normalize(x))
    assert logits.shape == (2, 3)
    assert feats.shape == (2, channels[-1])
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert fmap.shape == (2, channels[-1], 64 // 2 ** (n_blocks - 1), 64 // 2 ** (n_blocks - 1))
    # The same pixels as float 0..255 give the same output.
    with torch.no_grad():
        assert torch.allclose(model(x.float()), logits)


def test_normalize_scales_and_copies_to_three_channels():
    model = build_cbr("cbr-tiny", 2)
    x = torch.tensor([0, 64, 128, 255], dtype=torch.uint8).view(1, 1, 2, 2)
    y = model.normalize(x)
    assert y.shape == (1, 3, 2, 2) and y.dtype == torch.float32
    expected = (x.float() / 255 - 0.5) / 0.25
    for c in range(3):
        assert torch.allclose(y[:, c : c + 1], expected, atol=1e-6)
    assert y.min().item() == pytest.approx(-2.0) and y.max().item() == pytest.approx(2.0)


def test_spatial_size_224_on_tiny():
    n_blocks = DEFINITION["cbr-tiny"][0]
    model = build_cbr("cbr-tiny", 2).eval()
    seen: dict[str, tuple[int, ...]] = {}

    def hook(_module, _inputs, out):
        seen["shape"] = tuple(out.shape)  # returns None, so the output is not replaced

    model.blocks.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 1, 224, 224, dtype=torch.uint8))
    side = 224 // 2 ** (n_blocks - 1)
    assert side == 28
    assert seen["shape"] == (1, 256, side, side)


def test_dropout_is_applied_in_training():
    model = build_cbr("cbr-tiny", 2, dropout=0.5)
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.5


def test_unknown_name_raises_usage_error_listing_valid_names():
    with pytest.raises(UsageError) as info:
        build_cbr("cbr-huge", 2)
    message = str(info.value)
    assert "cbr-huge" in message
    for name in DEFINITION:
        assert name in message
    with pytest.raises(UsageError, match="cbr-huge"):
        expected_parameters("cbr-huge", 2)
