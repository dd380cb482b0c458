"""Seeded, stratified, patient-grouped train/val/test splits.

When a dataset carries no split (or only part of one), tlmic makes it here. Stratification keeps
each split's prevalence close to the whole's; grouping keeps every image of a patient in one split,
since images of one patient in both train and test inflate every metric.
"""

from __future__ import annotations

import numpy as np

from ..runtime.errors import DataFormatError

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def stratify_key(labels: np.ndarray, label_kind: str) -> np.ndarray:
    """One integer per row to stratify on.

    Binary and multi-class: the class. Multi-label: the row's rarest positive label (or -1 for a
    row with none), a cheap stand-in for iterative stratification that protects rare findings.
    """
    if label_kind in ("binary", "multiclass"):
        return labels[:, 0].astype(np.int64)
    pos = np.nan_to_num(labels, nan=0.0) > 0.5
    prevalence = pos.sum(axis=0)
    order = np.argsort(prevalence, kind="stable")  # rarest first
    key = np.full(len(labels), -1, dtype=np.int64)
    for j in order[::-1]:  # later (rarer) labels overwrite
        key[pos[:, j]] = j
    return key


def _split_off(
    idx: np.ndarray,
    key: np.ndarray,
    groups: np.ndarray | None,
    fraction: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (rest, held) with ``held`` ~ ``fraction`` of the rows, stratified by
    ``key`` and never splitting a group.

    Groups are dealt to the held side in a random order, per stratum of the group's rarest key,
    until each stratum's quota is met: exact for ungrouped data, close for grouped data.
    """
    if groups is None:
        units = idx.reshape(-1, 1).tolist()
        unit_keys = key[idx]
    else:
        g = groups[idx]
        uniq, inv = np.unique(g, return_inverse=True)
        units = [[] for _ in uniq]
        for row, u in zip(idx.tolist(), inv.tolist(), strict=True):
            units[u].append(row)
        # A group is stratified by its rarest key (e.g. a patient with any positive image counts
        # as positive), so rare findings are spread across splits rather than lost in majorities.
        values, counts = np.unique(key[idx], return_counts=True)
        freq = dict(zip(values.tolist(), counts.tolist(), strict=True))
        freq[-1] = len(idx) + 1  # "no positive label" is never the rarest
        unit_keys = np.array([min(set(key[u].tolist()), key=freq.__getitem__) for u in units])
    held: list[int] = []
    carry = 0.0  # what earlier strata could not take (groups are indivisible) passes on
    for k in np.unique(unit_keys):
        members = np.flatnonzero(unit_keys == k)
        rng.shuffle(members)
        total = sum(len(units[m]) for m in members)
        quota = fraction * total + carry
        taken = 0
        for m in members:
            if taken >= quota - 0.5 * len(units[m]):
                break
            held.extend(units[m])
            taken += len(units[m])
        carry = quota - taken
    held_arr = np.array(sorted(held), dtype=np.int64)
    rest = np.setdiff1d(idx, held_arr)
    return rest, held_arr


def make_splits(
    labels: np.ndarray,
    label_kind: str,
    *,
    patient_ids: np.ndarray | None = None,
    existing: np.ndarray | None = None,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> np.ndarray:
    """Return an ``(N,)`` array of ``"train"``/``"val"``/``"test"``.

    ``existing`` may hold a partial split from the data (``""`` where unknown): rows the data
    assigns keep their split; if the data has train (and test) but no val, val is carved out of
    train; if it has no split at all, all three are made. Always seeded by ``seed``.
    """
    n = len(labels)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataFormatError(f"split fractions {fractions} must be three non-negative numbers summing to 1")
    rng = np.random.default_rng(seed)
    key = stratify_key(labels, label_kind)
    out = np.array([""] * n, dtype=object) if existing is None else existing.astype(object).copy()
    present = {s for s in np.unique(out).tolist() if s}

    if not present:
        idx = np.arange(n)
        rest, test = _split_off(idx, key, patient_ids, fractions[2], rng)
        train, val = _split_off(rest, key, patient_ids, fractions[1] / (1 - fractions[2]), rng)
        out[train], out[val], out[test] = "train", "val", "test"
    else:
        unassigned = np.flatnonzero(out == "")
        if len(unassigned):
            raise DataFormatError(
                f"{len(unassigned)} rows have no split while others do (e.g. row {unassigned[0]}); "
                "give every row a split or none"
            )
        if "train" not in present:
            raise DataFormatError(f"the data's split has no 'train' rows (found: {sorted(present)})")
        if "val" not in present:
            train = np.flatnonzero(out == "train")
            val_frac = fractions[1] / (fractions[0] + fractions[1])
            _, val = _split_off(train, key, patient_ids, val_frac, rng)
            out[val] = "val"
    return out.astype(str)


def patients_straddling(splits: np.ndarray, patient_ids: np.ndarray | None) -> list[str]:
    """Patient ids that occur in more than one split (empty when ids are unknown)."""
    if patient_ids is None:
        return []
    seen: dict[str, str] = {}
    bad: set[str] = set()
    for p, s in zip(patient_ids.tolist(), splits.tolist(), strict=True):
        if seen.setdefault(p, s) != s:
            bad.add(p)
    return sorted(bad)
