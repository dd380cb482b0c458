"""Data-parallel finetuning under torchrun: the process group, and launching it.

``tlmic finetune --nproc N`` starts ``torchrun --standalone --nproc-per-node N`` on this machine;
``torchrun --nnodes ... -m tlmic_cli.main finetune ...`` is the same run across machines. Inside,
:func:`join` sees torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) and joins the
group: gloo on CPU, nccl on GPU (one GPU per local rank). Without torchrun it returns a group of
one, and finetuning runs exactly as before.

Roles: every rank trains on its DistributedSampler share of the training subset (the global batch
is ``nproc x --batch-size``) and keeps an identical model (DDP averages gradients; BatchNorm
buffers are taken from rank 0 before each evaluation). Rank 0 alone validates, decides (best
step, early stop), writes checkpoints, logs and outputs, and broadcasts its decisions. After torchrun
restarts a failed group (``--max-restarts``), every rank resumes from rank 0's last checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

from ..runtime.errors import UsageError


@dataclass
class Group:
    """This process's place in the finetuning group (a group of one without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def restarted(self) -> bool:
        """True when torchrun restarted the group after a failure: the run must resume."""
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj):
        """``obj`` as rank 0 has it, on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        import torch
        import torch.distributed as dist

        device = f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"  # nccl reduces GPU tensors only
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.cpu().tolist()

    def sync_buffers(self, module) -> None:
        """Rank 0's BatchNorm statistics (and any other buffers) on every rank."""
        if not self.distributed:
            return
        import torch.distributed as dist

        for b in module.buffers():
            dist.broadcast(b.data, src=0)

    def first_then_rest(self, fn):
        """Run ``fn`` on rank 0, then on the others (e.g. build a shared cache once)."""
        if self.is_main:
            value = fn()
            self.barrier()
            return value
        self.barrier()
        return fn()

    def leave(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def join(device: str) -> Group:
    """Join the torchrun group this process was started in (or a group of one) and pin the GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Group()
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device != "cpu" and torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            store=_attempt_store(),
            rank=int(os.environ["RANK"]),
            world_size=world,
            timeout=timedelta(hours=2),  # the other ranks wait while rank 0 builds a large pixel cache
        )
    return Group(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, backend=backend)


def _attempt_store():
    """torchrun's rendezvous store, under a prefix of its own for each restart of the group: gloo
    otherwise can find the previous attempt's peer addresses in it and fail to connect."""
    import torch.distributed as dist

    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    rank = int(os.environ["RANK"])
    store = dist.TCPStore(
        host, port, int(os.environ["WORLD_SIZE"]), is_master=not agent and rank == 0, timeout=timedelta(minutes=5)
    )
    return dist.PrefixStore(f"tlmic/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def launch(args: list[str], nproc: int, *, max_restarts: int = 0) -> int:
    """Run ``tlmic <args>`` as ``nproc`` processes under torchrun on this machine; its exit code."""
    if nproc < 1:
        raise UsageError(f"--nproc {nproc}: need at least 1 process")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        "-m",
        "tlmic_cli.main",
        *args,
    ]
    return subprocess.call(command)


def strip_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without the options ``names`` (each with its value, ``--x V`` or ``--x=V``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if any(a.startswith(n + "=") for n in names):
            continue
        out.append(a)
    return out
