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
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..data.subsets import nested_subsets
from ..features.store import FeatureStore
from ..metrics.predictions import write_predictions
from ..metrics.scores import METRICS, UndefinedMetricWarning, bootstrap, choose_thresholds, evaluate
from ..runtime.errors import UnknownCutPointError, UsageError, check_choice, choices
from ..runtime.paths import cache_root, slug
from .estimators import PROBES, lightgbm_max_threads

CONTROLS = ("none", "shuffle")
MODELS = tuple(PROBES)


@dataclass(frozen=True)
class ProbeConfig:
    """A probe grid. Recorded in ``run.json`` in the run directory."""

    store: str
    layers: str = "all"
    models: tuple[str, ...] = MODELS
    fractions: tuple[float, ...] = (1.0,)
    seeds: int = 3
    out: str = ""
    control: str = "none"  # "shuffle": also fit every cell on permuted train and val labels
    bootstrap: int = 1000
    n_jobs: int = 0  # 0: one per CPU core
    save_probes: bool = True
    cluster: str = ""  # local:N or tcp://HOST:PORT: every cell a Dask task (see cluster.py); same results
    distributed_fit: bool = False  # LightGBM cells trained by lightgbm.dask on row chunks of the store

    @property
    def grid_key(self) -> dict:
        """The fields that define the grid's results (where it runs does not)."""
        record = json.loads(json.dumps(asdict(self)))
        for k in ("n_jobs", "cluster"):
            record.pop(k)
        return record

    def validate(self) -> None:
        bad = [m for m in self.models if m not in MODELS]
        if bad or not self.models:
            raise UsageError(f"--model {','.join(bad) or '(none)'} is not valid; valid: logreg, lightgbm, both")
        check_choice("--control", self.control, CONTROLS)
        for f in self.fractions:
            if not 0 < f <= 1:
                raise UsageError(f"fraction {f} is not in (0, 1]; e.g. --fractions 0.05,0.1,1.0")
        if self.seeds < 1:
            raise UsageError(f"--seeds {self.seeds}: need at least 1")
        if self.cluster:
            from ..runtime.cluster import parse_cluster

            parse_cluster(self.cluster, device="cpu")
        if self.distributed_fit and (not self.cluster or tuple(self.models) != ("lightgbm",)):
            raise UsageError(
                "--distributed-fit trains LightGBM across a Dask cluster: it needs --cluster and --model lightgbm "
                f"(got --cluster {self.cluster or '(none)'}, --model {','.join(self.models)})"
            )


