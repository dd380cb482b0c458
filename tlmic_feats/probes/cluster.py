"""Probe grids on a Dask cluster (``tlmic probe --cluster``), and LightGBM trained across it.

* :func:`fit_grid_on_cluster`: every unfinished cell of the grid is one Dask task. A task opens
  the store, reads only its own layer (kept in the worker process for the next cells of that
  layer; cells are submitted layer by layer), fits with one BLAS/OpenMP thread, exactly as a
  local run's cells do, and writes its predictions, probe and finished-cell record into the run
  directory (which, like the store, every worker must see). Same seeds, same results as a local
  run; only ``fit_seconds`` differs.
* ``--distributed-fit``: for a layer too large for one machine's memory. The layer stays in the
  store and is read as a row-chunked :func:`dask.array.from_zarr`; LightGBM trains on the row
  chunks where they lie (``lightgbm.dask``). ``lightgbm.dask`` has no early stopping, so the tree
  count is chosen afterwards: the validation rows are scored at every 10th iteration and the best
  validation AUPRC wins. Distributed LightGBM is not bit-reproducible from run to run (its result
  depends on which worker holds which row chunks), so these cells match a local run statistically,
  not exactly.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from ..features.store import FeatureStore
from ..runtime.cluster import check_visible, connect, gather, worker_cached
from .cells import cell_id
from .estimators import LightGBMProbe, validation_score


def fit_grid_on_cluster(store: FeatureStore, ctx, plan: dict[str, tuple[dict, list]], bar) -> dict[str, list[dict]]:
    """Fit the cells ``plan[array] = (common, cells)`` on ``ctx.config.cluster`` (cells a previous run
    finished are left out by the caller); returns ``{array: results rows}``."""

    config = ctx.config
    results: dict[str, list[dict]] = {array: [] for array in plan}
    if not plan:
        return results
    with connect(config.cluster, device="cpu") as client:
        check_visible(client, store.path)
        check_visible(client, ctx.out, member="run.json", what="run directory")
        if config.distributed_fit:
            quiet_lightgbm()
            client.run(quiet_lightgbm)
            for array, (common, cells) in plan.items():
                for cell in cells:
                    results[array].append(_fit_distributed_cell(client, store, ctx, cell, common))
                    bar.update(1)
            return results
        ctx_future = client.scatter(ctx, broadcast=True, hash=False)
        array_of: dict[str, str] = {}
        futures = []
        for order, (array, (common, cells)) in enumerate(plan.items()):
            for cell in cells:
                run_id = cell_id(common["layer"], cell)
                array_of[run_id] = array
                futures.append(
                    client.submit(
                        fit_cell_task,
                        str(store.path),
                        common,
                        ctx_future,
                        cell,
                        key=f"tlmic-probe-{run_id}",
                        priority=-order,  # layer by layer: a worker's cached layer serves its next cells
                        pure=False,
                    )
                )

        def finished(row: dict) -> None:
            results[array_of[row["run_id"]]].append(row)
            bar.update(1)

        gather(client, futures, finished)
    return results


def fit_cell_task(store_path: str, common: dict, ctx, cell) -> dict:
    """A Dask task: one cell of the grid, on the worker's copy of its layer."""
    from ..runtime.limits import one_thread_per_cell
    from .cells import fit_cell

    X = worker_cached(
        f"{store_path}::{common['array']}",
        lambda: FeatureStore.open(store_path).features(common["layer"]).astype(np.float32, copy=False),
    )
    with one_thread_per_cell():  # as a local run's parallel cells: results do not depend on where they ran
        return fit_cell(X, ctx, cell, common)


# --- LightGBM across the cluster ------------------------------------------------------------------


def quiet_lightgbm() -> None:
    """Route LightGBM's Python-side messages through a logger that shows errors only (its native
    network set-up still prints a few lines per training on each worker)."""
    import logging

    import lightgbm as lgb

    logger = logging.getLogger("tlmic.lightgbm")
    logger.setLevel(logging.ERROR)
    lgb.register_logger(logger)


