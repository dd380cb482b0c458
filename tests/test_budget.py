"""The finetuning budget in optimizer steps: the default policy, the schedule, the batch stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlmic_feats.finetune.budget import MIN_STEPS, BatchStream, lr_factor, resolve_budget
from tlmic_feats.runtime.errors import UsageError


def test_small_subsets_get_the_floor_and_large_ones_their_epochs():
    small = resolve_budget(n_train=50, batch_size=32, epochs=20)
    assert (small.steps, small.policy) == (MIN_STEPS, "min_steps")  # 20 epochs would be 40 steps
    assert small.epochs == pytest.approx(MIN_STEPS * 32 / 50)
    large = resolve_budget(n_train=50_000, batch_size=32, epochs=20)
    assert (large.steps, large.policy) == (31_250, "epochs")  # the floor costs a large set nothing
    assert large.eval_every == 1562  # 20 evaluations: about once an epoch (1,563 steps)
    assert small.eval_every == 15
    short = resolve_budget(n_train=50, batch_size=32, epochs=20, steps=20)
    assert short.eval_every == 5  # not every step: validation would cost a third of the training
    assert resolve_budget(n_train=50, batch_size=32, epochs=20, steps=3).eval_every == 3  # the last step
    given = resolve_budget(n_train=50, batch_size=32, epochs=20, steps=7, eval_every=3)
    assert (given.steps, given.eval_every, given.policy) == (7, 3, "steps")


def test_batch_is_at_most_what_one_process_sees_per_pass():
    b = resolve_budget(n_train=20, batch_size=32, epochs=1, min_steps=10)
    assert b.batch_size == 20 and b.steps_per_epoch == 1
    two = resolve_budget(n_train=20, batch_size=32, epochs=1, min_steps=10, world=2)
    assert two.batch_size == 10
    with pytest.raises(UsageError, match="empty"):
        resolve_budget(n_train=0, batch_size=32, epochs=1)


def test_schedule_warms_up_then_decays_to_zero_like_torch_runs_it():
    b = resolve_budget(n_train=100, batch_size=10, epochs=1, steps=200)
    assert b.warmup_steps == 10
    factors = [lr_factor(s, b) for s in range(b.steps)]
    assert all(np.diff(factors[: b.warmup_steps + 1]) > 0)  # warmup rises
    assert max(factors) == pytest.approx(1.0)
    assert all(np.diff(factors[b.warmup_steps :]) <= 1e-12)  # then never rises
    assert factors[-1] < 1e-3
    # the LambdaLR the trainer builds gives step s exactly base_lr * lr_factor(s)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, b))
    seen = []
    for _ in range(b.steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(seen, 0.1 * np.array(factors), rtol=1e-12)


@pytest.mark.parametrize("n, batch", [(32, 12), (20, 20), (7, 3)])
def test_stream_takes_every_row_once_per_pass_and_is_a_function_of_the_step(n, batch):
    stream = BatchStream(n, batch, seed=4)
    steps = 5 * n // batch
    rows = torch.cat([stream.rows(s) for s in range(steps)]).numpy()
    assert all(len(stream.rows(s)) == batch for s in range(steps))  # every batch full, across pass ends
    for p in range(len(rows) // n):
        assert sorted(rows[p * n : (p + 1) * n]) == list(range(n))  # each pass a permutation
    again = BatchStream(n, batch, seed=4)
    for s in reversed(range(steps)):  # any order, any instance: the same batch
        assert torch.equal(again.rows(s), stream.rows(s))
    other = torch.cat([BatchStream(n, batch, seed=5).rows(s) for s in range(steps)]).numpy()
    assert not np.array_equal(rows, other)


def test_stream_shares_are_disjoint_across_ranks_within_a_pass():
    n, world = 10, 2
    shares = [BatchStream(n, 5, seed=1, rank=r, world=world).rows(0).tolist() for r in range(world)]
    assert sorted(shares[0] + shares[1]) == list(range(n))
