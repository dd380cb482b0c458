"""Feature stores with a known answer, for tests."""

from __future__ import annotations

import numpy as np

from tlmic_feats.features.store import FeatureStore

SPLITS = np.array(["train"] * 300 + ["val"] * 100 + ["test"] * 100)
"""The split of each row of a :func:`planted_store`."""


def planted_store(path, *, signal_layer="2", n_layers=4, width=12, seed=0, kind="binary"):
    """A feature store of ``n_layers`` layers (named "1", "2", ...) of ``width`` columns of pure noise,
    except ``signal_layer``, whose first column carries the label: a probe grid must pick that layer.

    500 rows in the splits of :data:`SPLITS` (300 train, 100 val, 100 test), two rows per patient.
    ``kind="binary"``: about 30% positives; ``kind="multilabel"``: labels ``a`` (the one the signal
    carries) and ``b``, which has no positive in test, and about 5% of the labels missing (NaN).
    Returns the :class:`~tlmic_feats.features.store.FeatureStore` written at ``path``.
    """
    rng = np.random.default_rng(seed)
    n = len(SPLITS)
    if kind == "binary":
        y = (rng.random(n) < 0.3).astype(float)
        names = ["neg", "pos"]
    else:  # multilabel: label 'b' has no positives in test
        y = (rng.random((n, 2)) < [0.3, 0.4]).astype(float)
        y[SPLITS == "test", 1] = 0
        y[rng.random((n, 2)) < 0.05] = np.nan
        names = ["a", "b"]
    feats = {}
    for k in range(1, n_layers + 1):
        x = rng.normal(size=(n, width)).astype(np.float32)
        if str(k) == signal_layer:
            target = np.nan_to_num(y if y.ndim == 1 else y[:, 0])
            x[:, 0] += 3.0 * target
        feats[str(k)] = x
    return FeatureStore.from_arrays(
        path,
        feats,
        labels=y,
        label_kind=kind,
        label_names=names,
        splits=SPLITS,
        patient_ids=np.array([f"p{i // 2}" for i in range(n)]),
    )
