"""The probes keep scikit-learn's estimator contract: every check of ``parametrize_with_checks``."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from tlmic_feats.probes.estimators import LightGBMProbe, LogisticProbe, load_probe


@parametrize_with_checks([LogisticProbe(), LightGBMProbe()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_string_labels_round_trip_through_save_and_load(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = np.array(["effusion", "normal", "edema"])[(X[:, 0] > 0.5).astype(int) + (X[:, 1] > 0)]
    for est in (LogisticProbe(Cs=(0.1, 1.0)), LightGBMProbe(n_estimators=20)):
        est.fit(X, y)
        assert est.classes_.tolist() == ["edema", "effusion", "normal"]
        # well above the majority class's 0.47 (the logistic probe's CV picks C=0.1 here: 0.79)
        assert set(est.predict(X)) <= set(y) and (est.predict(X) == y).mean() > 0.75
        loaded = load_probe(est.save(tmp_path / type(est).__name__))
        np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
        np.testing.assert_allclose(loaded.predict_proba(X), est.predict_proba(X), atol=1e-6)


def test_multilabel_with_missing_labels_still_fits_and_checks_its_inputs():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 5))
    y = np.stack([X[:, 0] > 0, X[:, 1] > 0], 1).astype(float)
    y[rng.random(y.shape) < 0.2] = np.nan
    for est in (LogisticProbe(Cs=(0.1, 1.0)), LightGBMProbe(n_estimators=20)):
        p = est.fit(X, y).predict_proba(X)
        assert p.shape == (150, 2) and est.kind_ == "multilabel" and len(est.n_iter_) == 2
        with pytest.raises(ValueError, match="0, 1 or NaN"):
            est.fit(X, np.where(np.isnan(y), 2.0, y))
        with pytest.raises(ValueError, match="features"):
            est.predict_proba(X[:, :3])
