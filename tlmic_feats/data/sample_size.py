"""Small samples, said out loud: how many images of each class a training fraction leaves, and how
many positives validation and test hold.

A fraction of a small dataset can leave two training images (``--fraction 0.01`` of 200); seven
validation images make several cut points tie at validation AUPRC 1.000; a bootstrap CI over a
handful of test positives can be ``[1.000, 1.000]``. None of these is an error, and every one of
them deserves a sentence wherever the numbers are shown. The training subsets counted are the ones
the probes and the finetuning runs draw (:func:`~tlmic_feats.data.subsets.nested_subsets`).

Positives: per class for binary and multi-class labels (a binary task's rarer class is the one
that limits it, so both classes are counted), per label for multi-label ones.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

MIN_TRAIN_PER_CLASS = 10  # fewer training images of a class than this: a warning
MIN_EVAL_POSITIVES = 20  # fewer positives of a class (label) in validation or test than this: a warning


def class_counts(manifest, rows: np.ndarray) -> dict[str, int]:
    """Images of each class (binary, multi-class) or positives of each label (multi-label) among
    ``rows``; missing multi-label values count for neither."""
    labels = manifest.labels[rows]
    if manifest.label_kind == "multilabel":
        return {name: int(np.nansum(labels[:, j] == 1)) for j, name in enumerate(manifest.label_names)}
    return {name: int((labels[:, 0] == k).sum()) for k, name in enumerate(manifest.label_names)}


def small_sample_warnings(
    manifest,
    fractions: Iterable[float] = (1.0,),
    seeds: Iterable[int] = (0,),
    *,
    min_train: int = MIN_TRAIN_PER_CLASS,
    min_positives: int = MIN_EVAL_POSITIVES,
) -> list[str]:
    """One sentence per problem: a training fraction (over ``seeds``: the fewest images of a class
    any seed's subset has) with fewer than ``min_train`` images of a class, validation or test
    with fewer than ``min_positives`` positives of a class (label). Empty when none.

    Examples
    --------
    >>> small_sample_warnings(manifest, [0.01])  # doctest: +SKIP
    ['small sample: fraction 0.01 trains on 2 images (normal 1, nodule 1), fewer than 10 of a class: ...']
    """
    from .subsets import nested_subsets

    fractions, seeds = [float(f) for f in fractions], list(seeds) or [0]
    what = "positives of a label" if manifest.label_kind == "multilabel" else "images of a class"
    out = []
    train = np.flatnonzero(manifest.splits == "train")
    if len(train):
        fewest: dict[float, dict[str, int]] = {}
        sizes: dict[float, int] = {}
        for seed in seeds:
            subsets = nested_subsets(
                train, manifest.labels, manifest.label_kind, fractions, seed=seed, patient_ids=manifest.patient_ids
            )
            for f in fractions:
                counts = class_counts(manifest, subsets[f])
                old = fewest.setdefault(f, counts)
                fewest[f] = {k: min(old[k], v) for k, v in counts.items()}
                sizes[f] = min(sizes.get(f, len(subsets[f])), len(subsets[f]))
        for f in fractions:
            counts = fewest[f]
            if min(counts.values()) < min_train:
                out.append(
                    f"small sample: fraction {f:g} trains on {sizes[f]} images ({_counts(counts)}), fewer than "
                    f"{min_train} {what}: training is unstable and its scores vary widely between seeds"
                )
    for split, consequence in (
        ("val", "choices made on validation (cut points, the step kept, thresholds) are noisy and ties likely"),
        ("test", "confidence intervals on test are wide, and can be degenerate (e.g. [1.000, 1.000])"),
    ):
        rows = np.flatnonzero(manifest.splits == split)
        counts = class_counts(manifest, rows)
        if len(rows) and min(counts.values()) < min_positives:
            name = "validation" if split == "val" else "test"
            out.append(
                f"small sample: {name} holds {len(rows)} images ({_counts(counts)}), fewer than {min_positives} "
                f"{what}: {consequence}"
            )
    return out


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())
