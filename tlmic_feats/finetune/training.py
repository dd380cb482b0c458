"""How a finetuned network trains: its step budget policy, evaluation cadence, early stopping, batch,
learning rate and precision. One object, held by a finetuning run and by a study (every arm of a
study trains alike), so each of these options is declared here only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ..runtime.options import option, precision_option
from .budget import MIN_STEPS

Monitor = Literal["auprc", "auroc", "loss"]
MONITORS: tuple[str, ...] = get_args(Monitor)


@dataclass(frozen=True)
class TrainingConfig:
    """The training schedule shared by finetuning runs and studies (see :mod:`tlmic_feats.finetune.budget`)."""

    steps: int = option(0, "Optimizer steps per run (0: max(--min-steps, --epochs x steps per epoch)).", ge=0)
    epochs: int = option(20, "Passes over the training subset that the default budget gives data-rich runs.", ge=1)
    min_steps: int = option(MIN_STEPS, "The default budget's floor, so that small subsets get enough steps.", ge=0)
    eval_every: int = option(0, "Steps between validations (0: 20 per run, at least 5 steps apart).", ge=0)
    patience: int = option(5, "Evaluations without improvement before stopping.", ge=1)
    batch_size: int = option(32, "Images per step (per process).", ge=1)
    lr: float = option(1e-3, "AdamW learning rate (peak, after warmup; docs: the finetuning recipe).", gt=0)
    monitor: Monitor = option(
        "auprc", "Validation metric for early stopping and the best checkpoint (AUPRC: honest under imbalance).",
        choices=MONITORS,
    )
    precision: str = precision_option("Training precision (auto: fp32; bf16 autocast changed the demo's answer at 5%).")
