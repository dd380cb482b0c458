"""The linear head of every finetuned network: computed in fp32, under mixed precision too.

Autocast would run the head's matmul in bf16 (or fp16), rounding its weights, its bias and the
features to 8 (11) significant bits. The head is a negligible share of a network's work, and its
output is the logit that the loss, early stopping and every metric read. An LP-FT head
(:mod:`tlmic_feats.finetune.lpft`) folds the probe's standardization into ``w = coef / scale``,
``b = intercept - sum(coef * mean / scale)``, so its logit is a difference of larger terms: on the
demo's 5% probes (folded biases up to 75), a bf16 head on the probes' own fp32 features was up to
0.39 logits from the probe; in fp32 it reproduces the probe to 1e-5. The backbone keeps the
autocast precision: its rounding of the features is what bf16 costs, and buys speed with.
"""

from __future__ import annotations


def linear_head(in_features: int, n_outputs: int):
    """``nn.Linear(in_features, n_outputs)`` whose forward runs in fp32 inside an autocast region
    (its input is cast up; outside autocast it is the plain linear map). Its parameters and state
    dict are those of ``nn.Linear``."""
    import torch
    import torch.nn as nn

    class LinearHead(nn.Linear):
        def forward(self, x):
            device = x.device.type
            if not torch.is_autocast_enabled(device):
                return super().forward(x)
            with torch.autocast(device, enabled=False):
                return super().forward(x.float())

    return LinearHead(in_features, n_outputs)
