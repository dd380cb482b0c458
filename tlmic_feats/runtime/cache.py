"""What tlmic keeps under its cache folder, and getting the space back: ``tlmic cache``.

:func:`scan_cache` walks the cache root (``$TLMIC_CACHE`` or ``./cache``) and names every item it
recognizes by what it holds, wherever it lies:

* ``store``: a feature store (a Zarr group whose attributes carry tlmic's store record);
* ``pixels``: a pixel cache (decoded squares of one dataset at one size);
* ``onnx``: an exported tapping graph (``onnx/``); ``openvino``: the same converted to OpenVINO IR
  (``openvino/``);
* ``run``: a finetuning run (``run.json`` with a finetuning config) or a probe run (``run.json``
  with a store fingerprint);
* ``study``: a study directory (``study.json``), its runs and probes included;
* ``dataset``: a generated phantom dataset (``phantom.json``);
* ``bench``: benchmark outputs (``bench/``); ``plan``: a study plan's calibration (``plans/``);
* ``other``: anything else.

Each item comes with its size, the time of its newest file, and the dataset and backbone it was
made from where its record says. :func:`clean_cache` deletes the items it is given, except those
locked by a live process (the lock files that extraction, pixel caching, finetuning and studies
hold while they write), and says how much it freed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .paths import cache_root, disk_usage

KINDS = ("store", "pixels", "onnx", "openvino", "run", "study", "dataset", "bench", "plan", "other")


@dataclass(frozen=True)
class CacheItem:
    kind: str
    path: Path
    bytes: int
    modified: float  # newest file's modification time (seconds since the epoch)
    dataset: str = ""
    backbone: str = ""
    locked_by: str = ""  # "pid N on HOST" while a live process holds its lock

    @property
    def age_days(self) -> float:
        return max(0.0, (time.time() - self.modified) / 86400)


def scan_cache(root: str | Path | None = None) -> list[CacheItem]:
    """Every item under ``root`` (default: the cache root), largest first."""
    root = Path(root) if root is not None else cache_root()
    items: list[CacheItem] = []
    if root.is_dir():
        _visit(root, root, items)
    return sorted(items, key=lambda i: -i.bytes)


def _visit(folder: Path, root: Path, items: list[CacheItem]) -> None:
    loose = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or entry.name.endswith(".lock") or entry.name in ("README.md", ".gitignore"):
            continue
        if entry.is_dir():
            found = _recognize(entry, root)
            if found is not None:
                items.append(_item(entry, *found))
            else:
                _visit(entry, root, items)
        else:
            loose.append(entry)
    if loose and folder != root:
        kind = _kind_by_place(folder, root) or "other"
        for f in loose:
            items.append(_item(f, kind, "", ""))


def _kind_by_place(path: Path, root: Path) -> str | None:
    top = path.relative_to(root).parts[0] if path != root else ""
    return {"onnx": "onnx", "openvino": "openvino", "bench": "bench", "plans": "plan"}.get(top)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _recognize(path: Path, root: Path) -> tuple[str, str, str] | None:
    """(kind, dataset, backbone) of a directory tlmic made, or None to look inside it."""
    if (path / "zarr.json").is_file():
        attrs = _read_json(path / "zarr.json").get("attributes", {})
        if "tlmic_pixels" in attrs:
            return "pixels", "", ""
        meta = attrs.get("tlmic", {})
        data = (meta.get("config") or {}).get("data") or {}
        return "store", Path(data.get("path", "")).name, (meta.get("fingerprint") or {}).get("backbone", "")
    if (path / "study.json").is_file():
        config = _read_json(path / "study.json").get("config", {})
        return "study", Path((config.get("data") or {}).get("path", "")).name, config.get("backbone", "")
    if (path / "run.json").is_file():
        record = _read_json(path / "run.json")
        if "store_fingerprint" in record:  # a probe run
            return "run", "", record["store_fingerprint"].get("backbone", "")
        config = record.get("config", {})
        return "run", Path((config.get("data") or {}).get("path", "")).name, config.get("backbone", "")
    if (path / "phantom.json").is_file():
        return "dataset", path.name, ""
    kind = _kind_by_place(path, root)
    if kind is not None and path.parent == root / path.relative_to(root).parts[0]:
        return kind, "", ""
    return None


def _item(path: Path, kind: str, dataset: str, backbone: str) -> CacheItem:
    from .locks import lock_holder

    holder = lock_holder(path)
    return CacheItem(
        kind=kind,
        path=path,
        bytes=disk_usage(path),
        modified=_newest(path),
        dataset=dataset,
        backbone=backbone,
        locked_by=f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "",
    )


def _newest(path: Path) -> float:
    if path.is_file():
        return path.stat().st_mtime
    newest = path.stat().st_mtime
    for r, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed while we walked
                newest = max(newest, (Path(r) / name).stat().st_mtime)
    return newest


def select_items(
    items: list[CacheItem],
    *,
    kinds: tuple[str, ...] = (),
    older_than_days: float = 0.0,
    paths: tuple[str, ...] = (),
) -> list[CacheItem]:
    """The items of ``kinds`` (all when empty), older than ``older_than_days`` (0: any age), at or
    under ``paths`` (any when empty)."""
    from .errors import check_choice

    for k in kinds:
        check_choice("--kind", k, KINDS)
    wanted = [Path(p).resolve() for p in paths]

    def under(p: Path) -> bool:
        rp = p.resolve()
        return any(rp == w or w in rp.parents for w in wanted)

    return [
        i
        for i in items
        if (not kinds or i.kind in kinds)
        and (not older_than_days or i.age_days > older_than_days)
        and (not wanted or under(i.path))
    ]


def clean_cache(items: list[CacheItem]) -> tuple[int, list[CacheItem], list[CacheItem]]:
    """Delete ``items``; returns (bytes freed, deleted, skipped because a live process holds them).

    The lock is checked again just before each deletion (it may have been taken since the scan).
    """
    from .locks import lock_holder

    freed, deleted, skipped = 0, [], []
    for item in items:
        if lock_holder(item.path) is not None:
            skipped.append(item)
            continue
        size = disk_usage(item.path)
        if item.path.is_dir():
            shutil.rmtree(item.path, ignore_errors=True)
        else:
            item.path.unlink(missing_ok=True)
        freed += size - disk_usage(item.path)
        deleted.append(item)
    return freed, deleted, skipped


def summarize_by_kind(items: list[CacheItem]) -> dict[str, tuple[int, int]]:
    """``{kind: (items, bytes)}`` in :data:`KINDS` order, kinds present only."""
    out = {}
    for k in KINDS:
        of = [i for i in items if i.kind == k]
        if of:
            out[k] = (len(of), sum(i.bytes for i in of))
    return out
