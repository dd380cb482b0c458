"""Training targets: output width, the class-weighted loss, and scores from logits."""

from __future__ import annotations

import numpy as np


def n_outputs_for(kind: str, n_names: int) -> int:
    return 1 if kind == "binary" else n_names


def make_loss(kind: str, y_train: np.ndarray):
    """Class-weighted loss: BCE-with-logits (binary; multi-label masked where labels are NaN) or
    cross-entropy (multi-class), weights from the training subset's class frequencies."""
    import torch
    import torch.nn.functional as F

    if kind == "multiclass":
        counts = np.bincount(y_train[:, 0].astype(int), minlength=int(np.nanmax(y_train)) + 1).astype(float)
        w = torch.tensor(len(y_train) / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)

        def ce(logits, y):
            return F.cross_entropy(logits.float(), y[:, 0].long(), weight=w.to(logits.device))

        return ce
    pos = np.nansum(y_train == 1, 0).astype(float)
    neg = np.nansum(y_train == 0, 0).astype(float)
    pos_weight = torch.tensor(neg / np.maximum(pos, 1), dtype=torch.float32)

    def bce(logits, y):
        mask = ~torch.isnan(y)
        target = torch.nan_to_num(y, nan=0.0)
        loss = F.binary_cross_entropy_with_logits(
            logits.float(), target, pos_weight=pos_weight.to(logits.device), reduction="none"
        )
        return (loss * mask).sum() / mask.sum().clamp(min=1)

    return bce


def scores_from_logits(kind: str, logits: np.ndarray) -> np.ndarray:
    """Probabilities in the metrics module's layout."""
    from scipy.special import expit  # no overflow warning for large logits, unlike 1 / (1 + exp(-x))

    if kind == "binary":
        return expit(logits[:, 0])
    if kind == "multiclass":
        z = logits - logits.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)
    return expit(logits)
