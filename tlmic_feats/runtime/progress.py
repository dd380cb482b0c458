"""Progress bars and log lines: one kind for every stage, on stderr, both off with ``progress=False``
(``--quiet``): a library call with ``progress=False`` prints nothing."""

from __future__ import annotations

import sys
from collections.abc import Callable


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


def default_log(progress: bool) -> Callable[[str], None]:
    """The log of a call given no ``log``: lines on stderr, or nothing at all with ``progress=False``."""
    if not progress:
        return lambda message: None
    return lambda message: print(message, file=sys.stderr)
