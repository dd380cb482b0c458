"""The feature store: per-cut-point pooled features of a dataset, in a Zarr v3 group.

Layout (everything pre-allocated from the manifest when the store is created)::

    <store>/                      root attrs["tlmic"]: format, status, fingerprint, config, layers
      features/<address>          (N, C) float32|float16, chunks (chunk_rows, C)
      ids, splits, patient_ids    (N,) str
      labels                      (N, L) float32, NaN = missing (FeatureStore.labels: scikit-learn's shape)
      skipped                     (N,) bool, rows whose image could not be read (features NaN)
      shard_done                  (n_shards,) bool, one chunk per shard

Rows are written in shards: row range ``[s*chunk_rows, (s+1)*chunk_rows)``, aligned with every
array's chunks, so independent writers never share a chunk. A shard's flag is set only after all
its arrays are written; a resumed extraction recomputes exactly the shards not flagged. Only one
process changes metadata (creation, finalization). ``status`` becomes ``complete`` when every
shard is done; :meth:`FeatureStore.open` refuses anything else unless asked.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.errors import (
    StoreError,
    StoreIncompleteError,
    StoreMismatchError,
    UnknownCutPointError,
    choices,
)
from ..runtime.locations import StoreURL, location_exists, store_location
from ..runtime.locks import StoreLock
from ..runtime.rundir import address_from_label

FORMAT_VERSION = 1
# Fingerprint keys that may differ between a store and a request without changing its contents.
_INFORMATIONAL_KEYS = ("tlmic_version",)


@dataclass(frozen=True)
class LayerInfo:
    """A cut point held by a store; ``array`` names the array that stores it."""

    address: str
    module: str
    channels: int
    stride: int
    array: str


class FeatureStore:
    """Read (and, for extraction, write) a tlmic feature store.

    >>> store = FeatureStore.open("cache/stores/demo.zarr")        # doctest: +SKIP
    >>> X, y = store.features("3"), store.labels                    # doctest: +SKIP
    >>> train = store.splits == "train"                            # doctest: +SKIP
    """

    def __init__(self, path: str | Path, group, meta: dict) -> None:
        self.path = store_location(path)
        self._group = group
        self._meta = meta
        self._cache: dict[str, np.ndarray] = {}

    # --- opening ----------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, allow_incomplete: bool = False) -> FeatureStore:
        """Open a finished store read-only. Unfinished stores raise :class:`StoreIncompleteError`."""
        import zarr

        path = store_location(path)
        if not location_exists(path, "zarr.json"):
            raise StoreError(f"no feature store at {path} (run `tlmic extract` to make one)")
        group = zarr.open_group(str(path), mode="r")
        meta = dict(group.attrs).get("tlmic")
        if not meta:
            raise StoreError(f"{path} is a Zarr group but not a tlmic feature store")
        if meta.get("format") != FORMAT_VERSION:
            raise StoreError(f"{path} has store format {meta.get('format')}; this tlmic reads format {FORMAT_VERSION}")
        if meta.get("status") != "complete" and not allow_incomplete:
            done = int(np.asarray(group["shard_done"][:]).sum()) if "shard_done" in group else 0
            raise StoreIncompleteError(
                f"feature store {path} is unfinished ({meta.get('status')}, {done} of "
                f"{meta.get('n_shards', '?')} shards done); rerun the same `tlmic extract` to finish it"
            )
        return cls(path, group, meta)

    # --- read API ---------------------------------------------------------------------------------

    @property
    def layers(self) -> list[LayerInfo]:
        """Cut points in depth order."""
        return [LayerInfo(**d) for d in self._meta["layers"]]

    @property
    def addresses(self) -> list[str]:
        return [d["address"] for d in self._meta["layers"]]

    def layer(self, address: str) -> LayerInfo:
        for info in self.layers:
            if info.address == str(address):
                return info
        raise UnknownCutPointError(
            f"layer {address} is not in the store {self.path}; stored: {choices(self.addresses)}"
        )

    def features(self, address: str, *, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """The ``(N, C)`` pooled features of one cut point (rows aligned with :attr:`ids`), or only
        ``rows`` of them (a slice, or ascending row numbers: only the chunks holding them are read)."""
        info = self.layer(address)
        array = self._group[f"features/{info.array}"]
        if rows is None:
            return np.asarray(array[:])
        if isinstance(rows, slice):
            return np.asarray(array[rows])
        return np.asarray(array.oindex[np.asarray(rows, dtype=np.int64)])

    @property
    def chunk_rows(self) -> int:
        """Rows per chunk: a read costs whole chunks."""
        return int(self._meta["chunk_rows"])

    def _array(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = np.asarray(self._group[name][:])
        return self._cache[name]

    def _strings(self, name: str) -> np.ndarray:
        # Zarr returns numpy's variable-width StringDType; callers get plain fixed-width str.
        return np.array(self._array(name).tolist(), dtype=str)

    @property
    def ids(self) -> np.ndarray:
        return self._strings("ids")

    @property
    def labels(self) -> np.ndarray:
        """Targets in the shape scikit-learn expects, rows aligned with :attr:`ids`: binary and
        multi-class ``(N,)`` int64 class indices into :attr:`label_names`; multi-label ``(N, L)``
        float32 of 0/1 with NaN where a label is missing (mask per label before fitting). The stored
        ``(N, L)`` matrix is :attr:`label_matrix`."""
        from ..data.manifest import sklearn_labels

        return sklearn_labels(self.label_matrix, self.label_kind)

    @property
    def label_matrix(self) -> np.ndarray:
        """The labels as stored, ``(N, L)`` float32, NaN = missing (the manifest's convention:
        ``L`` is 1 for binary and multi-class, which hold the class index)."""
        return self._array("labels")

    @property
    def splits(self) -> np.ndarray:
        return self._strings("splits")

    @property
    def patient_ids(self) -> np.ndarray | None:
        return self._strings("patient_ids") if "patient_ids" in self._group else None

    @property
    def skipped(self) -> np.ndarray:
        return self._array("skipped")

    @property
    def label_names(self) -> list[str]:
        return list(self._meta["label_names"])

    @property
    def label_kind(self) -> str:
        return self._meta["label_kind"]

    @property
    def fingerprint(self) -> dict:
        return dict(self._meta["fingerprint"])

    @property
    def config(self) -> dict:
        return dict(self._meta["config"])

    @property
    def status(self) -> str:
        return self._meta["status"]

    @property
    def meta(self) -> dict:
        return dict(self._meta)

    def __len__(self) -> int:
        return int(self._meta["n"])

    @classmethod
    def from_arrays(
        cls,
        path: str | Path,
        features: dict[str, np.ndarray],
        *,
        labels: np.ndarray,
        label_kind: str,
        label_names: list[str] | tuple[str, ...],
        splits: np.ndarray,
        ids: np.ndarray | None = None,
        patient_ids: np.ndarray | None = None,
        chunk_rows: int = 1024,
        description: str = "from_arrays",
        overwrite: bool = False,
    ) -> FeatureStore:
        """Write a finished store from in-memory arrays (``{address: (N, C)}``, depth order);
        ``labels`` as :attr:`labels` or :attr:`label_matrix` return them (``(N,)`` or ``(N, L)``).

        For features computed elsewhere, synthetic benchmarks and tests. The fingerprint records
        ``description`` in place of a backbone, and a digest of the arrays as the dataset, so that
        runs made on one such store are never taken for runs on another. An existing store at
        ``path`` is replaced only with ``overwrite``.
        """
        import hashlib

        path = store_location(path)
        if location_exists(path) and not overwrite:
            raise StoreMismatchError(f"{path} exists; pass overwrite=True to replace it")
        n = len(labels)
        manifest = _ArrayTable(
            n,
            ids=np.asarray(ids if ids is not None else [str(i) for i in range(n)]),
            splits=np.asarray(splits),
            patient_ids=None if patient_ids is None else np.asarray(patient_ids),
            labels=np.asarray(labels, dtype=np.float32).reshape(n, -1),
            label_kind=label_kind,
            label_names=tuple(label_names),
            split_origin="given",
        )
        layers = [LayerInfo(a, "external", int(x.shape[1]), 0, a) for a, x in features.items()]
        digest = hashlib.sha256()
        for a in (manifest.labels, manifest.splits.astype(str), *features.values()):
            digest.update(np.ascontiguousarray(a).tobytes())
        fingerprint = {"backbone": description, "dataset": digest.hexdigest(), "layers": list(features)}
        with StoreLock(path):
            writer, _ = open_for_writing(
                path,
                fingerprint=fingerprint,
                config={"source": description},
                manifest=manifest,
                layers=layers,
                chunk_rows=chunk_rows,
                dtype="float32",
                overwrite=True,
            )
            for shard in writer.pending_shards():
                start, stop = writer.shard_rows(shard)
                writer.write_shard(shard, {a: x[start:stop] for a, x in features.items()}, np.zeros(stop - start, bool))
            return writer.finalize()

    def __repr__(self) -> str:
        return (
            f"FeatureStore({str(self.path)!r}, n={len(self)}, layers={len(self._meta['layers'])}, "
            f"status={self.status!r})"
        )


def resolve_store_layers(store: FeatureStore, spec: str) -> list[str]:
    """The store's addresses that ``spec`` names (the registry's layer grammar: ``all``, ``blocks``,
    ``units`` or a list such as ``"3,3.4"``, or ``"L3,L3.4"`` as results.csv writes them), in the
    store's order."""
    from ..backbones.cutpoints import select_addresses

    def unknown(bad: str) -> str:
        valid = choices(["all", "blocks", "units", *store.addresses])
        return f"layer {bad} is not in the store {store.path}; stored: {valid}"

    # addresses as results.csv writes them (L3.10) are accepted too
    if isinstance(spec, str) and spec.strip().lower() not in ("all", "blocks", "units"):
        spec = ",".join(address_from_label(s) for s in spec.split(","))
    elif not isinstance(spec, str):
        spec = [address_from_label(s) for s in spec]
    return select_addresses(spec, store.addresses, unknown)


