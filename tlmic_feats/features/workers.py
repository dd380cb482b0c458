"""Decode workers: DataLoader worker processes, spawned (Zarr and fork do not mix), made safe to use
from a user's own script.

A spawned worker starts by importing the caller's ``__main__``. A script that calls tlmic at top
level, without an ``if __name__ == "__main__":`` guard, is then re-run inside every worker, which
dies. Two things turn that into a one-line error instead of a hang:

* the dataset reaches the workers through a file, not the start-up pipe. multiprocessing writes a
  worker's start-up data into a pipe whose read end the parent itself keeps open until the write
  ends; past the pipe's buffer (64 KiB, a source of ~1,000 file paths) a dead worker leaves the
  parent blocked in that write forever;
* a worker that died is reported as :class:`RunError`, naming the likely causes and the way out.
  PyTorch raises a worker's death either from the loader (while waiting for a batch) or from its
  SIGCHLD handler, in whatever code the main thread is running: so the consumer's loop, not only
  the loader, runs under :func:`dead_workers_reported`.
"""

from __future__ import annotations

import contextlib
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..runtime.errors import RunError

WORKER_DIED = (
    "a decode worker process exited unexpectedly ({detail}). Worker processes are spawned and "
    "import the calling script: if tlmic was called from a script, put its entry point under "
    'if __name__ == "__main__":. Otherwise the worker may have run out of memory; --workers 0 '
    "(workers=0) decodes in this process"
)


class _DatasetFile:
    """A map-style dataset that workers load from a pickle file on first use; pickles as its path."""

    def __init__(self, path: str, n: int) -> None:
        self.path, self.n, self._dataset = path, n, None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if self._dataset is None:
            with open(self.path, "rb") as f:
                self._dataset = pickle.load(f)
        return self._dataset[i]

    def __getstate__(self) -> dict:
        return {"path": self.path, "n": self.n, "_dataset": None}


@contextlib.contextmanager
def dead_workers_reported():
    """Turn PyTorch's report of a dead DataLoader worker (``DataLoader worker (pid ...) exited
    unexpectedly`` / ``is killed by signal``) into :class:`RunError`; other errors pass through."""
    try:
        yield
    except RuntimeError as e:
        if not str(e).startswith("DataLoader worker (pid"):
            raise
        raise RunError(WORKER_DIED.format(detail=str(e).split(". ")[0])) from e


def spawned_loader(dataset, workers: int, **loader_kwargs) -> Iterator:
    """Iterate ``torch.utils.data.DataLoader(dataset, num_workers=workers, **loader_kwargs)`` with
    ``workers`` (> 0) spawned processes. Run the loop that consumes it under
    :func:`dead_workers_reported`: a worker's death can surface anywhere in that loop.

    A generator: the dataset's file lives until the iteration ends or the generator is closed.
    """
    import torch

    if workers <= 0:
        raise ValueError(f"spawned_loader needs workers > 0; got {workers}")
    with tempfile.TemporaryDirectory(prefix="tlmic-workers-") as tmp:
        path = Path(tmp) / "dataset.pickle"
        with open(path, "wb") as f:
            pickle.dump(dataset, f, protocol=pickle.HIGHEST_PROTOCOL)
        loader = torch.utils.data.DataLoader(
            _DatasetFile(str(path), len(dataset)),
            num_workers=workers,
            multiprocessing_context="spawn",
            **loader_kwargs,
        )
        yield from loader
