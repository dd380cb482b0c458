"""The fixed-feature arm: a probe on every layer x model x data fraction x seed.

:func:`run_probes` reads one layer of a finished :class:`~tlmic_feats.features.store.FeatureStore` at a
time (a probe never loads more than its layer), trains each probe on a nested training subset,
picks thresholds and hyper-parameters on the validation split, and scores the test split with the
shared metrics module and bootstrap CIs. It writes, under ``out``:

* ``results.csv`` / ``results.json``: one row per layer x model x fraction x seed, and with
  ``--control shuffle`` one per permutation draw and layer (see :mod:`tlmic_feats.probes.permutation`);
  ``results.json`` also holds the null's summary (``permutation_null``: per layer and per model x
  fraction, with the layer-corrected p-value of the picked layer);
  the CSV writes cut points as ``L3.10`` so that pandas keeps them apart;
* ``predictions/<run>.csv``: ids, split, labels and scores of val and test, for recomputation;
* ``probes/<run>/``: each fitted probe (not the permutation draws'), saved without pickle;
* ``summary.md`` and ``layers.png`` (see :mod:`tlmic_feats.probes.report`);
* ``run.json``: the :class:`ProbeConfig` and the store's fingerprint; ``cells/``: one finished
  result per fit, so an interrupted run resumes and a rerun of a finished one refits nothing.
"""

from __future__ import annotations

import contextlib
import csv
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.subsets import nested_subsets
from ..features.store import FeatureStore, resolve_store_layers
from ..metrics.scores import METRICS
from ..runtime.errors import UsageError
from ..runtime.files import atomic_path, write_json
from ..runtime.limits import cpu_count, limit_malloc_arenas, one_thread_per_cell, release_freed_memory
from ..runtime.paths import cache_root, slug
from ..runtime.progress import default_log, progress_bar
from ..runtime.rundir import address_from_label, claim_run_dir, layer_label
from .cells import Cell, GridContext, cell_id, fit_cell, jsonable, load_cell
from .config import ProbeConfig


@dataclass
class ProbeRun:
    """What :func:`run_probes` produced: the run directory, one result row per fit, the training
    subsets skipped (too small) and the seconds spent fitting."""

    out: Path
    rows: list[dict]
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_pandas(self):
        """One row per fit (layer x model x fraction x seed, and with ``control="shuffle"`` per
        permutation draw) as a :class:`pandas.DataFrame` with the columns of ``results.csv``
        (:data:`RESULT_COLUMNS`): ``layer`` (the cut point's address as text, e.g. ``"3.10"``),
        ``depth``, ``module``, ``array``, ``channels``, ``model``, ``fraction``, ``seed``,
        ``control`` (``none`` or ``shuffle``), ``permutation``, ``n_train``, ``positives_train``,
        ``n_val``, ``n_test``, ``fit_seconds``, ``val_auroc``, ``val_auprc`` (what a layer is picked
        by), each test metric with its 95% bootstrap interval (``auroc``, ``auroc_lo``,
        ``auroc_hi``, ``auprc``, ...), ``n_labels``, ``n_labels_total``, ``threshold``, ``hyper``,
        ``run_id`` and ``predictions`` (relative to :attr:`out`).

        >>> table = run_probes(config).to_pandas()                                   # doctest: +SKIP
        >>> table.groupby("layer", sort=False)["auroc"].mean()                      # doctest: +SKIP
        """
        import pandas as pd

        return pd.DataFrame([{k: r.get(k) for k in RESULT_COLUMNS} for r in self.rows], columns=list(RESULT_COLUMNS))


def default_out(store: FeatureStore) -> Path:
    return cache_root() / "runs" / f"probe-{slug(store.path.stem)}-{time.strftime('%Y%m%d-%H%M%S')}"