# --- writing (used by extraction) ----------------------------------------------------------------


class StoreWriter:
    """Creates or resumes a store, writes shards, finalizes. One per extraction run."""

    def __init__(self, path: Path | StoreURL, group, meta: dict) -> None:
        self.path = path
        self.group = group
        self.meta = meta
        self.chunk_rows = int(meta["chunk_rows"])
        self.n = int(meta["n"])

    @classmethod
    def attach(cls, path: str | Path) -> StoreWriter:
        """A shard writer on a store another process created (a cluster worker): it writes shards
        and their flags, never metadata. The creating process holds the lock and finalizes."""
        import zarr

        path = store_location(path)
        meta = _read_meta(path)
        if meta is None or meta.get("status") not in ("in_progress", "complete"):
            status = None if meta is None else meta.get("status")
            raise StoreError(f"no feature store being written at {path} (status {status})")
        return cls(path, zarr.open_group(str(path), mode="r+"), meta)

    @property
    def n_shards(self) -> int:
        return int(self.meta["n_shards"])

    def shard_rows(self, shard: int) -> tuple[int, int]:
        start = shard * self.chunk_rows
        return start, min(self.n, start + self.chunk_rows)

    def pending_shards(self) -> list[int]:
        done = np.asarray(self.group["shard_done"][:])
        return [int(s) for s in np.flatnonzero(~done)]

    def write_shard(self, shard: int, features: dict[str, np.ndarray], skipped: np.ndarray) -> None:
        """Write every array's rows of ``shard``, then flag the shard done (in that order)."""
        start, stop = self.shard_rows(shard)
        for array, values in features.items():
            self.group[f"features/{array}"][start:stop] = values
        self.group["skipped"][start:stop] = skipped
        self.group["shard_done"][shard] = True

    def finalize(self) -> FeatureStore:
        pending = self.pending_shards()
        if pending:
            raise StoreIncompleteError(f"cannot finalize {self.path}: shards {pending[:5]} not done")
        meta = dict(self.meta)
        meta["status"] = "complete"
        meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        meta["n_skipped"] = int(np.asarray(self.group["skipped"][:]).sum())
        self.group.attrs["tlmic"] = meta
        self.meta = meta
        return FeatureStore.open(self.path)


