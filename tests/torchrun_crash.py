"""`tlmic` as torchrun runs it, with one fault injected for the restart test: on the group's first
attempt, the last rank exits abruptly right after the evaluation (and checkpoint) at step
``TLMIC_TEST_CRASH_AFTER_STEP``. torchrun then restarts the group, which must resume from there.

    python -m torch.distributed.run --standalone --nproc-per-node 2 --max-restarts 1 \\
        tests/torchrun_crash.py finetune ...
"""

import os

from tlmic_feats.finetune import loop

_evaluate = loop.evaluate_and_checkpoint


def evaluate_then_crash(setup, tr, loss_fn, state, *rest):
    _evaluate(setup, tr, loss_fn, state, *rest)
    group = setup.group
    last_rank, first_attempt = group.rank == group.world - 1, not group.restarted
    if state["step"] == int(os.environ["TLMIC_TEST_CRASH_AFTER_STEP"]) and last_rank and first_attempt:
        os._exit(17)


loop.evaluate_and_checkpoint = evaluate_then_crash

if __name__ == "__main__":
    from tlmic_cli.main import main

    main()
