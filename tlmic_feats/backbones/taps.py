"""What a cut point is made of: taps (module outputs and their layout) and the :class:`CutPoint` record.

The cut-point registry (:mod:`.cutpoints`) and the derivation of cut points from a model's own
structure (:mod:`.structure`) both build these; the grammar that selects them lives in
:mod:`.cutpoints`.
"""

from __future__ import annotations

from dataclasses import dataclass

# How a tapped tensor is laid out. "nchw": a feature map; "nhwc": a channels-last map (Swin-style
# stages), permuted to NCHW before pooling or a head sees it; "tokens": (N, L, C), the first
# ``prefix`` tokens are class/register tokens and the rest the patch grid (vision transformers).
LAYOUTS = ("nchw", "nhwc", "tokens")


@dataclass(frozen=True)
class Tap:
    """One module output read by the tapping forward; ``act`` is applied before pooling."""

    module: str
    act: str = ""  # "" or "relu"
    layout: str = "nchw"
    prefix: int = 0  # tokens: leading class/register tokens (excluded from avg/max pooling)
    class_token: bool = False  # tokens: the first prefix token is a class token (``--pool cls``)


@dataclass(frozen=True)
class CutPoint:
    """A place where a backbone can be cut.

    ``channels`` and ``stride`` describe the feature map there (before pooling); for tokens,
    ``stride`` is the patch size. ``taps`` list the module outputs whose channel-wise
    concatenation is that map.
    """

    address: str
    module: str
    taps: tuple[Tap, ...]
    channels: int = 0
    stride: int = 0

    @property
    def block(self) -> int:
        return int(self.address.split(".")[0])

    @property
    def unit(self) -> int | None:
        parts = self.address.split(".")
        return int(parts[1]) if len(parts) == 2 else None

    @property
    def is_block(self) -> bool:
        return self.unit is None

    @property
    def layout(self) -> str:
        """The layout a truncated network's output has here: "nchw" (NHWC maps are permuted) or "tokens"."""
        return "tokens" if self.taps[-1].layout == "tokens" else "nchw"

    @property
    def prefix(self) -> int:
        return self.taps[-1].prefix

    @property
    def class_token(self) -> bool:
        return self.taps[-1].class_token


def address_key(address: str) -> tuple[int, int]:
    """Sort key placing ``k.u`` before ``k`` (a block ends after its last unit)."""
    b, _, u = address.partition(".")
    return (int(b), int(u) if u else 10**6)
