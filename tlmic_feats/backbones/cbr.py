"""The shallow "CBR" baselines of Transfusion, trained from scratch.

Raghu, Zhang, Kleinberg and Bengio (NeurIPS 2019), "Transfusion: Understanding Transfer Learning
for Medical Imaging", compare ImageNet-pretrained ResNet50 and Inception-v3 against small networks
made of conv-BatchNorm-ReLU ("CBR") blocks trained from random initialization, and find them close
on medical tasks. These are the "is a big pretrained network needed at all?" arm of tlmic.

Definition (one place; :data:`CBR_SPECS` holds the per-variant numbers):

* a stack of blocks, each ``Conv2d(k x k, stride 1, padding k // 2, bias=False)`` -> ``BatchNorm2d``
  -> ``ReLU``; the conv has no bias because the BatchNorm that follows has its own shift;
* every block but the last ends with ``MaxPool2d(3, stride=2, padding=1)``, so the map after the
  blocks is ``S / 2 ** (n_blocks - 1)`` for an input of side ``S`` divisible by that;
* global pooling (average, as in Transfusion; a study passes its own ``pool``), optional dropout and
  a linear head.

Variants (parameter counts for 3 input channels and 2 outputs; the paper's rough sizes in brackets):

=============  ======  =====================  ==========================
name           kernel  channels               parameters
=============  ======  =====================  ==========================
``cbr-tiny``   5x5     32-64-128-256          1,079,074 (~1.1M)
``cbr-small``  7x7     32-64-128-256          2,113,570 (~2.1M)
``cbr-larget`` 7x7     32-64-128-256-512      8,537,634 (~8.5M, "tall")
``cbr-largew`` 7x7     64-128-256-512         8,441,922 (~8.4M, "wide")
=============  ======  =====================  ==========================

Input: the network takes raw pixels, ``(N, 1, S, S)`` uint8 (or float in 0..255), and its
``normalize`` module scales them to ``(x / 255 - 0.5) / 0.25`` and copies the grayscale channel to
three, the same three-channel input the ImageNet backbones get, so every arm sees the same image.
There are no pretrained weights and so no weight-derived mean/std; the fixed 0.5/0.25 puts 0..255
roughly into -2..2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..runtime.errors import UsageError, check_choice

__all__ = ["CBR_SPECS", "CBRNet", "CBRSpec", "PixelNormalize", "build_cbr", "cbr_names", "expected_parameters"]


@dataclass(frozen=True)
class CBRSpec:
    """One CBR variant: the (square) kernel size of every conv and the output channels per block."""

    kernel: int
    channels: tuple[int, ...]


CBR_SPECS: dict[str, CBRSpec] = {
    "cbr-tiny": CBRSpec(kernel=5, channels=(32, 64, 128, 256)),
    "cbr-small": CBRSpec(kernel=7, channels=(32, 64, 128, 256)),
    "cbr-larget": CBRSpec(kernel=7, channels=(32, 64, 128, 256, 512)),
    "cbr-largew": CBRSpec(kernel=7, channels=(64, 128, 256, 512)),
}

_MEAN = 0.5  # on the 0..1 scale, after x / 255
_STD = 0.25


def cbr_names() -> tuple[str, ...]:
    """The valid variant names, in registry order (smallest first)."""
    return tuple(CBR_SPECS)


def _spec(name: str) -> CBRSpec:
    check_choice("CBR network", name, cbr_names())
    return CBR_SPECS[name]


def expected_parameters(name: str, n_outputs: int, in_channels: int = 3) -> int:
    """Closed-form trainable parameter count, to check a built network against its definition.

    Per block: conv ``k * k * c_in * c_out`` (no bias) and BatchNorm ``2 * c_out`` (weight and
    bias; running statistics are buffers, not parameters). Head: ``C * n_outputs + n_outputs``.
    """
    spec = _spec(name)
    total, c_in = 0, in_channels
    for c_out in spec.channels:
        total += spec.kernel * spec.kernel * c_in * c_out + 2 * c_out
        c_in = c_out
    return total + c_in * n_outputs + n_outputs


class PixelNormalize(nn.Module):
    """Raw pixels ``(N, 1|C, S, S)`` (uint8, or float in 0..255) to normalized float ``(N, C, S, S)``.

    A single grayscale channel is copied to ``channels`` (3 by default, like the ImageNet arms).
    """

    def __init__(self, *, channels: int = 3, mean: float = _MEAN, std: float = _STD) -> None:
        super().__init__()
        self.channels = int(channels)
        self.mean = float(mean)
        self.std = float(std)
        # x/255 then (x - mean)/std, folded into one multiply-add.
        self.scale = 1.0 / (255.0 * self.std)
        self.shift = -self.mean / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(x):
            x = x.to(torch.float32)
        if x.shape[1] == 1 and self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1)
        return x * self.scale + self.shift

    def extra_repr(self) -> str:
        return f"x/255, mean={self.mean}, std={self.std}, 1->{self.channels} channels"


def _block(c_in: int, c_out: int, kernel: int, *, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size=kernel, stride=1, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    return nn.Sequential(*layers)


class CBRNet(nn.Module):
    """A CBR network: ``normalize`` -> ``blocks`` -> ``pool`` -> ``dropout`` -> ``head``.

    ``forward`` and ``features`` both take raw pixels (see :class:`PixelNormalize`), so a caller
    never has to know this arm's normalization.
    """

    def __init__(
        self, spec: CBRSpec, n_outputs: int, *, dropout: float = 0.0, in_channels: int = 3, pool: str = "avg"
    ) -> None:
        from .head import linear_head
        from .pooling import global_pool_module, pooled_width

        super().__init__()
        self.spec = spec
        self.normalize = PixelNormalize(channels=in_channels)
        blocks, c_in = [], in_channels
        for i, c_out in enumerate(spec.channels):
            blocks.append(_block(c_in, c_out, spec.kernel, pool=i < len(spec.channels) - 1))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = global_pool_module(pool)
        self.dropout = nn.Dropout(dropout)
        self.num_features = pooled_width(c_in, pool)
        self.head = linear_head(self.num_features, n_outputs)
        self._init_weights()

    def _init_weights(self) -> None:
        # From scratch, as in the paper: He init suits the ReLUs; BN starts as the identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features of the last block, ``(N, num_features)``."""
        return self.pool(self.blocks(self.normalize(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_outputs)``."""
        return self.head(self.dropout(self.features(x)))


def build_cbr(name: str, n_outputs: int, *, dropout: float = 0.0, in_channels: int = 3, pool: str = "avg") -> CBRNet:
    """A freshly initialized CBR variant ``name`` with a ``n_outputs``-way linear head on features
    pooled with ``pool`` (Transfusion's: ``avg``).

    Raises :class:`~tlmic_feats.runtime.errors.UsageError` for an unknown ``name`` (listing the valid ones)
    or a non-positive ``n_outputs`` / ``in_channels`` or a ``dropout`` outside [0, 1).
    """
    if n_outputs < 1:
        raise UsageError(f"n_outputs {n_outputs!r} is not valid; valid: an integer >= 1")
    if in_channels < 1:
        raise UsageError(f"in_channels {in_channels!r} is not valid; valid: an integer >= 1")
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"dropout {dropout!r} is not valid; valid: 0 <= dropout < 1")
    return CBRNet(_spec(name), n_outputs, dropout=dropout, in_channels=in_channels, pool=pool)