@dataclass
class ProbeRun:
    """What :func:`run_probes` produced."""

    out: Path
    rows: list[dict]
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def resolve_store_layers(store: FeatureStore, spec: str) -> list[str]:
    """Addresses of ``store`` for ``all``, ``blocks``, ``units`` or a list (``"3,3.4"``)."""
    have = store.addresses
    key = spec.strip().lower()
    if key == "all":
        return have
    if key == "blocks":
        return [a for a in have if "." not in a]
    if key == "units":
        return [a for a in have if "." in a]
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    for w in wanted:
        if w not in have:
            raise UnknownCutPointError(
                f"layer {w} is not in the store {store.path}; stored: {choices(['all', 'blocks', 'units', *have])}"
            )
    return [a for a in have if a in wanted]


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

    ctx = _Context(labels, kind, names, rows_of, store.ids, config, out)
    n_jobs = config.n_jobs or _cpu_count()
    if n_jobs > 1 and not config.cluster:
        _limit_malloc_arenas()
    bar = _progress(len(layers) * len(cells), progress)
    # One entry per stored array: an alias (ResNet's "2" is "2.4") has the same features, same results.
    first_of: dict[str, tuple[int, str]] = {}
    for depth, address in enumerate(layers):
        first_of.setdefault(store.layer(address).array, (depth, address))
    todo = {
        array: [c for c in range(len(cells)) if _load_cell(out, _run_id(address, cells[c])) is None]
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
        finished = {c: _load_cell(out, _run_id(address, cells[c])) for c in range(len(cells))}
        if config.cluster:
            finished.update(fitted_by_array[info.array])
        else:
            X = store.features(address).astype(np.float32, copy=False)
            # Cells run in threads; with several at once, BLAS, OpenMP and LightGBM get one thread each.
            with one_thread_per_cell() if n_jobs > 1 else contextlib.nullcontext():
                fitted = Parallel(n_jobs=n_jobs, prefer="threads")(
                    delayed(_fit_cell)(X, ctx, cells[c], common_of(depth, address)) for c in todo[info.array]
                )
            finished.update(zip(todo[info.array], fitted, strict=True))
            del X, fitted
            bar.update(len(cells))
        results = [finished[c] for c in range(len(cells))]
        done_arrays[info.array] = results
        rows.extend(results)
        del finished
        _release_freed_memory()
    bar.close()
    run = ProbeRun(out, rows, skipped, time.perf_counter() - t0)
    write_results(run, store, config)
    from .report import render_report

    render_report(out)
    return run


@dataclass(frozen=True)
class _Context:
    """What every cell of a grid shares (everything but the layer's features)."""

    labels: np.ndarray
    kind: str
    names: list[str]
    rows_of: dict[str, np.ndarray]
    ids: np.ndarray
    config: ProbeConfig
    out: Path


def cell_targets(ctx: _Context, cell: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The labels a cell learns from and is tuned on: ``(y_train, y_val)``, permuted for controls."""
    _, _, seed, control, train = cell
    y_train, y_val = ctx.labels[train], ctx.labels[ctx.rows_of["val"]]
    if control == "shuffle":
        # The null: permute every label the probe learns or is tuned from (train, and the
        # validation labels behind C, early stopping and the threshold). Test labels stay true,
        # so test AUROC must sit at chance unless features or ids leak the label.
        rng = np.random.default_rng([seed, 0xC0])
        y_train, y_val = y_train[rng.permutation(len(y_train))], y_val[rng.permutation(len(y_val))]
    return y_train, y_val


def target_of(kind: str, y: np.ndarray) -> np.ndarray:
    """What a probe is fitted on: a vector for binary and multi-class, the matrix for multi-label."""
    return y if kind == "multilabel" else y[:, 0]


def _fit_cell(X: np.ndarray, ctx: _Context, cell: tuple, common: dict) -> dict:
    model, _, seed, _, train = cell
    val, test = ctx.rows_of["val"], ctx.rows_of["test"]
    y_train, y_val = cell_targets(ctx, cell)
    probe = PROBES[model](random_state=seed)
    t = time.perf_counter()
    probe.fit(X[train], target_of(ctx.kind, y_train), eval_set=(X[val], target_of(ctx.kind, y_val)))
    fit_seconds = time.perf_counter() - t
    return finish_cell(ctx, cell, common, probe, probe.predict_proba(X[val]), probe.predict_proba(X[test]), fit_seconds)


def finish_cell(
    ctx: _Context, cell: tuple, common: dict, probe, p_val: np.ndarray, p_test: np.ndarray, fit_seconds: float
) -> dict:
    """Score a fitted cell on val and test, write its predictions, probe and finished-cell record;
    returns its results row. Shared by every way of fitting a cell (here, on a cluster, distributed)."""
    labels, kind, names, rows_of, config, out = ctx.labels, ctx.kind, ctx.names, ctx.rows_of, ctx.config, ctx.out
    model, fraction, seed, control, train = cell
    val, test = rows_of["val"], rows_of["test"]
    y_train, y_val = cell_targets(ctx, cell)
    s_val = p_val[:, 1] if kind == "binary" else p_val
    s_test = p_test[:, 1] if kind == "binary" else p_test
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # reported as NaN and n_labels
        thresholds = choose_thresholds(y_val, s_val, kind)
        val_m = evaluate(y_val, s_val, kind, thresholds=thresholds, label_names=names)
        test_m = evaluate(labels[test], s_test, kind, thresholds=thresholds, label_names=names)
        ci = bootstrap(labels[test], s_test, kind, thresholds=thresholds, n_resamples=config.bootstrap, seed=seed)
    run_id = _run_id(common["layer"], cell)
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
    if config.save_probes:
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
        "model": model,
        "fraction": fraction,
        "seed": seed,
        "control": control,
        "n_train": len(train),
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
            if model == "logreg" and kind != "multilabel"
            else {"best_iteration": probe.best_iteration_}
            if model == "lightgbm" and kind != "multilabel"
            else {}
        ),
        predictions=str(pred_file.relative_to(out)),
        run_id=run_id,
    )
    tmp = out / "cells" / f"{run_id}.json.tmp"
    tmp.write_text(json.dumps(row, default=_jsonable))
    tmp.replace(tmp.with_suffix(""))  # the cell is finished only once this file exists
    return row


def _run_id(layer: str, cell: tuple) -> str:
    model, fraction, seed, control = cell[:4]
    return f"L{layer}-{model}-f{fraction:g}-s{seed}" + ("-shuffle" if control != "none" else "")


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


def _load_cell(out: Path, run_id: str) -> dict | None:
    path = out / "cells" / f"{run_id}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _claim_run_dir(out: Path, config: ProbeConfig, store: FeatureStore) -> None:
    """Start a run in ``out``, or resume the same run there; refuse a directory holding another."""
    from .. import __version__

    record = {
        "config": config.grid_key,
        "store_fingerprint": store.fingerprint,
        "tlmic_version": __version__,
    }
    existing = out / "run.json"
    if existing.is_file():
        old = json.loads(existing.read_text())
        diff = sorted(
            k for k in set(old["config"]) | set(record["config"]) if old["config"].get(k) != record["config"].get(k)
        )
        if old.get("store_fingerprint") != record["store_fingerprint"]:
            diff.append("store contents")
        if old.get("tlmic_version") != record["tlmic_version"]:
            diff.append("tlmic version")
        if diff:
            raise UsageError(
                f"run directory {out} holds another probe run (differs in: {', '.join(diff)}); "
                "choose another --out or delete it"
            )
    elif out.exists() and any(out.iterdir()):
        raise UsageError(f"run directory {out} exists and is not a probe run; choose another --out")
    for sub in ("predictions", "cells"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    tmp = out / "run.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(existing)


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
        "label_kind": store.label_kind,
        "label_names": store.label_names,
        "config": asdict(config),
        "skipped": run.skipped,
        "seconds": round(run.seconds, 2),
        "rows": rows,
    }
    tmp = run.out / "results.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, default=_jsonable))
    tmp.replace(run.out / "results.json")
    tmp = run.out / "results.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()})
    tmp.replace(run.out / "results.csv")


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


def _libc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_CELL_LIMITS_LOCK = threading.Lock()
_cell_limits: list = [0, None]  # holders inside, and the ExitStack that lifts the limits


@contextlib.contextmanager
def one_thread_per_cell():
    """One thread for BLAS (threadpoolctl, process-wide; OpenMP's count is per calling thread) and
    for LightGBM (its own process-wide cap): how cells fit when several run at once, here or on a
    cluster worker.

    Holders may overlap (one per task thread on a Dask worker with several threads): the first in
    sets the limits and the last out restores them, so none is lifted while another cell still fits.
    """
    from threadpoolctl import threadpool_limits

    with _CELL_LIMITS_LOCK:
        if _cell_limits[0] == 0:
            with contextlib.ExitStack() as stack:
                stack.enter_context(threadpool_limits(1))
                stack.enter_context(lightgbm_max_threads(1))
                _cell_limits[1] = stack.pop_all()
        _cell_limits[0] += 1
    try:
        yield
    finally:
        with _CELL_LIMITS_LOCK:
            _cell_limits[0] -= 1
            if _cell_limits[0] == 0:
                stack, _cell_limits[1] = _cell_limits[1], None
                stack.close()


def _limit_malloc_arenas(n: int = 2) -> None:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX does). Fits in worker threads otherwise each
    get their own arena, which glibc keeps after the arrays are freed: peak memory then grows with
    the number of layers probed instead of staying at one layer's working set."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-8, n)  # M_ARENA_MAX


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS between layers (glibc only)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _cpu_count() -> int:
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="probe", unit="fit", disable=not enabled, dynamic_ncols=True, file=sys.stderr)