def _class_counts(y: np.ndarray, kind: str, n_classes: int) -> np.ndarray:
    if kind == "multilabel":
        return np.stack([np.nansum(y == 0, 0), np.nansum(y == 1, 0)], 1).min(1)  # per label: rarer side
    return np.bincount(y[:, 0].astype(int), minlength=n_classes)


def run_probes(config: ProbeConfig, *, progress: bool = True, log: Callable[[str], None] | None = None) -> ProbeRun:
    """Run the probe grid of ``config``; see the module docstring for the outputs."""
    from .report import render_report

    config.validate()
    log = log or default_log(progress)
    store = FeatureStore.open(config.store)
    layers = resolve_store_layers(store, config.layers)
    usable = ~store.skipped
    rows_of = {s: np.flatnonzero((store.splits == s) & usable) for s in ("train", "val", "test")}
    if len(rows_of["val"]) == 0:
        raise UsageError(
            f"store {store.path} has no validation split; probes choose hyper-parameters and thresholds "
            "on it. Re-extract with a split that has val (a CSV 'split' column with val rows, a val/ folder, "
            "or no split at all so tlmic makes one)"
        )
    if len(rows_of["test"]) == 0:
        raise UsageError(f"store {store.path} has no test split to evaluate on")
    out = Path(config.out) if config.out else default_out(store)
    _claim_run_dir(out, config, store)
    if store.meta.get("split_origin", "").startswith("no "):  # an official test split the data lacks
        log(f"note: {store.meta['split_origin']}")
    subsets, skipped = training_subsets(store, rows_of, config, log)
    ctx = GridContext(store.label_matrix, store.label_kind, store.label_names, rows_of, store.ids, config, out)
    # One entry per stored array: an alias (ResNet's "2" is "2.4") has the same features, same results.
    first_of: dict[str, tuple[int, str]] = {}
    for depth, address in enumerate(layers):
        first_of.setdefault(store.layer(address).array, (depth, address))
    base = base_cells(config, subsets)
    grid = _Grid(store, ctx, first_of, progress_bar(len(first_of) * len(base), "probe", "fit", progress))
    t0 = time.perf_counter()
    fitted = grid.fit({array: base for array in first_of})
    grid.bar.close()
    rows = []
    for depth, address in enumerate(layers):
        info = store.layer(address)
        rows += [{**r, "layer": address, "depth": depth, "module": info.module} for r in fitted[info.array]]
    run = ProbeRun(out, rows, skipped, time.perf_counter() - t0)
    write_results(run, store, config)
    render_report(out)
    return run


def training_subsets(
    store: FeatureStore, rows_of: dict[str, np.ndarray], config: ProbeConfig, log: Callable[[str], None]
) -> tuple[dict[tuple[float, int], np.ndarray], list[str]]:
    """``{(fraction, seed): training rows}`` (nested, stratified, patient-grouped subsets), and a
    message for each subset too small to fit (it gets no cells)."""
    labels, kind, names = store.label_matrix, store.label_kind, store.label_names
    nested = {
        seed: nested_subsets(rows_of["train"], labels, kind, config.fractions, seed=seed, patient_ids=store.patient_ids)
        for seed in config.seed_list
    }
    subsets, skipped = {}, []
    for fraction in config.fractions:
        for seed in config.seed_list:
            train = nested[seed][float(fraction)]
            counts = _class_counts(labels[train], kind, len(names))
            if kind != "multilabel" and counts.min() < 2:
                short = names[int(np.argmin(counts))]
                msg = (
                    f"skipped fraction {fraction} seed {seed}: its training subset has {int(counts.min())} "
                    f"'{short}' image(s) (needs >= 2 of every class; {len(train)} images in all)"
                )
            elif kind == "multilabel" and counts.max() < 2:
                msg = f"skipped fraction {fraction} seed {seed}: no label has >= 2 positives and negatives"
            else:
                subsets[(float(fraction), seed)] = train
                continue
            skipped.append(msg)
            log(msg)
    return subsets, skipped


