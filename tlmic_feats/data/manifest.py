"""The manifest: what a dataset is, independent of its on-disk format.

A :class:`Manifest` lists every image once, with its id, its labels, its split and (when known)
its patient. Readers for each format produce one; everything downstream (extraction, probes,
finetuning) consumes only this.

Label conventions (also those of the feature store):

* ``binary``: ``labels`` is ``(N, 1)``, 0 or 1; ``label_names`` names class 0 then class 1.
* ``multiclass``: ``labels`` is ``(N, 1)``, the class index; ``label_names`` are the classes.
* ``multilabel``: ``labels`` is ``(N, L)``, 0 or 1 per label, NaN where the label is missing;
  ``label_names`` are the L labels.

:func:`sklearn_labels` turns that matrix into the targets scikit-learn expects (what
``FeatureStore.labels`` returns).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from ..runtime.errors import BadImageError, DataFormatError

LabelKind = Literal["binary", "multiclass", "multilabel"]
LABEL_KINDS: tuple[str, ...] = ("binary", "multiclass", "multilabel")
SPLITS: tuple[str, ...] = ("train", "val", "test")


class ImageSource(Protocol):
    """Where the pixels of row ``i`` come from."""

    def __len__(self) -> int: ...

    def load(self, i: int, min_side: int | None = None):  # -> PIL.Image.Image
        """Decode row ``i`` as 8-bit grayscale; raise :class:`BadImageError` naming the file and row.

        ``min_side`` allows a reduced-scale decode whose shorter side stays >= ``min_side``.
        """

    def describe(self, i: int) -> str:
        """A human-readable location of row ``i`` (a path, or ``file.npz[key][index]``)."""

    def fingerprint(self) -> str:
        """A digest of the source's contents, cheap to compute for large datasets."""


@dataclass(frozen=True)
class FileImageSource:
    """Images stored as files; ``paths`` are absolute."""

    paths: tuple[str, ...]
    root: str
    dicom_frame: int | None = None  # the frame to read from multi-frame DICOM files

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int, min_side: int | None = None):
        from .images import open_image

        return open_image(self.paths[i], what=f"row {i}", min_side=min_side, dicom_frame=self.dicom_frame)

    def describe(self, i: int) -> str:
        return self.paths[i]

    def fingerprint(self) -> str:
        # Relative path and size of every file: content hashes of 10^5 radiographs would cost
        # minutes; a replaced or truncated file still changes its size in practice.
        h = hashlib.sha256()
        for p in self.paths:
            try:
                size = os.stat(p).st_size
            except OSError:
                size = -1
            h.update(f"{os.path.relpath(p, self.root)}\0{size}\n".encode())
        return h.hexdigest()


@dataclass(frozen=True, eq=False)
class ArrayImageSource:
    """Images held as arrays (MedMNIST ``.npz``); never written out as files.

    ``arrays[k]`` is an ``(n_k, H, W)`` or ``(n_k, H, W, C)`` uint8 array; row ``i`` of the manifest
    is ``arrays[index[i, 0]][index[i, 1]]``.
    """

    path: str
    keys: tuple[str, ...]
    arrays: tuple[np.ndarray, ...]
    index: np.ndarray
    digest: str

    def __len__(self) -> int:
        return len(self.index)

    def load(self, i: int, min_side: int | None = None):
        from PIL import Image

        from .images import to_gray8

        k, j = self.index[i]
        a = self.arrays[k][j]
        if not np.all(np.isfinite(a)):
            raise BadImageError(f"image {self.describe(i)} (row {i}) holds NaN or inf values")
        if a.dtype != np.uint8:
            a = _to_uint8(a)
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        return to_gray8(Image.fromarray(np.ascontiguousarray(a)))

    def describe(self, i: int) -> str:
        k, j = self.index[i]
        return f"{self.path}[{self.keys[k]}][{j}]"

    def fingerprint(self) -> str:
        return self.digest


