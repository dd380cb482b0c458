"""Preprocessing configuration derived from a backbone's weights, and its on-device half.

The host side (decode, resize, center crop; uint8, or float32 for torchxrayvision) lives in
:mod:`tlmic_feats.data.images`; the device side (float, the network's channels, normalization) is
:class:`DeviceNormalize`, applied to whole batches where it is cheapest. Both read one
:class:`Preprocess`, which is derived from the weights' own config (torchvision's weight enums, timm's
pretrained config, a transformers image processor, open_clip's transform, torchxrayvision's
convention) and never re-typed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Preprocess:
    """Evaluation preprocessing of a backbone: resize shorter side, center crop, normalize.

    ``interpolation`` names how the host resizes and crops (:data:`tlmic_feats.data.images.INTERPOLATIONS`):
    a PIL filter with torchvision's crop offsets, ``hf-FILTER`` for a transformers image processor
    (its crop offsets round down), or ``xrv`` (torchxrayvision's centre square and skimage resize).
    ``mean`` and ``std`` have one value per input channel of the network: three, or one for a
    single-channel network (torchxrayvision's), which then sees the grey image as it is.
    """

    input_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # where these values came from, for the record

    @property
    def pixel_dtype(self):
        """The numpy dtype of the host's pixels (:func:`tlmic_feats.data.images.pixel_dtype`)."""
        from ..data.images import pixel_dtype

        return pixel_dtype(self.interpolation)

    @property
    def channels(self) -> int:
        """Input channels of the network: one per ``mean`` value."""
        return len(self.mean)

    @classmethod
    def from_torchvision(cls, weights) -> Preprocess:
        """From a torchvision ``WeightsEnum`` member (its ``transforms()`` carries the values)."""
        t = weights.transforms()
        return cls(
            input_size=int(t.crop_size[0]),
            resize_size=int(t.resize_size[0]),
            interpolation=str(t.interpolation.value),
            mean=tuple(float(v) for v in t.mean),
            std=tuple(float(v) for v in t.std),
            source=f"torchvision {weights}",
        )

    @classmethod
    def from_timm(cls, pretrained_cfg: dict, *, mean=None, std=None, source: str = "") -> Preprocess:
        """From a timm ``pretrained_cfg`` (input size, crop_pct, interpolation, mean, std)."""
        import math

        size = int(pretrained_cfg["input_size"][-1])
        return cls(
            input_size=size,
            resize_size=int(math.floor(size / float(pretrained_cfg.get("crop_pct", 0.875)))),
            interpolation=str(pretrained_cfg.get("interpolation", "bilinear")),
            mean=tuple(float(v) for v in (mean if mean is not None else pretrained_cfg["mean"])),
            std=tuple(float(v) for v in (std if std is not None else pretrained_cfg["std"])),
            source=source or f"timm {pretrained_cfg.get('architecture', '')}",
        )


MIN_INPUT_SIZE = 32


def at_input_size(preprocess: Preprocess, size: int) -> Preprocess:
    """``preprocess`` at another input size (0: unchanged), the resize keeping the weights' ratio of
    crop to resize (224 of 256 becomes 128 of 146). A lower input size makes CPU studies several
    times faster; the store and every finetuned network of a study use the same one.
    """
    from ..runtime.errors import UsageError

    if not size or size == preprocess.input_size:
        return preprocess
    if size < MIN_INPUT_SIZE:
        raise UsageError(f"--input-size {size} is too small; valid: 0 (the weights' own) or >= {MIN_INPUT_SIZE}")
    resize = int(size * preprocess.resize_size // preprocess.input_size)
    source = f"{preprocess.source}; input size {size} (of {preprocess.input_size})"
    return replace(preprocess, input_size=size, resize_size=resize, source=source)


def center_crop(x, size: int, interpolation: str = ""):
    """Center crop of a batch ``(N, C, S, S)`` to ``size`` (the evaluation view), its offsets as the
    host's for ``interpolation`` (:func:`tlmic_feats.data.images.crop_offset`: rounded down for a
    transformers image processor, else half to even as torchvision's)."""
    from ..data.images import crop_offset

    o = crop_offset(x.shape[-1] - size, interpolation)
    return x[..., o : o + size, o : o + size]


def device_normalize(preprocess: Preprocess):
    """A module mapping pixels ``(N, 1|3, H, W)`` (uint8, or float in 0..255) to the normalized float
    ``(N, C, H, W)`` input, ``C`` being :attr:`Preprocess.channels` (a grey image is copied to three
    channels)."""
    import torch

    c = preprocess.channels

    class DeviceNormalize(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, c, 1, 1)
            std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, c, 1, 1)
            # x/255 then (x - mean)/std, folded into one multiply-add.
            self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
            self.register_buffer("shift", -mean / std, persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.to(self.scale.dtype)
            if x.shape[1] == 1 and c != 1:
                x = x.expand(-1, c, -1, -1)
            return x * self.scale + self.shift

    return DeviceNormalize()