def base_cells(config: ProbeConfig, subsets: dict[tuple[float, int], np.ndarray]) -> list[Cell]:
    """The cells of every layer: each model on each training subset, and with ``--control shuffle``
    ``config.permutations`` draws (the same draws on every layer: the layer-corrected p-value takes
    each draw's best layer, :mod:`~tlmic_feats.probes.permutation`)."""
    cells = []
    for fraction in config.fractions:
        seeds = [s for s in config.seed_list if (float(fraction), s) in subsets]
        for model in config.models:
            cells += [Cell(model, float(fraction), s, "none", subsets[(float(fraction), s)]) for s in seeds]
            if config.control == "shuffle" and seeds:
                cells += _draws(model, float(fraction), range(config.permutations), seeds, subsets)
    return cells


def _draws(model: str, fraction: float, indices, seeds: list[int], subsets: dict) -> list[Cell]:
    """Permutation draws ``indices``; draw ``k`` on the training subset of seed ``seeds[k mod len]``."""
    picks = [(k, seeds[k % len(seeds)]) for k in indices]
    return [Cell(model, fraction, s, "shuffle", subsets[(fraction, s)], permutation=k) for k, s in picks]


@dataclass
class _Grid:
    """Fits cells layer by layer (one stored array in memory at a time), locally in threads or on a
    Dask cluster, skipping cells a previous run finished."""

    store: FeatureStore
    ctx: GridContext
    first_of: dict[str, tuple[int, str]]  # array -> (depth, address it is fitted under)
    bar: object

    def common(self, array: str) -> dict:
        depth, address = self.first_of[array]
        info = self.store.layer(address)
        return dict(layer=address, depth=depth, module=info.module, array=info.array, channels=info.channels)

    def fit(self, plan: dict[str, list[Cell]]) -> dict[str, list[dict]]:
        """``{array: cells}`` -> ``{array: results rows, in the cells' order}``."""
        ctx, config = self.ctx, self.ctx.config
        done: dict[str, dict[str, dict]] = {}
        todo: dict[str, list[Cell]] = {}
        for array, cells in plan.items():
            address = self.first_of[array][1]
            ids = [cell_id(address, c) for c in cells]
            done[array] = {i: row for i in ids if (row := load_cell(ctx.out, i)) is not None}
            todo[array] = [c for i, c in zip(ids, cells, strict=True) if i not in done[array]]
            self.bar.update(len(done[array]))
        n_jobs = config.n_jobs or cpu_count()
        if config.cluster:
            from .cluster import fit_grid_on_cluster

            plan_todo = {a: (self.common(a), cells) for a, cells in todo.items() if cells}
            for array, rows in fit_grid_on_cluster(self.store, ctx, plan_todo, self.bar).items():
                done[array].update((r["run_id"], r) for r in rows)
        else:
            if n_jobs > 1:
                limit_malloc_arenas()
            for array, cells in todo.items():
                if cells:
                    done[array].update((r["run_id"], r) for r in self._fit_local(array, cells, n_jobs))
                release_freed_memory()
        return {a: [done[a][cell_id(self.first_of[a][1], c)] for c in cells] for a, cells in plan.items()}

    def _fit_local(self, array: str, cells: list[Cell], n_jobs: int) -> list[dict]:
        from joblib import Parallel, delayed
        from sklearn.exceptions import ConvergenceWarning

        common = self.common(array)
        X = self.store.features(common["layer"]).astype(np.float32, copy=False)
        # Cells run in threads; with several at once, BLAS, OpenMP and LightGBM get one thread each.
        # Filters are process-wide and catch_warnings is not thread-safe: the probes' own filter for
        # the warm-started path's ConvergenceWarning is set here, once, around every thread.
        with warnings.catch_warnings(), one_thread_per_cell() if n_jobs > 1 else contextlib.nullcontext():
            warnings.simplefilter("ignore", ConvergenceWarning)
            rows = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(fit_cell)(X, self.ctx, c, common) for c in cells)
        self.bar.update(len(cells))
        return rows


