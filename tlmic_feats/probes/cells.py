"""One cell of a probe grid (layer x model x fraction x seed, on true labels or one permutation draw
of them): what the cells of a grid share, the labels a cell learns from, fitting it, scoring it and
writing its predictions, probe and finished-cell record, and its id. Every way of fitting a grid
uses these: the local grid's threads, a Dask task, distributed LightGBM."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..metrics.predictions import write_predictions
from ..metrics.scores import METRICS, bootstrap, choose_thresholds, evaluate
from ..runtime.files import write_json
from ..runtime.rundir import probe_cell_id
from .config import ProbeConfig
from .estimators import PROBES
from .permutation import permutation_rng, permute


@dataclass(frozen=True)
class GridContext:
    """What every cell of a grid shares (everything but the layer's features)."""

    labels: np.ndarray
    kind: str
    names: list[str]
    rows_of: dict[str, np.ndarray]
    ids: np.ndarray
    config: ProbeConfig
    out: Path


@dataclass(frozen=True, eq=False)
class Cell:
    """One fit on one layer: ``model`` on the training subset ``train`` (``fraction`` of the training
    split, drawn with ``seed``), on the true labels (``control="none"``) or on permutation draw
    ``permutation`` of them (``control="shuffle"``, see :mod:`~tlmic_feats.probes.permutation`)."""

    model: str
    fraction: float
    seed: int
    control: str
    train: np.ndarray
    permutation: int = -1


def cell_targets(ctx: GridContext, cell: Cell) -> tuple[np.ndarray, np.ndarray]:
    """The labels a cell learns from and is tuned on: ``(y_train, y_val)``, permuted for a control
    draw (the same permutation on every layer: one draw of the null, see
    :mod:`~tlmic_feats.probes.permutation`)."""
    y_train, y_val = ctx.labels[cell.train], ctx.labels[ctx.rows_of["val"]]
    if cell.control == "shuffle":
        # The null: permute every label the probe learns or is tuned from (train, and the
        # validation labels behind C, early stopping and the threshold); test labels stay true.
        rng = permutation_rng(cell.model, cell.fraction, cell.seed, cell.permutation)
        y_train, y_val = permute(y_train, y_val, rng)
    return y_train, y_val


def target_of(kind: str, y: np.ndarray) -> np.ndarray:
    """What a probe is fitted on: a vector for binary and multi-class, the matrix for multi-label."""
    return y if kind == "multilabel" else y[:, 0]


def fit_cell(X: np.ndarray, ctx: GridContext, cell: Cell, common: dict) -> dict:
    val, test = ctx.rows_of["val"], ctx.rows_of["test"]
    y_train, y_val = cell_targets(ctx, cell)
    probe = PROBES[cell.model](random_state=cell.seed)
    t = time.perf_counter()
    probe.fit(X[cell.train], target_of(ctx.kind, y_train), eval_set=(X[val], target_of(ctx.kind, y_val)))
    fit_seconds = time.perf_counter() - t
    return finish_cell(ctx, cell, common, probe, probe.predict_proba(X[val]), probe.predict_proba(X[test]), fit_seconds)


def finish_cell(
    ctx: GridContext, cell: Cell, common: dict, probe, p_val: np.ndarray, p_test: np.ndarray, fit_seconds: float
) -> dict:
    """Score a fitted cell on val and test, write its predictions, probe and finished-cell record;
    returns its results row. Shared by every way of fitting a cell (here, on a cluster, distributed).
    A control draw gets no bootstrap CI and no saved probe: the null is judged by its draws."""
    labels, kind, names, rows_of, config, out = ctx.labels, ctx.kind, ctx.names, ctx.rows_of, ctx.config, ctx.out
    real = cell.control == "none"
    val, test = rows_of["val"], rows_of["test"]
    y_train, y_val = cell_targets(ctx, cell)
    s_val = p_val[:, 1] if kind == "binary" else p_val
    s_test = p_test[:, 1] if kind == "binary" else p_test
    # warn=False: an undefined label is reported as NaN and n_labels; cells run in threads, where
    # warnings.catch_warnings is not safe.
    thresholds = choose_thresholds(y_val, s_val, kind)
    val_m = evaluate(y_val, s_val, kind, thresholds=thresholds, label_names=names, warn=False)
    test_m = evaluate(labels[test], s_test, kind, thresholds=thresholds, label_names=names, warn=False)
    n_resamples = config.bootstrap if real else 0
    ci = bootstrap(labels[test], s_test, kind, thresholds=thresholds, n_resamples=n_resamples, seed=cell.seed)
    run_id = cell_id(common["layer"], cell)
    pred_file = out / "predictions" / f"{run_id}.csv"
    write_predictions(
        pred_file,
        ids=ctx.ids,
        labels=labels,
        rows={"val": val, "test": test},
        scores={"val": s_val, "test": s_test},
        label_kind=kind,
        label_names=names,
    )
    if config.save_probes and real:
        probe.save(out / "probes" / run_id)
    positives = (
        np.nansum(y_train[:, 0] == 1)
        if kind == "binary"
        else int(np.nansum(y_train == 1))
        if kind == "multilabel"
        else len(np.unique(y_train))
    )
    row = {
        **common,
        "model": cell.model,
        "fraction": cell.fraction,
        "seed": cell.seed,
        "control": cell.control,
        "permutation": None if real else cell.permutation,
        "n_train": len(cell.train),
        "positives_train": int(positives),
        "n_val": len(val),
        "n_test": len(test),
        "fit_seconds": round(fit_seconds, 4),
        "val_auroc": val_m["auroc"],
        "val_auprc": val_m["auprc"],
    }
    for m in METRICS:
        row[m] = test_m[m]
        row[f"{m}_lo"], row[f"{m}_hi"] = ci[m]
    row.update(
        n_labels=test_m["n_labels"],
        n_labels_total=test_m["n_labels_total"],
        threshold=None if thresholds is None else [round(float(v), 6) for v in thresholds],
        hyper=(
            {"C": probe.C_}
            if cell.model == "logreg" and kind != "multilabel"
            else {"best_iteration": probe.best_iteration_}
            if cell.model == "lightgbm" and kind != "multilabel"
            else {}
        ),
        predictions=str(pred_file.relative_to(out)),
        run_id=run_id,
    )
    write_json(
        out / "cells" / f"{run_id}.json", row, indent=None, default=jsonable
    )  # the cell is finished once this exists
    return row


def cell_id(layer: str, cell: Cell) -> str:
    """The cell's file names in the run directory (:func:`~tlmic_feats.runtime.rundir.probe_cell_id`)."""
    return probe_cell_id(layer, cell.model, cell.fraction, cell.seed, cell.control, cell.permutation)


def load_cell(out: Path, run_id: str) -> dict | None:
    path = out / "cells" / f"{run_id}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)
