"""``tlmic similarity``: layer similarity between the cut points of one feature store, or between two
stores on the same images (two backbones, or pretrained vs finetuned features).

:func:`run_similarity` reads the stores' layers (:mod:`.similarity` holds the measures), matches two
stores' rows by image id, and writes into ``out``:

* ``similarity.csv``: columns ``a, b, method, value``; ``a`` and ``b`` are cut points as tables
  write them (``L3.10``, so that pandas keeps it apart from ``L3.1``), prefixed by the store's
  name (``resnet50-pre:L3``) when two stores are compared. One store: every ordered pair (the
  matrix is symmetric); two stores: every layer of the first against every layer of the second.
  ``method`` is the method asked for, or ``cka-minibatch`` where the minibatch estimator ran.
* ``similarity.png``: the heatmap; ``similarity.json``: the request, the images compared, the
  estimator that ran and the time.

The same command with ``--run`` measures the feature reuse of a finetuning run instead
(:func:`tlmic_feats.finetune.reuse.feature_reuse`); :class:`SimilarityConfig` holds both requests.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from ..runtime.errors import RunError, UsageError
from ..runtime.files import atomic_path, save_figure
from ..runtime.options import check_fields, coerce_paths, name_of, option
from ..runtime.paths import cache_root, slug
from ..runtime.rundir import claim_run_dir, layer_label
from .similarity import (
    DEFAULT_BATCH,
    ESTIMATORS,
    FULL_MAX_IMAGES,
    METHODS,
    Estimator,
    LayerSource,
    Method,
    choose_estimator,
    similarity_matrix,
)
from .store import FeatureStore, resolve_store_layers

Split = Literal["auto", "all", "train", "val", "test"]
SPLITS: tuple[str, ...] = get_args(Split)


@dataclass(frozen=True)
class SimilarityConfig:
    """A ``tlmic similarity`` request: between the cut points of ``store`` (or of ``store`` and
    ``vs``), or, with ``run``, the feature reuse of a finetuning run. Recorded in ``similarity.json``
    (``feature_reuse.csv`` for a run).

    >>> SimilarityConfig(store="cache/stores/demo.zarr", method="svcca").split_for_store
    'all'
    """

    store: str = option("", "A finished feature store (from `tlmic extract`): similarity between its cut points.")
    vs: str = option(
        "",
        "A second store on the same images (another backbone, or a finetuned network's features): every cut point "
        "of --store against every cut point of this one.",
    )
    run: str = option(
        "",
        "Instead of --store: a finished finetuning run; similarity per cut point between its pretrained and its "
        "finetuned network, written into the run directory (feature_reuse.csv, feature_reuse.png).",
    )
    method: Method = option(
        "cka",
        "cka: linear CKA; cka-debiased: with the unbiased HSIC (small n); svcca: SVD to 99% of the variance, then "
        "the mean canonical correlation.",
        choices=METHODS,
    )
    estimator: Estimator = option(
        "auto",
        f"full: every image at once; minibatch: Nguyen et al.'s unbiased HSIC averaged over minibatches (CKA "
        f"only); auto: full up to {FULL_MAX_IMAGES:,} images (or when every layer fits in --max-memory), else "
        "minibatch.",
        choices=ESTIMATORS,
    )
    layers: str = option("all", "all, blocks, units, or addresses like 3,3.4 (in each store; --run: up to its cut).")
    split: Split = option(
        "auto",
        "The images compared: all (every usable image), train, val or test; auto: all for stores, test for --run.",
        choices=SPLITS,
    )
    batch_size: int = option(DEFAULT_BATCH, "Minibatch estimator: images per minibatch.", ge=4)
    passes: int = option(1, "Minibatch estimator: passes over the images, each in a new random order.", ge=1)
    seed: int = option(0, "Minibatch estimator: the seed of the images' order.", ge=0)
    max_memory: float = option(
        2.0, "GB of layers and Gram matrices held at once (layers that do not fit are read again in groups).", gt=0
    )
    out: str = option("", "Output directory (default: under cache/runs; --run writes into the run directory).")
    overwrite: bool = option(False, "Replace another similarity run in --out.")

    def __post_init__(self) -> None:
        coerce_paths(self, "store", "vs", "run", "out")

    @property
    def split_for_store(self) -> str:
        return "all" if self.split == "auto" else self.split

    @property
    def split_for_run(self) -> str:
        return "test" if self.split == "auto" else self.split

    @property
    def max_bytes(self) -> int:
        return int(self.max_memory * (1 << 30))

    def validate(self) -> None:
        check_fields(self)
        if bool(self.store) == bool(self.run):
            both = "not both" if self.store else "one of them"
            raise UsageError(
                f"give {name_of(self, 'store')} (a feature store) or {name_of(self, 'run')} (a finetuning run "
                f"directory), {both}"
            )
        if self.run and (self.vs or self.out or self.overwrite):
            given = [name_of(self, k) for k in ("vs", "out", "overwrite") if getattr(self, k)]
            raise UsageError(
                f"{', '.join(given)} apply to {name_of(self, 'store')}; {name_of(self, 'run')} compares the run's "
                "own two networks and writes into the run directory"
            )
        if self.method == "svcca" and self.estimator == "minibatch":
            raise UsageError(
                f"{name_of(self, 'estimator')} minibatch is CKA's (method cka or cka-debiased); svcca uses every image"
            )

    @property
    def record(self) -> dict:
        """What decides the results (where they go, and how much memory, do not)."""
        record = asdict(self)
        for k in ("out", "overwrite", "max_memory", "run"):
            record.pop(k)
        record["split"] = self.split_for_store
        if self.estimator == "full" or self.method == "svcca":
            for k in ("batch_size", "passes", "seed"):
                record.pop(k)
        return record


@dataclass
class SimilarityResult:
    """What :func:`run_similarity` computed and wrote: the matrix (``values``, rows the first store's
    cut points, columns the second's), its labels as ``similarity.csv`` writes them, and the
    estimator that ran."""

    out: Path
    method: str
    estimator: str
    names_a: list[str]  # the row labels as the CSV writes them
    names_b: list[str]
    values: np.ndarray  # (len(names_a), len(names_b))
    n_images: int
    seconds: float
    addresses_a: list[str] = field(default_factory=list)
    addresses_b: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the numbers cannot be trusted for here

    @property
    def csv(self) -> Path:
        return self.out / "similarity.csv"

    @property
    def plot(self) -> Path:
        return self.out / "similarity.png"

    def to_pandas(self):
        """``similarity.csv`` as a :class:`pandas.DataFrame`: columns ``a, b, method, value``."""
        import pandas as pd

        label = "cka-minibatch" if self.estimator == "minibatch" else self.method
        return pd.DataFrame(
            [(a, b, label, float(self.values[i, j])) for i, a in enumerate(self.names_a)
             for j, b in enumerate(self.names_b)],
            columns=["a", "b", "method", "value"],
        )  # fmt: skip


def store_rows(store: FeatureStore, split: str) -> np.ndarray:
    """The rows of ``store`` compared for ``split`` (``all`` or a split's name): usable (not skipped)."""
    keep = ~store.skipped
    if split != "all":
        keep &= store.splits == split
    return np.flatnonzero(keep)


def store_layer_source(store: FeatureStore, addresses: list[str], rows: np.ndarray) -> LayerSource:
    """The layers ``addresses`` of ``store`` on ``rows`` (in that order), read on demand; a
    non-finite value among them is an error naming the layer."""

    def read(address: str, positions: np.ndarray) -> np.ndarray:
        r = rows[positions]
        if len(r) and np.all(np.diff(r) == 1):  # consecutive rows: one slice
            x = store.features(address, rows=slice(int(r[0]), int(r[-1]) + 1))
        else:
            order = np.argsort(r, kind="stable")
            x = np.empty((len(r), store.layer(address).channels), dtype=np.float32)
            x[order] = store.features(address, rows=r[order])
        bad = ~np.isfinite(x)
        if bad.any():
            raise RunError(
                f"layer {address} of {store.path} has {int(bad.sum())} non-finite values among the compared rows; "
                "re-extract it (--dtype float32 if it was float16)"
            )
        return x

    widths = tuple(store.layer(a).channels for a in addresses)
    return LayerSource(tuple(addresses), widths, len(rows), read, block_rows=store.chunk_rows)


def matched_rows(a: FeatureStore, b: FeatureStore, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``a`` and of ``b`` holding the same images, in ``a``'s order; stores whose images
    differ are refused, naming the difference."""
    rows_a, rows_b = store_rows(a, split), store_rows(b, split)
    ids_a, ids_b = a.ids[rows_a], b.ids[rows_b]
    for store, ids in ((a, ids_a), (b, ids_b)):
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise UsageError(f"store {store.path} holds image id {uniq[counts > 1][0]!r} more than once")
    only_a, only_b = np.setdiff1d(ids_a, ids_b), np.setdiff1d(ids_b, ids_a)
    if len(only_a) or len(only_b):
        which = f"the {split} split of " if split != "all" else ""
        first = only_a[0] if len(only_a) else only_b[0]
        raise UsageError(
            f"{which}{a.path} and {b.path} do not hold the same images: {len(only_a)} of {len(ids_a)} only in the "
            f"first, {len(only_b)} of {len(ids_b)} only in the second (e.g. {first!r}); compare stores extracted "
            "from one dataset"
        )
    where_b = dict(zip(ids_b.tolist(), rows_b.tolist(), strict=True))
    return rows_a, np.array([where_b[i] for i in ids_a.tolist()], dtype=np.int64)


def _store_names(a: FeatureStore, b: FeatureStore) -> tuple[str, str]:
    """How two stores' layers are prefixed: their names, told apart when they are alike."""
    na, nb = a.path.stem, b.path.stem
    return (na, nb) if na != nb else (f"{na}#1", f"{nb}#2")


def default_out(config: SimilarityConfig) -> Path:
    from ..runtime.locations import store_location

    name = slug(store_location(config.store).stem)
    if config.vs:
        name += f"-vs-{slug(store_location(config.vs).stem)}"
    return cache_root() / "runs" / f"similarity-{name}-{config.method}-{time.strftime('%Y%m%d-%H%M%S')}"


def distinct_layers(store: FeatureStore, spec: str) -> list[str]:
    """The store's addresses ``spec`` names, one per stored array (an alias such as ResNet's ``2``
    next to ``2.4`` holds the same features; the block end's name is kept)."""
    chosen = resolve_store_layers(store, spec)
    by_array: dict[str, str] = {}
    for address in chosen:
        array = store.layer(address).array
        if array not in by_array or "." in by_array[array]:
            by_array[array] = address
    keep = set(by_array.values())
    return [a for a in chosen if a in keep]


def run_similarity(config: SimilarityConfig, *, progress: bool = True) -> SimilarityResult:
    """Compute ``config.method`` between cut points of ``config.store`` (and ``config.vs``) and
    write ``similarity.csv``, ``similarity.png`` and ``similarity.json`` into ``config.out`` (see
    the module docstring).

    Parameters
    ----------
    config : SimilarityConfig
        The stores, the method, the estimator and the images compared (``run`` must be empty:
        that request is :func:`~tlmic_feats.finetune.reuse.feature_reuse`'s).
    progress : bool
        Show a progress bar.

    Returns
    -------
    SimilarityResult

    Raises
    ------
    UsageError
        Two stores that do not hold the same images (one line, naming the difference), fewer than
        4 images, an unknown layer.

    Examples
    --------
    >>> result = run_similarity(SimilarityConfig(store="cache/stores/demo.zarr", out="sim"))  # doctest: +SKIP
    >>> result.to_pandas().pivot(index="a", columns="b", values="value")                    # doctest: +SKIP
    """
    from ..runtime.files import write_json
    from ..runtime.progress import progress_bar

    config.validate()
    if not config.store:
        raise UsageError(f"{name_of(config, 'run')} is a finetuning run: feature_reuse(config) measures it")
    split = config.split_for_store
    store_a = FeatureStore.open(config.store)
    store_b = FeatureStore.open(config.vs) if config.vs else None
    layers_a = distinct_layers(store_a, config.layers)
    if store_b is None:
        rows_a, rows_b, layers_b = store_rows(store_a, split), None, layers_a
        names_a = names_b = [layer_label(a) for a in layers_a]
    else:
        rows_a, rows_b = matched_rows(store_a, store_b, split)
        layers_b = distinct_layers(store_b, config.layers)
        prefix_a, prefix_b = _store_names(store_a, store_b)
        names_a = [f"{prefix_a}:{layer_label(a)}" for a in layers_a]
        names_b = [f"{prefix_b}:{layer_label(a)}" for a in layers_b]
    n = len(rows_a)
    if n < 4:
        where = f"the {split} split of " if split != "all" else ""
        raise UsageError(f"{where}{store_a.path} has {n} usable images; layer similarity needs at least 4")
    source_a = store_layer_source(store_a, layers_a, rows_a)
    source_b = None if store_b is None else store_layer_source(store_b, layers_b, rows_b)
    widths = source_a.widths + (source_b.widths if source_b is not None else ())
    estimator = config.estimator
    if estimator == "auto":
        estimator = choose_estimator(n, widths, config.method, config.max_bytes)
    notes = []
    wide = sorted(min(c, n) for c in widths)[-2:]
    if config.method == "svcca" and sum(wide) >= n / 10:
        notes.append(
            f"SVCCA on {n} images of layers up to {wide[-1]} features wide: CCA correlates directions by chance "
            "when the two layers' kept directions are not few against the images, so pairs of wide layers score "
            "high whatever they hold; compare SVCCA values between layers of similar width, or use cka"
        )
    out = Path(config.out) if config.out else default_out(config)
    record = {
        "config": config.record,
        "store": str(store_a.path),
        "vs": str(store_b.path) if store_b is not None else "",
        "n_images": n,
    }
    claim_run_dir(out, record, what="similarity run", record_file="similarity.json", overwrite=config.overwrite)
    bar = progress_bar(0, f"{config.method} similarity", "window" if estimator == "minibatch" else "pair", progress,
                       leave=False)  # fmt: skip

    def advance(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    t0 = time.perf_counter()
    try:
        values = similarity_matrix(
            source_a,
            source_b,
            method=config.method,
            estimator=estimator,
            batch_size=config.batch_size,
            passes=config.passes,
            seed=config.seed,
            max_bytes=config.max_bytes,
            progress=advance,
        )
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    result = SimilarityResult(
        out, config.method, estimator, names_a, names_b, values, n, seconds, layers_a, layers_b, notes
    )
    write_similarity_csv(result)
    plot_heatmap(result, title=_title(config, store_a, store_b, n, split))
    write_json(
        out / "similarity.json", {**record, "estimator": estimator, "seconds": round(seconds, 3), "notes": notes}
    )
    return result


def write_similarity_csv(result: SimilarityResult) -> Path:
    """``similarity.csv``: ``a, b, method, value`` for every cell of the matrix."""
    with atomic_path(result.csv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "method", "value"])
        for row in result.to_pandas().itertuples(index=False):
            w.writerow([row.a, row.b, row.method, f"{row.value:.10g}"])
    return result.csv


def _title(config: SimilarityConfig, a: FeatureStore, b: FeatureStore | None, n: int, split: str) -> str:
    images = f"{n} images" + (f" ({split})" if split != "all" else "")
    what = f"cut points of {a.path.stem}" if b is None else f"{a.path.stem} vs {b.path.stem}"
    return f"{config.method}: {what}, {images}"


def plot_heatmap(result: SimilarityResult, *, title: str = "") -> Path:
    """``similarity.png``: the matrix, the first store's cut points down, the second's across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = result.values
    rows, cols = values.shape
    side = lambda k: min(16.0, max(3.5, 0.3 * k + 1.5))  # noqa: E731
    fig, ax = plt.subplots(figsize=(side(cols) + 1.2, side(rows)))
    low = min(0.0, float(np.nanmin(values))) if np.isfinite(values).any() else 0.0
    im = ax.imshow(values, vmin=low, vmax=1.0, cmap="viridis", interpolation="nearest")
    strip = lambda names: [n.rsplit(":", 1)[-1] for n in names]  # noqa: E731
    ax.set_yticks(range(rows), strip(result.names_a), fontsize=7)
    ax.set_xticks(range(cols), strip(result.names_b), fontsize=7, rotation=90)
    if result.names_a != result.names_b:
        ax.set_ylabel(result.names_a[0].rsplit(":", 1)[0])
        ax.set_xlabel(result.names_b[0].rsplit(":", 1)[0])
    if rows * cols <= 100:
        for i in range(rows):
            for j in range(cols):
                if np.isfinite(values[i, j]):
                    color = "white" if values[i, j] < 0.6 else "black"
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=6, color=color)
    label = "cka-minibatch" if result.estimator == "minibatch" else result.method
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, result.plot, dpi=120)
    return result.plot


def summarize(result: SimilarityResult) -> list[str]:
    """A few lines for the terminal: where the representation changes most (one store), or the
    same cut point in both stores (two stores that share cut points)."""
    v = result.values
    lines = []
    if result.names_a == result.names_b and len(v) > 1:
        steps = [(v[i, i + 1], result.names_a[i], result.names_a[i + 1]) for i in range(len(v) - 1)]
        worst = sorted((s for s in steps if np.isfinite(s[0])), key=lambda s: s[0])[:3]
        if worst:
            lines.append("adjacent cut points least alike: " + ", ".join(f"{a} -> {b} {x:.3f}" for x, a, b in worst))
    elif result.addresses_a and result.addresses_b:
        shared = [a for a in result.addresses_a if a in result.addresses_b]
        if shared:
            pairs = [(a, v[result.addresses_a.index(a), result.addresses_b.index(a)]) for a in shared]
            lines.append("same cut point in both: " + ", ".join(f"{layer_label(a)} {x:.3f}" for a, x in pairs))
    return lines