def _to_uint8(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


@dataclass(frozen=True, eq=False)
class Manifest:
    """Every image of a dataset with its id, labels, split and patient."""

    ids: np.ndarray  # (N,) str
    source: ImageSource
    labels: np.ndarray  # (N, L) float32, NaN = missing
    label_kind: LabelKind
    label_names: tuple[str, ...]
    splits: np.ndarray  # (N,) str, one of SPLITS
    patient_ids: np.ndarray | None = None  # (N,) str
    split_origin: str = "data"  # "data", "data, val carved from train (seed=..)" or "generated (seed=..)"
    format: str = ""
    root: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.source) != n or len(self.labels) != n or len(self.splits) != n:
            raise DataFormatError(
                f"manifest lengths disagree: {n} ids, {len(self.source)} images, "
                f"{len(self.labels)} labels, {len(self.splits)} splits"
            )
        if self.label_kind not in LABEL_KINDS:
            raise DataFormatError(f"label kind {self.label_kind!r} is not one of {', '.join(LABEL_KINDS)}")
        bad = sorted(set(np.unique(self.splits).tolist()) - set(SPLITS))
        if bad:
            raise DataFormatError(f"unknown split names {bad}; valid: {', '.join(SPLITS)}")
        uniq, counts = np.unique(self.ids, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1][:5].tolist()
            raise DataFormatError(f"duplicate image ids in the dataset: {dup}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_classes(self) -> int:
        """Number of classes (binary, multiclass) or of labels (multilabel)."""
        return len(self.label_names)

    def fingerprint(self) -> str:
        """sha256 of everything that defines the dataset: images, ids, labels, splits, patients."""
        h = hashlib.sha256()
        h.update(f"{self.format}|{self.label_kind}|{'|'.join(self.label_names)}\n".encode())
        h.update(_str_digest(self.ids))
        h.update(np.ascontiguousarray(self.labels, dtype=np.float32).tobytes())
        h.update(_str_digest(self.splits))
        if self.patient_ids is not None:
            h.update(_str_digest(self.patient_ids))
        h.update(self.source.fingerprint().encode())
        return h.hexdigest()

    def summary(self) -> dict:
        """Counts per split (images, patients, positives per label) for reports and logs."""
        out: dict = {"images": len(self), "label_kind": self.label_kind, "splits": {}}
        for s in SPLITS:
            m = self.splits == s
            entry = {"images": int(m.sum())}
            if self.patient_ids is not None:
                entry["patients"] = len(np.unique(self.patient_ids[m]))
            lab = self.labels[m]
            if self.label_kind == "multiclass" or self.label_kind == "binary":
                entry["per_class"] = {name: int((lab[:, 0] == k).sum()) for k, name in enumerate(self.label_names)}
            else:
                entry["positives"] = {name: int(np.nansum(lab[:, j])) for j, name in enumerate(self.label_names)}
            out["splits"][s] = entry
        return out


def sklearn_labels(labels: np.ndarray, label_kind: str) -> np.ndarray:
    """The label matrix ``(N, L)`` (float, NaN = missing) as scikit-learn's targets: binary and
    multi-class ``(N,)`` int64 class indices (into ``label_names``), multi-label ``(N, L)`` float32
    of 0/1 with NaN where a label is missing (mask those rows per label before fitting).

    >>> sklearn_labels(np.array([[0.0], [1.0]]), "binary")
    array([0, 1])
    """
    labels = np.asarray(labels, dtype=np.float32)
    if label_kind == "multilabel":
        return labels.reshape(len(labels), -1)
    column = labels.reshape(len(labels), -1)[:, 0]
    if np.isnan(column).any():  # not written by tlmic's readers; keep the gaps rather than invent classes
        return column
    return column.astype(np.int64)


def _str_digest(values: Sequence[str] | np.ndarray) -> bytes:
    return hashlib.sha256("\0".join(map(str, values)).encode()).digest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Streamed sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
