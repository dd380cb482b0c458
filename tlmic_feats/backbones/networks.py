"""Networks built from a backbone's cut points: the truncated classifier (backbone cut at a cut
point, global pooling, dropout, a linear head) and the TransFusion-style hybrid; the CBR networks
live in :mod:`.cbr`. Every head is :func:`.head.linear_head`: fp32 under mixed precision."""

from __future__ import annotations

from .cutpoints import CutPoint, hybrid_address
from .head import linear_head
from .pooling import pooled_width


def build_network(backbone, address: str | CutPoint, n_outputs: int, dropout: float, pool: str = "avg"):
    """Normalization -> backbone truncated at ``address`` (or a resolved cut point) -> global
    ``pool`` -> dropout -> linear.

    Input: uint8 or float pixels ``(N, 1, S, S)`` in 0..255 (grayscale; copied to 3 channels).
    ``features`` is what ``extract --pool POOL`` stores at ``address`` (for a transformer's tokens,
    pooled over the patch tokens, or its class token with ``cls``).
    """
    import torch.nn as nn

    from .pooling import check_pool, global_pool_module
    from .preprocess import device_normalize

    cut = address if isinstance(address, CutPoint) else backbone.cut_point(address)
    check_pool(pool, (cut,), backbone.name)

    class TruncatedClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.normalize = device_normalize(backbone.preprocess)
            self.backbone = backbone.truncated(cut)
            self.pool = global_pool_module(pool, cut.layout, cut.prefix)
            self.dropout = nn.Dropout(dropout)
            self.head = linear_head(pooled_width(cut.channels, pool), n_outputs)

        def features(self, x):
            """The pooled features at the cut point (what ``extract --pool POOL`` stores)."""
            return self.pool(self.backbone(self.normalize(x)))

        def forward(self, x):
            return self.head(self.dropout(self.features(x)))

    return TruncatedClassifier()


def build_hybrid(backbone, n_outputs: int, dropout: float, pool: str = "avg"):
    """TransFusion-style hybrid: pretrained bottom blocks (up to :func:`hybrid_address`), then one
    randomly initialised slim block (two 3x3 conv-BN-ReLU, stride 2, half the channels) in place of
    the top block, global pooling, dropout and a linear head. A transformer's patch tokens enter the
    slim block as their grid (``(N, C, h, w)``); its class token does not (``cls``, ``clsmean`` pool by ``avg``)."""
    import torch.nn as nn

    from .pooling import CLASS_TOKEN_POOLS, check_pool, global_pool_module, tokens_to_map
    from .preprocess import device_normalize

    cut = backbone.cut_point(hybrid_address(backbone))
    check_pool(pool, (cut,), backbone.name)
    pool = "avg" if pool in CLASS_TOKEN_POOLS else pool  # the slim block's output is a map: no class token
    width = max(8, cut.channels // 2)

    def cbr(cin: int, cout: int, stride: int) -> list:
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]

    class TokensToMap(nn.Module):
        def __init__(self, prefix: int) -> None:
            super().__init__()
            self.prefix = prefix

        def forward(self, x):
            return tokens_to_map(x, self.prefix)

    class HybridClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.normalize = device_normalize(backbone.preprocess)
            self.backbone = backbone.truncated(cut)
            self.to_map = TokensToMap(cut.prefix) if cut.layout == "tokens" else nn.Identity()
            self.slim = nn.Sequential(*cbr(cut.channels, width, 2), *cbr(width, width, 1))
            for m in self.slim.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            self.pool = global_pool_module(pool)
            self.dropout = nn.Dropout(dropout)
            self.head = linear_head(pooled_width(width, pool), n_outputs)

        def features(self, x):
            return self.pool(self.slim(self.to_map(self.backbone(self.normalize(x)))))

        def forward(self, x):
            return self.head(self.dropout(self.features(x)))

    return HybridClassifier()
