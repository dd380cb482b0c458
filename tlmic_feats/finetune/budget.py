"""The finetuning budget, counted in optimizer steps: how many, how often to evaluate, and the
learning rate at every step.

A budget in epochs starves small subsets: 70 training images at batch 32 are 3 steps an epoch, so
12 epochs are 36 optimizer steps, and a network that learns in 200 steps ends still improving.
The default policy is therefore

    steps = max(min_steps, ceil(epochs * n_train / (batch * processes)))

``epochs`` passes over the data for data-rich runs (20 epochs of 50,000 images are 31,250 steps at
batch 32: the floor never binds, nothing is wasted), and a floor of ``min_steps`` for small subsets
(50 images get 300 steps, 192 epochs' worth, instead of 40). The floor comes from measured curves
(``docs/finetune-recipe.md``): on the phantom task, validation AUROC of full and truncated
EfficientNet-Lite0 finetunes levels off between 60 and 100 steps at batch 8-32 (lr 1e-3); on a real
chest-film task about 190 steps at batch 16 took validation AUROC to 0.90; 300 leaves a margin over
both, and early stopping returns what a run does not need. ``steps`` given explicitly overrides the
policy (a study gives every arm of one fraction the same number).

Evaluation on the validation split happens every ``eval_every`` steps (default: 20 evaluations per
run, so that early stopping has the same resolution whatever the data size; a run of 20 epochs is
evaluated once an epoch; never more often than every 5 steps) and at the last step; ``patience`` counts evaluations.

Training rows come from a stream of seeded permutations of the training subset (one per pass), cut
into equal batches: batch ``s`` and its augmentation are a pure function of ``(seed, s)``, so a
run resumed from any checkpoint takes exactly the steps an uninterrupted run takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_STEPS = 300
EVALUATIONS_PER_RUN = 20
# A validation pass costs about as much as a few training steps: short runs (--steps 20) evaluated
# at every step spent about a third of their training time validating. At least this many steps
# apart by default (the last step is always evaluated).
MIN_EVAL_EVERY = 5
WARMUP_FRACTION = 0.05


@dataclass(frozen=True)
class StepBudget:
    """A run's resolved budget. ``batch_size`` is per process; ``steps_per_epoch`` may be fractional."""

    steps: int
    eval_every: int
    warmup_steps: int
    batch_size: int
    steps_per_epoch: float
    policy: str  # "steps": given; "epochs": epochs x steps per epoch; "min_steps": the floor

    @property
    def epochs(self) -> float:
        """Passes over the training subset the budget amounts to."""
        return self.steps / self.steps_per_epoch

    def describe(self) -> str:
        why = {"steps": "given", "epochs": "from --epochs", "min_steps": "the --min-steps floor"}[self.policy]
        return (
            f"{self.steps} steps ({why}; {self.epochs:.1f} epochs at batch {self.batch_size}), "
            f"validation every {self.eval_every}"
        )


def resolve_budget(
    *,
    n_train: int,
    batch_size: int,
    epochs: int,
    min_steps: int = MIN_STEPS,
    steps: int = 0,
    eval_every: int = 0,
    world: int = 1,
    warmup: float = WARMUP_FRACTION,
) -> StepBudget:
    """The budget of a run on ``n_train`` images (see the module docstring). The batch is at most
    the rows one process sees in an epoch."""
    from ..runtime.errors import UsageError

    if n_train < 1:
        raise UsageError("the training subset is empty")
    per_rank = math.ceil(n_train / world)
    batch = max(1, min(batch_size, per_rank))
    per_epoch = per_rank / batch
    if steps:
        total, policy = steps, "steps"
    else:
        by_epochs = math.ceil(epochs * per_epoch)
        total, policy = (by_epochs, "epochs") if by_epochs >= min_steps else (min_steps, "min_steps")
    every = eval_every or max(MIN_EVAL_EVERY, round(total / EVALUATIONS_PER_RUN))
    return StepBudget(
        steps=total,
        eval_every=min(every, total),
        warmup_steps=int(round(warmup * total)),
        batch_size=batch,
        steps_per_epoch=per_epoch,
        policy=policy,
    )


def lr_factor(step: int, budget: StepBudget) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based): a linear warmup over
    ``warmup_steps``, then a cosine decay to zero at the last step."""
    w = budget.warmup_steps
    if step < w:
        return (step + 1) / (w + 1)
    span = max(1, budget.steps - w)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - w) / span)))


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A seed for step ``step`` of a run (augmentation and dropout), independent across steps."""
    import numpy as np

    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


class BatchStream:
    """The training rows of every step: seeded permutations of ``n`` rows, one per pass, in a
    single process; this rank's :class:`~torch.utils.data.DistributedSampler` share of each pass
    (padded, so every rank takes the same number of equal batches) in a torchrun group."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.share = math.ceil(n / world)
        self._orders: dict[int, object] = {}

    def _order(self, epoch: int):
        import torch

        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.pop(min(self._orders))
            if self.world == 1:
                gen = torch.Generator().manual_seed(step_seed(self.seed, epoch, 0x5EED))
                self._orders[epoch] = torch.randperm(self.n, generator=gen)
            else:
                from torch.utils.data import DistributedSampler

                sampler = DistributedSampler(
                    range(self.n), num_replicas=self.world, rank=self.rank, shuffle=True, seed=self.seed
                )
                sampler.set_epoch(epoch)
                self._orders[epoch] = torch.tensor(list(sampler))
        return self._orders[epoch]

    def rows(self, step: int):
        """Indices (into the training subset) of the batch of 0-based step ``step``."""
        import torch

        start, end = step * self.batch, (step + 1) * self.batch
        first, last = start // self.share, (end - 1) // self.share
        stream = torch.cat([self._order(e) for e in range(first, last + 1)])
        offset = first * self.share
        return stream[start - offset : end - offset]