class _ArrayTable:
    """A manifest-like view of arrays: the fields :func:`open_for_writing` reads."""

    def __init__(self, n: int, **fields) -> None:
        self.__dict__.update(fields)
        self._n = n

    def __len__(self) -> int:
        return self._n


def compare_fingerprints(existing: dict, wanted: dict) -> list[str]:
    """Keys whose values differ (informational keys excluded); compared as stored (JSON)."""
    existing, wanted = json.loads(json.dumps(existing)), json.loads(json.dumps(wanted))
    keys = (set(existing) | set(wanted)) - set(_INFORMATIONAL_KEYS)
    return sorted(k for k in keys if existing.get(k) != wanted.get(k))


def open_for_writing(
    path: str | Path,
    *,
    fingerprint: dict,
    config: dict,
    manifest,
    layers: list[LayerInfo],
    chunk_rows: int,
    dtype: str,
    overwrite: bool = False,
) -> tuple[StoreWriter, bool]:
    """Resume the store at ``path`` if it was made from the same inputs, else create it.

    Returns ``(writer, finished)``; ``finished`` is True when the store is already complete (the
    extraction is then a no-op). A store from different inputs is refused unless ``overwrite``.
    """
    import zarr

    path = store_location(path)
    if location_exists(path):
        existing = _read_meta(path)
        if existing is None:
            if _nonempty(path):
                raise StoreMismatchError(f"{path} exists and is not a tlmic feature store; choose another --store")
        elif existing.get("status") == "creating" or overwrite:
            _remove(path)
        else:
            diff = compare_fingerprints(existing["fingerprint"], fingerprint)
            if diff:
                raise StoreMismatchError(
                    f"store {path} was made from different inputs (differs in: {', '.join(diff)}); "
                    "pass --overwrite to replace it or choose another --store"
                )
            group = zarr.open_group(str(path), mode="r+")
            writer = StoreWriter(path, group, existing)
            return writer, existing.get("status") == "complete"

    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
    group = zarr.open_group(str(path), mode="w")
    n = len(manifest)
    n_shards = max(1, -(-n // chunk_rows))
    meta = {
        "format": FORMAT_VERSION,
        "status": "creating",
        "fingerprint": fingerprint,
        "config": config,
        "layers": [vars(li) for li in layers],
        "n": n,
        "chunk_rows": chunk_rows,
        "n_shards": n_shards,
        "label_kind": manifest.label_kind,
        "label_names": list(manifest.label_names),
        "split_origin": manifest.split_origin,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # "creating" first: an interrupted creation is recognizably ours and is simply redone.
    group.attrs["tlmic"] = meta
    rows = max(1, min(chunk_rows, n))
    feats = group.require_group("features")
    arrays = {}
    for li in layers:
        if li.array not in arrays:
            arrays[li.array] = feats.create_array(
                li.array,
                shape=(n, li.channels),
                chunks=(rows, li.channels),
                dtype=dtype,
                fill_value=np.nan,
            )
    _write_full(group, "ids", manifest.ids.astype(str), rows)
    _write_full(group, "splits", manifest.splits.astype(str), rows)
    if manifest.patient_ids is not None:
        _write_full(group, "patient_ids", manifest.patient_ids.astype(str), rows)
    lab = group.create_array(
        "labels",
        shape=manifest.labels.shape,
        chunks=(rows, manifest.labels.shape[1]),
        dtype="float32",
        fill_value=np.nan,
    )
    lab[:] = manifest.labels.astype(np.float32)
    group.create_array("skipped", shape=(n,), chunks=(rows,), dtype="bool", fill_value=False)
    group.create_array("shard_done", shape=(n_shards,), chunks=(1,), dtype="bool", fill_value=False)
    meta["status"] = "in_progress"
    group.attrs["tlmic"] = meta
    return StoreWriter(path, group, meta), False


def _write_full(group, name: str, values: np.ndarray, rows: int) -> None:
    a = group.create_array(name, shape=values.shape, chunks=(rows,), dtype=str)
    a[:] = values


def _nonempty(path: Path | StoreURL) -> bool:
    if isinstance(path, Path):
        return path.is_dir() and any(path.iterdir())
    fs, root = path.filesystem()
    return bool(fs.ls(root))


def _read_text(path: Path | StoreURL, member: str) -> str | None:
    try:
        if isinstance(path, Path):
            return (path / member).read_text()
        fs, root = path.filesystem()
        return fs.cat(f"{root}/{member}").decode()
    except (OSError, ValueError):
        return None


def _read_meta(path: Path | StoreURL) -> dict | None:
    text = _read_text(path, "zarr.json")
    if text is None:
        return None
    try:
        return json.loads(text).get("attributes", {}).get("tlmic")
    except ValueError:
        return None


def _remove(path: Path | StoreURL) -> None:
    """Remove a store. Locally it is renamed first, so a crash mid-delete never leaves a half
    store in place; on object storage (no rename) a half-deleted store has no ``zarr.json`` left
    after the first deletion and is recognized as not a store."""
    if isinstance(path, Path):
        trash = path.with_name(f".{path.name}.deleting-{os.getpid()}")
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return
    fs, root = path.filesystem()
    fs.rm(f"{root}/zarr.json")
    fs.rm(root, recursive=True)
