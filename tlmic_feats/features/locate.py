"""Finding the feature store made for a dataset, so that ``tlmic probe --data D`` needs no hashed path."""

from __future__ import annotations

import os
from pathlib import Path

from ..runtime.errors import StoreError, UsageError
from ..runtime.paths import cache_root, slug
from .store import FeatureStore


def stores_for(data_path: str | os.PathLike, *, backbone: str = "", root: Path | None = None) -> list[FeatureStore]:
    """Finished stores under the cache's ``stores/`` made from ``data_path`` (and ``backbone``, when
    given), newest first."""
    wanted = Path(data_path).expanduser().resolve()
    base = (root or cache_root()) / "stores"
    found = []
    for path in base.glob("*/*.zarr") if base.is_dir() else ():
        try:
            store = FeatureStore.open(path)
        except (StoreError, OSError, ValueError):  # unfinished, foreign or unreadable: not a candidate
            continue
        recorded = store.config.get("data", {}).get("path")
        if recorded is None or Path(recorded).expanduser().resolve() != wanted:
            continue
        if not backbone or store.config.get("backbone") == backbone:
            found.append(store)
    return sorted(found, key=lambda st: (Path(st.path) / "zarr.json").stat().st_mtime, reverse=True)


def find_store(data_path: str | os.PathLike, *, backbone: str = "") -> Path:
    """The one finished store made from ``data_path`` (and ``backbone``); a one-line error naming the
    candidates (or the command that makes one) otherwise."""
    found = stores_for(data_path, backbone=backbone)
    which = f"{data_path}" + (f" with {backbone}" if backbone else "")
    if not found:
        raise UsageError(
            f"no finished feature store for {which} under {cache_root() / 'stores' / slug(Path(data_path).name)}; "
            f"make one with `tlmic extract --data {data_path}`"
        )
    if len(found) > 1:
        names = ", ".join(str(st.path) for st in found[:4]) + (" ..." if len(found) > 4 else "")
        raise UsageError(f"{len(found)} feature stores for {which}: {names}; choose one with --store (or --backbone)")
    return Path(found[0].path)
