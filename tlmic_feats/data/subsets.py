"""Nested, seeded, stratified, patient-grouped training subsets (the data-poor regime).

For a seed, every training unit (an image, or a patient's images when patient ids are known) gets
a random position within its stratum. The subset of fraction ``f`` takes, per stratum, the first
units until ``f`` of the stratum's images are in. Subsets are therefore nested (the 5% subset of a
seed lies inside its 10% subset), keep the class balance, and never split a patient. Validation and
test are never subsampled. Both arms (probes and finetuning) draw their subsets here.
"""

from __future__ import annotations

import numpy as np

from .splits import stratify_key


def nested_subsets(
    train_rows: np.ndarray,
    labels: np.ndarray,
    label_kind: str,
    fractions: list[float] | tuple[float, ...],
    *,
    seed: int,
    patient_ids: np.ndarray | None = None,
) -> dict[float, np.ndarray]:
    """``{fraction: sorted row indices}`` for the training rows ``train_rows``."""
    rng = np.random.default_rng([seed, 0x5EB5E7])
    key = stratify_key(labels[train_rows], label_kind)
    if patient_ids is not None:
        groups = patient_ids[train_rows]
        uniq, inv = np.unique(groups, return_inverse=True)
        members = [[] for _ in uniq]
        for pos, g in enumerate(inv.tolist()):
            members[g].append(pos)
        # a patient's stratum: its rarest key, as in the split
        values, counts = np.unique(key, return_counts=True)
        freq = dict(zip(values.tolist(), counts.tolist(), strict=True))
        freq[-1] = len(key) + 1
        unit_key = np.array([min(set(key[m].tolist()), key=freq.__getitem__) for m in members])
    else:
        members = [[i] for i in range(len(train_rows))]
        unit_key = key
    order: dict[int, list[int]] = {}
    for k in np.unique(unit_key):
        units = np.flatnonzero(unit_key == k)
        order[int(k)] = rng.permutation(units).tolist()
    out = {}
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"fraction {f} is not in (0, 1]")
        chosen: list[int] = []
        for units in order.values():
            total = sum(len(members[u]) for u in units)
            quota = max(1, int(round(f * total)))
            taken = 0
            for u in units:
                if taken >= quota:
                    break
                chosen.extend(members[u])
                taken += len(members[u])
        out[float(f)] = np.sort(train_rows[np.array(chosen, dtype=np.int64)])
    return out
