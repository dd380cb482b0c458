"""The fixed-feature arm: a probe on every layer x model x data fraction x seed.

:func:`run_probes` reads one layer of a finished :class:`~tlmic_feats.features.store.FeatureStore` at a
time (a probe never loads more than its layer), trains each probe on a nested training subset,
picks thresholds and hyper-parameters on the validation split, and scores the test split with the
shared metrics module and bootstrap CIs. It writes, under ``out``:

* ``results.csv`` / ``results.json``: one row per layer x model x fraction x seed (x control);
* ``predictions/<run>.csv``: ids, split, labels and scores of val and test, for recomputation;
* ``probes/<run>/``: each fitted probe, saved without pickle;
* ``summary.md`` and ``layers.png`` (see :mod:`tlmic_feats.probes.report`);
* ``run.json``: the :class:`ProbeConfig` and the store's fingerprint; ``cells/``: one finished
  result per fit, so an interrupted run resumes and a rerun of a finished one refits nothing.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.subsets import nested_subsets
from ..features.store import FeatureStore
from ..metrics.scores import METRICS
from ..runtime.errors import UsageError, choices
from ..runtime.files import atomic_path, write_json
from ..runtime.limits import cpu_count, limit_malloc_arenas, one_thread_per_cell, release_freed_memory
from ..runtime.paths import cache_root, slug
from ..runtime.progress import progress_bar
from ..runtime.rundir import claim_run_dir
from .cells import GridContext, cell_id, fit_cell, jsonable, load_cell
from .config import ProbeConfig


@dataclass
class ProbeRun:
    """What :func:`run_probes` produced."""

    out: Path
    rows: list[dict]
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def resolve_store_layers(store: FeatureStore, spec: str) -> list[str]:
    """The store's addresses that ``spec`` names (the registry's layer grammar: ``all``, ``blocks``,
    ``units`` or a list such as ``"3,3.4"``), in the store's order."""
    from ..backbones.cutpoints import select_addresses

    def unknown(bad: str) -> str:
        valid = choices(["all", "blocks", "units", *store.addresses])
        return f"layer {bad} is not in the store {store.path}; stored: {valid}"

    return select_addresses(spec, store.addresses, unknown)


def default_out(store: FeatureStore) -> Path:
    return cache_root() / "runs" / f"probe-{slug(store.path.stem)}-{time.strftime('%Y%m%d-%H%M%S')}"


def _class_counts(y: np.ndarray, kind: str, n_classes: int) -> np.ndarray:
    if kind == "multilabel":
        return np.stack([np.nansum(y == 0, 0), np.nansum(y == 1, 0)], 1).min(1)  # per label: rarer side
    return np.bincount(y[:, 0].astype(int), minlength=n_classes)