def _fit_distributed_cell(client, store: FeatureStore, ctx, cell, common: dict) -> dict:
    import dask.array as da

    from .cells import cell_targets, finish_cell, target_of

    seed, train = cell.seed, cell.train
    X = da.from_zarr(str(store.path), component=f"features/{common['array']}")
    val, test = ctx.rows_of["val"], ctx.rows_of["test"]
    y_train, y_val = cell_targets(ctx, cell)
    order = np.argsort(train)  # row-sorted selections read each chunk once
    t = time.perf_counter()
    probe = fit_lightgbm_dask(
        client,
        X[np.asarray(train)[order]],
        target_of(ctx.kind, y_train)[order],
        X[val],
        target_of(ctx.kind, y_val),
        random_state=seed,
    )
    fit_seconds = time.perf_counter() - t
    p_val, p_test = predict_proba_dask(probe, X[val]), predict_proba_dask(probe, X[test])
    return finish_cell(ctx, cell, common, probe, p_val, p_test, fit_seconds)


def fit_lightgbm_dask(client, X, y: np.ndarray, X_val, y_val: np.ndarray, *, random_state: int = 0, step: int = 10):
    """A fitted :class:`LightGBMProbe` trained by ``lightgbm.dask`` on the dask array ``X``.

    ``y`` and ``y_val`` are in memory (one number per row); ``X`` and ``X_val`` stay chunked on the
    workers. Multi-label ``y`` ``(n, L)`` trains one model per label on its known rows.
    """
    y = np.asarray(y, dtype=np.float64)
    y_val = np.asarray(y_val, dtype=np.float64)
    template = LightGBMProbe(random_state=random_state)
    if y.ndim == 2 and y.shape[1] > 1:
        probe = LightGBMProbe(**template.get_params())
        probe.kind_, probe.classes_, probe.n_features_in_ = "multilabel", np.arange(y.shape[1]), X.shape[1]
        probe.estimators_ = []
        for j in range(y.shape[1]):
            known, known_val = ~np.isnan(y[:, j]), ~np.isnan(y_val[:, j])
            if len(np.unique(y[known, j])) < 2:
                probe.estimators_.append(None)
                continue
            probe.estimators_.append(
                _fit_single(
                    client, X[known], y[known, j].astype(int), X_val[known_val], y_val[known_val, j], template, step
                )
            )
        return probe
    return _fit_single(client, X, y.astype(int), X_val, y_val, template, step)


def _fit_single(
    client, X, y: np.ndarray, X_val, y_val: np.ndarray, template: LightGBMProbe, step: int
) -> LightGBMProbe:
    import dask.array as da
    import lightgbm as lgb

    y_dask = da.from_array(y, chunks=(X.chunks[0],))
    model = lgb.DaskLGBMClassifier(client=client, **template.lightgbm_params(len(y)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Parameter n_jobs will be ignored", UserWarning)
        model.fit(X, y_dask)
    booster = model.booster_
    total = booster.current_iteration()
    candidates = sorted({*range(step, total + 1, step), total})
    classes = np.unique(y)

    def scores(block: np.ndarray) -> np.ndarray:  # (rows, candidates, classes-or-1)
        return np.stack(
            [np.atleast_2d(booster.predict(block, num_iteration=k, num_threads=1).T).T for k in candidates], 1
        )

    width = 1 if len(classes) == 2 else len(classes)
    p = X_val.map_blocks(
        scores, dtype=np.float64, chunks=(X_val.chunks[0], (len(candidates),), (width,)), new_axis=2, meta=_META
    ).compute()
    yv = y_val.astype(int)
    values = [
        validation_score(yv, p[:, i, 0] if width == 1 else p[:, i, :]) if len(np.unique(yv)) >= 2 else -np.inf
        for i in range(len(candidates))
    ]
    best = candidates[int(np.nanargmax(np.nan_to_num(values, nan=-np.inf)))] if np.any(np.isfinite(values)) else total
    probe = LightGBMProbe(**template.get_params())
    probe.booster_, probe.best_iteration_ = booster, int(best)
    probe.classes_, probe.n_features_in_ = classes, X.shape[1]
    probe.kind_ = "binary" if len(classes) == 2 else "multiclass"
    return probe


def predict_proba_dask(probe: LightGBMProbe, X) -> np.ndarray:
    """``probe.predict_proba`` computed on the workers, chunk by chunk."""
    width = len(probe.classes_) if probe.kind_ != "binary" else 2
    return X.map_blocks(
        lambda block: probe.predict_proba(block), dtype=np.float64, chunks=(X.chunks[0], (width,)), meta=_META
    ).compute()


_META = np.empty((0, 0), dtype=np.float64)  # given to map_blocks so that it never calls LightGBM on empty blocks