def fitted_probe_dir(run_dir: str | Path, layer: str, model: str, fraction: float, seed: int) -> Path:
    """Where a finished probe run keeps the fitted probe of one cell (no control). An alias cut point
    (EfficientNet's block end ``5`` is its last unit ``5.3``) is fitted once, under its stored array:
    the run's results name the cell that holds it."""
    run_dir, layer = Path(run_dir), address_from_label(layer)
    try:
        rows = json.loads((run_dir / "results.json").read_text())["rows"]
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"{run_dir} is not a finished probe run (no readable results.json)") from e
    for r in rows:
        if (r["layer"], r["model"], r["fraction"], r["seed"], r["control"]) == (layer, model, fraction, seed, "none"):
            path = run_dir / "probes" / r["run_id"]
            if not path.is_dir():
                raise UsageError(f"{run_dir}: the {model} probe of layer {layer} was not saved (save_probes was off)")
            return path
    have = sorted({(r["fraction"], r["seed"]) for r in rows if r["layer"] == layer and r["model"] == model})
    raise UsageError(
        f"{run_dir} has no {model} probe at layer {layer}, fraction {fraction:g}, seed {seed}; it has "
        + (", ".join(f"fraction {f:g} seed {s}" for f, s in have) or f"none at layer {layer}")
    )


def _claim_run_dir(out: Path, config: ProbeConfig, store: FeatureStore) -> None:
    """Start a run in ``out``, or resume the same run there; refuse a directory holding another."""
    from .. import __version__

    record = {"config": config.grid_key, "store_fingerprint": store.fingerprint, "tlmic_version": __version__}
    claim_run_dir(out, record, what="probe run")
    for sub in ("predictions", "cells"):
        (out / sub).mkdir(parents=True, exist_ok=True)


RESULT_COLUMNS = (
    "layer",
    "depth",
    "module",
    "array",
    "channels",
    "model",
    "fraction",
    "seed",
    "control",
    "permutation",
    "n_train",
    "positives_train",
    "n_val",
    "n_test",
    "fit_seconds",
    "val_auroc",
    "val_auprc",
    *[c for m in METRICS for c in (m, f"{m}_lo", f"{m}_hi")],
    "n_labels",
    "n_labels_total",
    "threshold",
    "hyper",
    "run_id",
    "predictions",
)


def write_results(run: ProbeRun, store: FeatureStore, config: ProbeConfig) -> None:
    """``results.csv`` and ``results.json`` (atomically), sorted so that runs are comparable. The CSV
    writes cut points as ``L3.10`` (:func:`~tlmic_feats.runtime.rundir.layer_label`), so that
    ``pandas.read_csv`` keeps every one a distinct string; the JSON keeps bare addresses."""
    rows = sorted(
        run.rows,
        key=lambda r: (r["depth"], r["model"], r["fraction"], r["control"], r.get("permutation") or 0, r["seed"]),
    )
    run.rows = rows
    doc = {
        "store": str(store.path),
        "backbone": store.fingerprint.get("backbone"),
        # what the stored features pooled (a transformer's store says over which tokens)
        "pooling": store.fingerprint.get("tokens", {}).get("pooled") or store.fingerprint.get("pool"),
        "label_kind": store.label_kind,
        "label_names": store.label_names,
        "split_origin": store.meta.get("split_origin", ""),
        "config": asdict(config),
        "skipped": run.skipped,
        "seconds": round(run.seconds, 2),
        "rows": rows,
    }
    if config.control == "shuffle":
        from .report import null_summary

        doc["permutation_null"] = null_summary(rows)
    write_json(run.out / "results.json", doc, default=jsonable)
    with atomic_path(run.out / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            cells = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()}
            cells["layer"], cells["array"] = layer_label(r["layer"]), layer_label(r["array"])
            w.writerow(cells)