def run_probes(config: ProbeConfig, *, progress: bool = True, log: Callable[[str], None] | None = None) -> ProbeRun:
    """Run the probe grid of ``config``; see the module docstring for the outputs."""
    from joblib import Parallel, delayed

    config.validate()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    store = FeatureStore.open(config.store)
    layers = resolve_store_layers(store, config.layers)
    kind, names = store.label_kind, store.label_names
    splits, labels = store.splits, store.labels
    usable = ~store.skipped
    rows_of = {s: np.flatnonzero((splits == s) & usable) for s in ("train", "val", "test")}
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

    n_classes = len(names)
    cells, skipped = [], []
    subsets = {
        seed: nested_subsets(rows_of["train"], labels, kind, config.fractions, seed=seed, patient_ids=store.patient_ids)
        for seed in range(config.seeds)
    }
    controls = ["none"] + (["shuffle"] if config.control == "shuffle" else [])
    for fraction in config.fractions:
        for seed in range(config.seeds):
            train = subsets[seed][float(fraction)]
            counts = _class_counts(labels[train], kind, n_classes)
            if kind != "multilabel" and counts.min() < 2:
                short = names[int(np.argmin(counts))]
                msg = (
                    f"skipped fraction {fraction} seed {seed}: its training subset has {int(counts.min())} "
                    f"'{short}' image(s) (needs >= 2 of every class; {len(train)} images in all)"
                )
                skipped.append(msg)
                log(msg)
                continue
            if kind == "multilabel" and counts.max() < 2:
                msg = f"skipped fraction {fraction} seed {seed}: no label has >= 2 positives and negatives"
                skipped.append(msg)
                log(msg)
                continue
            for model in config.models:
                for control in controls:
                    cells.append((model, float(fraction), seed, control, train))

    ctx = GridContext(labels, kind, names, rows_of, store.ids, config, out)
    n_jobs = config.n_jobs or cpu_count()
    if n_jobs > 1 and not config.cluster:
        limit_malloc_arenas()
    bar = progress_bar(len(layers) * len(cells), "probe", "fit", progress)
    # One entry per stored array: an alias (ResNet's "2" is "2.4") has the same features, same results.
    first_of: dict[str, tuple[int, str]] = {}
    for depth, address in enumerate(layers):
        first_of.setdefault(store.layer(address).array, (depth, address))
    todo = {
        array: [c for c in range(len(cells)) if load_cell(out, cell_id(address, cells[c])) is None]
        for array, (_, address) in first_of.items()
    }

    def common_of(depth: int, address: str) -> dict:
        info = store.layer(address)
        return dict(layer=address, depth=depth, module=info.module, array=info.array, channels=info.channels)

    t0 = time.perf_counter()
    fitted_by_array: dict[str, dict[int, dict]] = {}
    if config.cluster:
        from .cluster import fit_grid_on_cluster

        fitted_by_array = fit_grid_on_cluster(
            store, ctx, cells, {a: (common_of(*first_of[a]), todo[a]) for a in first_of}, bar
        )
    rows: list[dict] = []
    done_arrays: dict[str, list[dict]] = {}
    for depth, address in enumerate(layers):
        info = store.layer(address)
        if info.array in done_arrays:
            for r in done_arrays[info.array]:
                rows.append({**r, "layer": address, "depth": depth, "module": info.module})
            bar.update(len(cells))
            continue
        finished = {c: load_cell(out, cell_id(address, cells[c])) for c in range(len(cells))}
        if config.cluster:
            finished.update(fitted_by_array[info.array])
        else:
            X = store.features(address).astype(np.float32, copy=False)
            # Cells run in threads; with several at once, BLAS, OpenMP and LightGBM get one thread each.
            with one_thread_per_cell() if n_jobs > 1 else contextlib.nullcontext():
                fitted = Parallel(n_jobs=n_jobs, prefer="threads")(
                    delayed(fit_cell)(X, ctx, cells[c], common_of(depth, address)) for c in todo[info.array]
                )
            finished.update(zip(todo[info.array], fitted, strict=True))
            del X, fitted
            bar.update(len(cells))
        results = [finished[c] for c in range(len(cells))]
        done_arrays[info.array] = results
        rows.extend(results)
        del finished
        release_freed_memory()
    bar.close()
    run = ProbeRun(out, rows, skipped, time.perf_counter() - t0)
    write_results(run, store, config)
    from .report import render_report

    render_report(out)
    return run


def fitted_probe_dir(run_dir: str | Path, layer: str, model: str, fraction: float, seed: int) -> Path:
    """Where a finished probe run keeps the fitted probe of one cell (no control). An alias cut point
    (EfficientNet's block end ``5`` is its last unit ``5.3``) is fitted once, under its stored array:
    the run's results name the cell that holds it."""
    run_dir = Path(run_dir)
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
    """``results.csv`` and ``results.json`` (atomically), sorted so that runs are comparable."""
    rows = sorted(run.rows, key=lambda r: (r["depth"], r["model"], r["fraction"], r["seed"], r["control"]))
    run.rows = rows
    doc = {
        "store": str(store.path),
        "backbone": store.fingerprint.get("backbone"),
        # what the stored features pooled (a transformer's store says over which tokens)
        "pooling": store.fingerprint.get("tokens", {}).get("pooled") or store.fingerprint.get("pool"),
        "label_kind": store.label_kind,
        "label_names": store.label_names,
        "config": asdict(config),
        "skipped": run.skipped,
        "seconds": round(run.seconds, 2),
        "rows": rows,
    }
    write_json(run.out / "results.json", doc, default=jsonable)
    with atomic_path(run.out / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()})
