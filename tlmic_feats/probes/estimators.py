"""Probes: scikit-learn estimators trained on stored features of one cut point.

* :class:`LogisticProbe` -- standardize, then class-balanced logistic regression; C is chosen on
  a validation set from a log grid, walking the path from strong to weak regularization with warm
  starts.
* :class:`LightGBMProbe` -- gradient-boosted trees with early stopping on a validation set,
  class-balanced, col-wise histograms for wide dense features.

Both keep scikit-learn's estimator contract (``__init__`` stores parameters, ``fit`` returns
``self``, learned state ends in ``_``; inputs checked by ``validate_data``; every check of
``sklearn.utils.estimator_checks`` passes, tested), so ``clone``, pipelines and ``cross_validate``
work. The validation set is passed as ``fit(X, y, eval_set=(X_val, y_val))``; without it, a
stratified 20% of the training rows is held out for the choice.

Targets: class labels ``(n,)`` of any type (numbers or strings; ``classes_`` keeps them, sorted):
binary, or multi-class (multinomial LR, LightGBM multiclass); multi-label ``(n, L)`` 0/1 with NaN
for missing -- one binary probe per label, each trained on the rows where its label is known.
``predict_proba`` returns ``(n, 2)`` (binary), ``(n, K)`` (multi-class) or ``(n, L)``
positive-class probabilities (multi-label). ``n_iter_``: lbfgs iterations of the warm-started path
up to the chosen C (LR), boosting rounds kept (LightGBM).

Fitted probes are saved without pickle (:meth:`save` / :func:`load_probe`): LR coefficients,
intercepts and scaler statistics as ``.npz`` arrays; LightGBM models as LightGBM's own text format.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import assert_all_finite
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    check_array,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from ..runtime.files import write_json

PROBE_FORMAT = 1


def _holdout(X, y, random_state, frac=0.2):
    from sklearn.model_selection import train_test_split

    strat = y if y.ndim == 1 and np.bincount(y.astype(int)).min() >= 2 else None
    Xa, Xb, ya, yb = train_test_split(X, y, test_size=frac, random_state=random_state, stratify=strat)
    return Xa, ya, Xb, yb


def validation_score(y: np.ndarray, p: np.ndarray) -> float:
    """Selection criterion: average precision (macro one-vs-rest for multi-class)."""
    from sklearn.metrics import average_precision_score

    if p.ndim == 1 or p.shape[1] == 2:
        s = p if p.ndim == 1 else p[:, 1]
        return float(average_precision_score(y, s)) if len(np.unique(y)) == 2 else float("nan")
    vals = [average_precision_score(y == c, p[:, c]) for c in range(p.shape[1]) if 0 < (y == c).sum() < len(y)]
    return float(np.mean(vals)) if vals else float("nan")


def _column_stats(X: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and standard deviation (float64), in row blocks: no full-size temporaries."""
    mean = np.zeros(X.shape[1])
    for i in range(0, len(X), block):
        mean += X[i : i + block].sum(0, dtype=np.float64)
    mean /= len(X)
    var = np.zeros(X.shape[1])
    for i in range(0, len(X), block):
        d = X[i : i + block] - mean
        var += np.einsum("ij,ij->j", d, d)
    scale = np.sqrt(var / len(X))
    scale[scale == 0] = 1.0
    return mean, scale


