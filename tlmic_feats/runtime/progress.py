"""Progress bars: one kind for every stage, on stderr, off with ``progress=False`` (``--quiet``)."""

from __future__ import annotations

import sys


def progress_bar(total: int, desc: str, unit: str, enabled: bool, *, initial: int = 0, leave: bool = True, **kw):
    """A tqdm bar; ``kw`` passes further tqdm options (``smoothing``)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not enabled,
        dynamic_ncols=True,
        file=sys.stderr,
        leave=leave,
        **kw,
    )
