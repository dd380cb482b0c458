"""Writing files so that a crash never leaves one half written: every output goes to a temporary name
beside its target and is renamed onto it once complete (a rename is atomic on one filesystem)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so that writers that go by it still work),
    renamed onto ``path`` when the block ends, removed if it raises."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj, *, indent: int | None = 1, default=None) -> None:
    write_text(path, json.dumps(obj, indent=indent, default=default))


def save_torch(obj, path: str | Path) -> None:
    """``torch.save`` to ``path`` through a temporary name."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_figure(fig, path: str | Path, *, dpi: int = 100) -> None:
    """Save a matplotlib figure to ``path`` through a temporary name, and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