class _ProbeBase(ClassifierMixin, BaseEstimator):
    """Shared input validation (scikit-learn's contract), multi-label handling, prediction and
    persistence."""

    def fit(self, X, y, eval_set=None):
        """Fit on ``X`` (n, features) and ``y``: class labels ``(n,)`` of any type (strings too), or a
        multi-label ``(n, L)`` 0/1 matrix with NaN where a label is missing. ``eval_set=(X_val, y_val)``
        is the validation data for the hyper-parameter choice (else a stratified 20% holdout)."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        X = validate_data(self, X, dtype=np.float32)  # 2-D, dense, finite, real; sets n_features_in_
        y = np.asarray(y)
        check_consistent_length(X, y)
        Xv, yv = self._validation_arrays(eval_set)
        if y.ndim == 2 and y.shape[1] > 1:
            return self._fit_multilabel(X, y, Xv, yv)
        y = column_or_1d(y, warn=True)
        if y.dtype.kind in "fc":
            assert_all_finite(y, input_name="y")  # before the label-type check, which casts NaN and inf
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        if len(encoder.classes_) < 2:
            raise ValueError(f"training labels hold one class only ({encoder.classes_.tolist()}); need 2 or more")
        self.classes_ = encoder.classes_
        self.kind_ = "binary" if len(self.classes_) == 2 else "multiclass"
        ev = None
        if Xv is not None:
            yv = column_or_1d(yv)
            known = np.isin(yv, self.classes_)  # a class absent from training cannot be scored
            ev = (Xv[known], encoder.transform(yv[known]))
        self._fit_single(X, encoder.transform(y), ev)
        return self

    def _validation_arrays(self, eval_set):
        if eval_set is None:
            return None, None
        Xv, yv = eval_set
        Xv = check_array(Xv, dtype=np.float32, input_name="eval_set X")
        if Xv.shape[1] != self.n_features_in_:
            raise ValueError(f"eval_set X has {Xv.shape[1]} features; X has {self.n_features_in_}")
        yv = np.asarray(yv)
        check_consistent_length(Xv, yv)
        return Xv, yv

    def _fit_multilabel(self, X, y, Xv, yv):
        """One binary probe per label, each on the rows where its label is known (NaN = missing)."""
        y = np.asarray(y, dtype=np.float64)
        known = ~np.isnan(y)
        if (known & (y != 0) & (y != 1)).any():
            raise ValueError("multi-label targets must be 0, 1 or NaN (missing)")
        if Xv is not None:
            yv = np.asarray(yv, dtype=np.float64)
            if yv.ndim != 2 or yv.shape[1] != y.shape[1]:
                raise ValueError(f"eval_set y has shape {yv.shape}; expected (n, {y.shape[1]}) like y")
        self.kind_ = "multilabel"
        self.classes_ = np.arange(y.shape[1])
        self.estimators_ = []
        for j in range(y.shape[1]):
            m = known[:, j]
            if len(np.unique(y[m, j])) < 2:
                self.estimators_.append(None)  # no negatives or no positives to learn from
                continue
            sub = type(self)(**self.get_params())
            sub.classes_, sub.kind_, sub.n_features_in_ = np.array([0, 1]), "binary", self.n_features_in_
            ev = None
            if Xv is not None:
                mv = ~np.isnan(yv[:, j])
                ev = (Xv[mv], yv[mv, j].astype(int))
            self.estimators_.append(sub._fit_single(X[m], y[m, j].astype(int), ev))
        self.n_iter_ = np.array([0 if e is None else e.n_iter_ for e in self.estimators_])
        return self

    def _prepare_single(self, X, y, eval_set):
        """Validation data for a single-target fit on encoded labels ``0..K-1``: the given one, or
        a stratified holdout of the training rows."""
        if eval_set is None:
            X, y, Xv, yv = _holdout(X, y, self.random_state)
        else:
            Xv, yv = eval_set
        return X, y, Xv, yv

    def predict_proba(self, X) -> np.ndarray:
        """``(n, K)`` class probabilities in the order of ``classes_``; multi-label: ``(n, L)``
        positive-class probabilities (NaN for a label that had one class in training)."""
        check_is_fitted(self, "classes_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        if self.kind_ == "multilabel":
            cols = [np.full(len(X), np.nan) if e is None else e._proba_single(X)[:, 1] for e in self.estimators_]
            return np.stack(cols, axis=1)
        return self._proba_single(X)

    def predict(self, X) -> np.ndarray:
        p = self.predict_proba(X)
        if self.kind_ == "multilabel":
            return (p >= 0.5).astype(int)
        return self.classes_[p.argmax(1)]

    # persistence: subclasses write their arrays / text; the common header is JSON
    def save(self, path: str | Path) -> Path:
        """Write the fitted probe to ``path`` (a directory), without pickle."""
        check_is_fitted(self, "classes_")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        singles = self.estimators_ if self.kind_ == "multilabel" else [self]
        header = {
            "format": PROBE_FORMAT,
            "class": type(self).__name__,
            "params": self.get_params(),
            "kind": self.kind_,
            "classes": self.classes_.tolist(),
            "n_features_in": int(self.n_features_in_),
            "fitted": [e is not None for e in singles],
            "extra": {k: v for k, v in self._extra_state().items()},
        }
        for j, e in enumerate(singles):
            if e is not None:
                e._save_single(path, j)
        write_json(path / "probe.json", header, default=_json_default)
        return path

    def _extra_state(self) -> dict:
        return {}


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


class LogisticProbe(_ProbeBase):
    """Standardize, then ``LogisticRegression(class_weight="balanced")`` with C chosen on validation.

    Parameters
    ----------
    Cs : C values tried, from strong to weak regularization (warm-started along the path).
    max_iter : iterations per C.
    path_patience : stop the path after this many Cs in a row without a better validation score.
    random_state : seed of the internal holdout (used only without ``eval_set``).
    """

    def __init__(self, Cs=tuple(np.logspace(-4, 2, 13).tolist()), max_iter=200, path_patience=3, random_state=None):
        self.Cs = Cs
        self.max_iter = max_iter
        self.path_patience = path_patience
        self.random_state = random_state

    def _fit_single(self, X, y, eval_set):
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        X, y, Xv, yv = self._prepare_single(X, y, eval_set)
        mean, scale = _column_stats(X)
        # float32 standardized copies: lbfgs keeps float32, halving the largest working arrays.
        m32, s32 = mean.astype(np.float32), scale.astype(np.float32)
        Z = np.subtract(X, m32, dtype=np.float32)
        Z /= s32
        Zv = np.subtract(Xv, m32, dtype=np.float32)
        Zv /= s32
        lr = LogisticRegression(class_weight="balanced", warm_start=True, max_iter=self.max_iter)
        best = (-np.inf, None, None, None, 0)
        self.path_ = []
        worse = iterations = 0
        for C in sorted(self.Cs):
            if worse >= self.path_patience:
                break  # validation score has fallen for several Cs in a row: weaker ones won't win
            lr.set_params(C=C)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # warm path: later Cs refine
                lr.fit(Z, y)
            iterations += int(np.max(lr.n_iter_))
            score = validation_score(yv, lr.predict_proba(Zv)) if len(np.unique(yv)) >= 2 else np.nan
            self.path_.append((float(C), float(score)))
            if (np.isfinite(score) and score > best[0] + 1e-12) or best[1] is None:
                best = (score, C, lr.coef_.copy(), lr.intercept_.copy(), iterations)
                worse = 0
            else:
                worse += 1
        # n_iter_: the lbfgs iterations that led to the chosen coefficients (the warm path up to C_)
        _, self.C_, self.coef_, self.intercept_, self.n_iter_ = best
        self.scaler_mean_, self.scaler_scale_ = mean, scale
        return self

    def decision_function(self, X) -> np.ndarray:
        """Log-odds: ``(n,)`` binary, ``(n, K)`` multi-class, ``(n, L)`` multi-label (NaN for an unfitted
        label)."""
        check_is_fitted(self, "classes_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        if self.kind_ == "multilabel":
            return np.stack([np.full(len(X), np.nan) if e is None else e._decision(X) for e in self.estimators_], 1)
        return self._decision(X)

    def _decision(self, X) -> np.ndarray:
        z = (np.asarray(X, dtype=np.float64) - self.scaler_mean_) / self.scaler_scale_
        d = z @ self.coef_.T + self.intercept_
        return d[:, 0] if d.shape[1] == 1 else d

    def _proba_single(self, X):
        d = self._decision(X)
        if d.ndim == 1:
            p1 = 1.0 / (1.0 + np.exp(-d))
            return np.stack([1 - p1, p1], axis=1)
        d = d - d.max(1, keepdims=True)
        e = np.exp(d)
        return e / e.sum(1, keepdims=True)

    def _save_single(self, path: Path, j: int):
        np.savez(
            path / f"logreg_{j}.npz",
            coef=self.coef_,
            intercept=self.intercept_,
            mean=self.scaler_mean_,
            scale=self.scaler_scale_,
            classes=np.asarray(self.classes_.tolist()),  # strings as a str array: loads without pickle
            C=np.array(self.C_),
            n_iter=np.array(self.n_iter_),
        )

    @classmethod
    def _load_single(cls, path: Path, j: int, params: dict):
        z = np.load(path / f"logreg_{j}.npz", allow_pickle=False)
        e = cls(**params)
        e.coef_, e.intercept_ = z["coef"], z["intercept"]
        e.scaler_mean_, e.scaler_scale_ = z["mean"], z["scale"]
        e.classes_, e.C_ = z["classes"], float(z["C"])
        if "n_iter" in z.files:  # probes saved before n_iter_ was recorded lack it
            e.n_iter_ = int(z["n_iter"])
        e.kind_ = "binary" if len(e.classes_) == 2 else "multiclass"
        e.n_features_in_ = e.coef_.shape[1]
        return e


class LightGBMProbe(_ProbeBase):
    """``LGBMClassifier`` with early stopping on validation, class-balanced, col-wise histograms.

    Parameters suit a few hundred to a few hundred thousand rows of 10^2-10^4 dense columns;
    ``min_child_samples`` shrinks for tiny training sets so that trees can split at all.
    """

    def __init__(
        self,
        n_estimators=300,
        learning_rate=0.1,
        num_leaves=15,
        colsample_bytree=0.3,
        max_bin=63,
        early_stopping_rounds=20,
        n_jobs=1,
        random_state=None,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.colsample_bytree = colsample_bytree
        self.max_bin = max_bin
        self.early_stopping_rounds = early_stopping_rounds
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _fit_single(self, X, y, eval_set):
        import inspect

        import lightgbm as lgb

        X, y, Xv, yv = self._prepare_single(X, y, eval_set)
        model = lgb.LGBMClassifier(**self.lightgbm_params(len(y)), n_jobs=self.n_jobs)
        callbacks = []
        fit_kw = {}
        if len(np.unique(yv)) >= 2 and set(np.unique(yv)) <= set(np.unique(y)):
            callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
            # LightGBM >= 4.6 names the validation data eval_X/eval_y and deprecates eval_set.
            if "eval_X" in inspect.signature(model.fit).parameters:
                fit_kw = {"eval_X": (Xv,), "eval_y": (yv,)}
            else:
                fit_kw = {"eval_set": [(Xv, yv)]}
        model.fit(X, y, callbacks=callbacks, **fit_kw)
        self.booster_ = model.booster_
        self.best_iteration_ = int(model.best_iteration_ or model.n_estimators)
        self.n_iter_ = self.best_iteration_  # boosting rounds kept (early stopping on validation)
        return self

    def lightgbm_params(self, n_rows: int) -> dict:
        """LightGBM's parameters for ``n_rows`` training rows (shared with the distributed fit)."""
        return dict(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            colsample_bytree=self.colsample_bytree,
            max_bin=self.max_bin,
            min_child_samples=int(max(2, min(20, n_rows // 20))),
            min_data_in_bin=1,
            class_weight="balanced",
            force_col_wise=True,
            random_state=0 if self.random_state is None else int(self.random_state),
            verbose=-1,
        )

    def _proba_single(self, X):
        p = self.booster_.predict(X, num_iteration=self.best_iteration_, num_threads=self.n_jobs)
        return np.stack([1 - p, p], axis=1) if p.ndim == 1 else p

    def _save_single(self, path: Path, j: int):
        self.booster_.save_model(str(path / f"lightgbm_{j}.txt"), num_iteration=self.best_iteration_)
        (path / f"lightgbm_{j}.json").write_text(json.dumps({"classes": self.classes_.tolist()}))

    @classmethod
    def _load_single(cls, path: Path, j: int, params: dict):
        import lightgbm as lgb

        e = cls(**params)
        e.booster_ = lgb.Booster(model_file=str(path / f"lightgbm_{j}.txt"))
        e.best_iteration_ = e.n_iter_ = e.booster_.current_iteration()
        e.classes_ = np.array(json.loads((path / f"lightgbm_{j}.json").read_text())["classes"])
        e.kind_ = "binary" if len(e.classes_) == 2 else "multiclass"
        e.n_features_in_ = e.booster_.num_feature()
        return e


PROBES = {"logreg": LogisticProbe, "lightgbm": LightGBMProbe}


def load_probe(path: str | Path) -> _ProbeBase:
    """Load a probe written by :meth:`save` (no pickle involved)."""
    path = Path(path)
    header = json.loads((path / "probe.json").read_text())
    cls = {c.__name__: c for c in PROBES.values()}[header["class"]]
    params = header["params"]
    if "Cs" in params:
        params["Cs"] = tuple(params["Cs"])
    if header["kind"] == "multilabel":
        probe = cls(**params)
        probe.kind_ = "multilabel"
        probe.classes_ = np.array(header["classes"])
        probe.n_features_in_ = header["n_features_in"]
        probe.estimators_ = [cls._load_single(path, j, params) if ok else None for j, ok in enumerate(header["fitted"])]
        probe.n_iter_ = np.array([getattr(e, "n_iter_", 0) if e is not None else 0 for e in probe.estimators_])
        return probe
    return cls._load_single(path, 0, params)
