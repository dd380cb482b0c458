"""Predictions files, the same for both arms: ids, split, labels and scores of the validation and
test images, from which every metric can be recomputed."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..runtime.files import atomic_path


def write_predictions(
    path: str | Path,
    *,
    ids: np.ndarray,
    labels: np.ndarray,
    rows: dict[str, np.ndarray],
    scores: dict[str, np.ndarray],
    label_kind: str,
    label_names,
) -> None:
    """One CSV per fitted model, so anyone can recompute a metric: ``id, split``, the label(s)
    (empty where missing) and the score(s), for each split in ``rows`` (e.g. val then test).
    Written under a temporary name and renamed."""
    names = list(label_names)
    if label_kind == "binary":
        heads = ["y", "score"]
    elif label_kind == "multiclass":
        heads = ["y", *[f"score_{n}" for n in names]]
    else:
        heads = [*[f"y_{n}" for n in names], *[f"score_{n}" for n in names]]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "split", *heads])
        for split, split_rows in rows.items():
            s = np.asarray(scores[split]).reshape(len(split_rows), -1)
            for k, r in enumerate(split_rows):
                lab = ["" if np.isnan(v) else int(v) for v in labels[r].tolist()]
                w.writerow([ids[r], split, *lab, *[repr(float(v)) for v in s[k]]])


def read_predictions(path: str | Path, label_kind: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{split: (ids, labels (n, L), scores)}`` from a file :func:`write_predictions` wrote; scores are
    ``(n,)`` for binary, ``(n, K)`` multi-class, ``(n, L)`` multi-label."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        head = next(reader)
        rows = list(reader)
    ys = [i for i, h in enumerate(head) if h == "y" or h.startswith("y_")]
    ss = [i for i, h in enumerate(head) if h == "score" or h.startswith("score_")]
    out = {}
    for split in dict.fromkeys(r[1] for r in rows):
        part = [r for r in rows if r[1] == split]
        ids = np.array([r[0] for r in part])
        y = np.array([[float(r[i]) if r[i] != "" else np.nan for i in ys] for r in part], dtype=float)
        s = np.array([[float(r[i]) for i in ss] for r in part], dtype=float)
        out[split] = (ids, y, s[:, 0] if label_kind == "binary" else s)
    return out


def predictions_kind(path: str | Path) -> str:
    """The label kind of a predictions file, from its header: ``binary`` (``y, score``), ``multiclass``
    (``y, score_<class>...``) or ``multilabel`` (``y_<label>..., score_<label>...``)."""
    from ..runtime.errors import DataFormatError

    try:
        with open(path, newline="") as f:
            head = next(csv.reader(f), [])
    except OSError as e:
        raise DataFormatError(f"cannot read predictions file {path}: {e.strerror or e}") from None
    if head[:2] != ["id", "split"]:
        raise DataFormatError(
            f"{path} is not a tlmic predictions file (its header starts {head[:3]}; expected id, split)"
        )
    if "y" in head:
        return "binary" if "score" in head else "multiclass"
    if any(h.startswith("y_") for h in head):
        return "multilabel"
    raise DataFormatError(f"{path}: no label column (y or y_<label>) in its header")
