"""Where tlmic keeps what it makes: stores, exports and runs (``cache/`` by default)."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path


def cache_root() -> Path:
    """``$TLMIC_CACHE`` when set, else ``./cache`` (the repository's git-ignored cache folder)."""
    return Path(os.environ.get("TLMIC_CACHE") or "cache").expanduser()


def slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def disk_usage(path: str | Path) -> int:
    """Bytes of the files under ``path`` (a file's own size; 0 when absent); links are not followed."""
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            p = Path(root) / name
            if not p.is_symlink():
                with contextlib.suppress(OSError):  # removed while we walked
                    total += p.stat().st_size
    return total


def human_bytes(n: float) -> str:
    """``5.1 kB``, ``13.2 MB``: decimal units, one decimal."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
