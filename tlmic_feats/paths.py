"""Where tlmic keeps what it makes: stores, exports and runs (``cache/`` by default)."""

from __future__ import annotations

import os
import re
from pathlib import Path


def cache_root() -> Path:
    """``$TLMIC_CACHE`` when set, else ``./cache`` (the repository's git-ignored cache folder)."""
    return Path(os.environ.get("TLMIC_CACHE") or "cache").expanduser()


def slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"
