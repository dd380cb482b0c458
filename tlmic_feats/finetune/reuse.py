"""Feature reuse of a finetuned network: per cut point, how alike the pretrained and the finetuned
network's pooled features are on the same images (linear CKA by default), which shows the layers
finetuning kept and those it rewrote (Raghu et al. 2019, Transfusion; Neyshabur et al. 2020).

:func:`feature_reuse` rebuilds the run's network from ``run.json`` and ``best.pt``, runs the
pretrained and the finetuned backbone through the extraction's tapping network
(:func:`~tlmic_feats.backbones.cutpoints.tap_network`: every cut point in one pass, pooled as the
run's head pooled) on the images of one split (test by default), and writes into the run directory
``feature_reuse.csv`` (``address, method, value, split, n_images``; the rows of other methods or
splits computed before are kept) and ``feature_reuse.png``. ``tlmic similarity --run DIR`` runs it.
Both networks' pooled features of the compared images are held in memory (float32, ``2 n`` times
the summed widths of the cut points: about 50 MB for 2,000 images and EfficientNet-Lite0's 17).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backbones.cutpoints import storage_groups
from ..backbones.taps import address_key
from ..features.similarity import LayerSource, choose_estimator, similarity_matrix
from ..features.similarity_run import SimilarityConfig
from ..runtime.errors import UsageError
from ..runtime.files import atomic_path, save_figure
from ..runtime.rundir import address_from_label, layer_label

REUSE_FILE = "feature_reuse.csv"
COLUMNS = ("address", "method", "value", "split", "n_images")


@dataclass(frozen=True)
class FeatureReuse:
    """Per cut point (depth order), the similarity between the pretrained and the finetuned
    network's pooled features of a run, on ``n_images`` images of ``split``."""

    run: Path
    method: str  # as feature_reuse.csv writes it: cka, cka-debiased, svcca, or cka-minibatch
    split: str
    n_images: int
    addresses: tuple[str, ...]
    values: tuple[float, ...]

    def by_address(self) -> dict[str, float]:
        """``{address: value}``."""
        return dict(zip(self.addresses, self.values, strict=True))

    @property
    def csv(self) -> Path:
        return self.run / REUSE_FILE

    @property
    def plot(self) -> Path:
        return self.run / "feature_reuse.png"


def feature_reuse(
    config: SimilarityConfig | str | Path, *, progress: bool = False, log: Callable[[str], None] | None = None
) -> FeatureReuse:
    """The similarity per cut point between the pretrained backbone and the finetuned network of a
    finished run, on the run's test images (by default), written into the run directory.

    Parameters
    ----------
    config : SimilarityConfig, str or Path
        A request with ``run`` set (its ``method``, ``estimator``, ``layers`` and ``split`` apply;
        ``split="auto"`` is the test split), or just the run directory (linear CKA on the test
        images). The run must be finished (``run.json``, ``metrics.json``, ``best.pt``) and train
        a pretrained backbone: truncated (any cut point) or hybrid; a CBR network has no pretrained
        counterpart. Only cut points up to the run's truncation are compared, one per distinct
        tensor (a block end rather than its last unit).
    progress : bool
        Show a progress bar over the batches of images.
    log : callable, optional
        Where notes go (default: nowhere).

    Returns
    -------
    FeatureReuse
        Depth-ordered addresses and their values; also written to ``feature_reuse.csv`` and
        ``feature_reuse.png`` in the run directory.

    Raises
    ------
    UsageError
        Not a finished finetuning run, a CBR network, fewer than 4 images in the split, or data or
        weights that changed since the run.

    Examples
    --------
    >>> reuse = feature_reuse("cache/runs/finetune-cxr-efficientnet_lite0-pretrained-t7-f1-s0")  # doctest: +SKIP
    >>> reuse.by_address()["3"]                                                                  # doctest: +SKIP
    0.93
    """
    import torch

    from ..backbones.cutpoints import select_cut_points, tap_network
    from ..backbones.preprocess import center_crop
    from ..backbones.registry import build_backbone
    from ..data.readers import load_manifest
    from ..runtime.devices import resolve_device
    from ..runtime.options import from_record
    from ..runtime.progress import progress_bar
    from .config import FinetuneConfig
    from .losses import n_outputs_for
    from .setup import build_model, load_pixels_for, trained_cut

    if not isinstance(config, SimilarityConfig):
        config = SimilarityConfig(run=str(config))
    config.validate()
    if not config.run:
        raise UsageError("feature_reuse measures a finetuning run: give SimilarityConfig(run=...)")
    log = log or (lambda msg: None)
    run = Path(config.run)
    split = config.split_for_run
    record = _finished_run(run)
    ft = from_record(FinetuneConfig, record["config"])
    if ft.arch.startswith("cbr-"):
        raise UsageError(f"{run} trained {ft.arch} from scratch: it has no pretrained network to compare with")
    manifest = load_manifest(ft.data)
    if manifest.fingerprint() != record["dataset"]:
        raise UsageError(f"the data at {ft.data.path} changed since the run {run}; its feature reuse needs its images")
    rows = np.arange(len(manifest)) if split == "all" else np.flatnonzero(manifest.splits == split)
    if len(rows) < 4:
        raise UsageError(f"the {split} split of {ft.data.path} has {len(rows)} images; similarity needs at least 4")

    def backbone():
        b = build_backbone(ft.backbone, ft.weights, seed=ft.seed, input_size=ft.input_size)
        if b.weights.sha256 != record["weights_sha256"]:
            raise UsageError(f"the pretrained weights {ft.weights!r} are not those the run {run} started from")
        return b

    pretrained, finetuned = backbone(), backbone()
    cut = trained_cut(ft, finetuned)
    net = build_model(ft, finetuned, cut, n_outputs_for(manifest.label_kind, len(manifest.label_names)))
    # The network shares its modules with `finetuned.model`: the trained weights reach the tap network.
    net.load_state_dict(torch.load(run / "best.pt", map_location="cpu", weights_only=True)["model"])
    cut_points = _cut_points_to(select_cut_points(finetuned.cut_points, config.layers, finetuned.name), cut.address)
    if not cut_points:
        raise UsageError(f"no cut point of {config.layers!r} lies at or before the run's truncation at {cut.address}")
    device = resolve_device(ft.device)
    pixels = torch.from_numpy(load_pixels_for(manifest, rows, finetuned.preprocess, 0, use_cache=ft.pixel_cache))
    size = finetuned.preprocess.input_size
    taps = [
        tap_network(b.family, b.model, cut_points, ft.pool, b.preprocess).eval().to(device)
        for b in (pretrained, finetuned)
    ]
    feats: list[list[list[np.ndarray]]] = [[[] for _ in cut_points] for _ in taps]
    batch = max(ft.training.batch_size, 32)
    bar = progress_bar(len(rows), "feature reuse", "img", progress, leave=False)
    with torch.inference_mode():
        for start in range(0, len(rows), batch):
            x = center_crop(pixels[start : start + batch, None], size, finetuned.preprocess.interpolation).to(device)
            for side, tap in zip(feats, taps, strict=True):
                for kept, out in zip(side, tap(x), strict=True):
                    kept.append(out.float().cpu().numpy())
            bar.update(len(x))
    bar.close()
    pre = [np.concatenate(f) for f in feats[0]]
    fin = [np.concatenate(f) for f in feats[1]]
    estimator = config.estimator
    if estimator == "auto":
        estimator = choose_estimator(len(rows), [p.shape[1] for p in pre] * 2, config.method, config.max_bytes)
    values = tuple(
        float(
            similarity_matrix(
                LayerSource.from_arrays({"pretrained": p}),
                LayerSource.from_arrays({"finetuned": f}),
                method=config.method,
                estimator=estimator,
                batch_size=config.batch_size,
                passes=config.passes,
                seed=config.seed,
                max_bytes=config.max_bytes,
            )[0, 0]
        )
        for p, f in zip(pre, fin, strict=True)
    )
    method = "cka-minibatch" if estimator == "minibatch" else config.method
    result = FeatureReuse(run, method, split, len(rows), tuple(cp.address for cp in cut_points), values)
    write_feature_reuse(result)
    curves = {f"{_arm(ft, cut.address)}, {r.method}": r for r in read_feature_reuse_all(run) if r.split == split}
    plot_feature_reuse(curves, result.plot, title=f"feature reuse of {run.name}, {split} images")
    log(f"wrote {result.csv} and {result.plot}")
    return result


def _finished_run(run: Path) -> dict:
    if not (run / "run.json").is_file():
        raise UsageError(f"{run} is not a finetuning run directory (no run.json)")
    record = json.loads((run / "run.json").read_text())
    if "weights_sha256" not in record or "dataset" not in record:
        raise UsageError(f"{run} is not a finetuning run (its run.json records another kind of run)")
    if not (run / "metrics.json").is_file():
        raise UsageError(f"the run {run} has not finished (no metrics.json); resume it first")
    if not (run / "best.pt").is_file():
        raise UsageError(f"the run {run} kept no best.pt (no validation ever improved); nothing to compare")
    return record


def _cut_points_to(cut_points, address: str) -> list:
    """The cut points at or before ``address``, one per distinct tensor (a block end over its last unit)."""
    kept = [cp for cp in cut_points if address_key(cp.address) <= address_key(address)]
    groups = storage_groups(tuple(kept))
    chosen: dict[str, object] = {}
    for cp in kept:
        rep = groups[cp.address]
        if rep not in chosen or (cp.is_block and not chosen[rep].is_block):
            chosen[rep] = cp
    keep = {cp.address for cp in chosen.values()}
    return sorted((cp for cp in kept if cp.address in keep), key=lambda cp: address_key(cp.address))


def _arm(config, address: str) -> str:
    if config.arch == "hybrid":
        return f"hybrid (to {address})"
    return "full" if config.truncate == "all" else f"truncated at {address}"


def write_feature_reuse(reuse: FeatureReuse) -> Path:
    """``feature_reuse.csv`` in the run directory: one row per cut point; the rows another method or
    split wrote there before are kept."""
    kept = []
    if reuse.csv.is_file():
        with open(reuse.csv, newline="") as f:
            kept = [r for r in csv.DictReader(f) if (r["method"], r["split"]) != (reuse.method, reuse.split)]
    with atomic_path(reuse.csv) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(kept)
        for a, v in zip(reuse.addresses, reuse.values, strict=True):
            w.writerow(dict(address=layer_label(a), method=reuse.method, value=f"{v:.10g}", split=reuse.split,
                            n_images=reuse.n_images))  # fmt: skip
    return reuse.csv


def read_feature_reuse_all(run_dir: str | Path) -> list[FeatureReuse]:
    """Every :class:`FeatureReuse` a run's ``feature_reuse.csv`` holds (one per method and split)."""
    run = Path(run_dir)
    path = run / REUSE_FILE
    if not path.is_file():
        raise UsageError(f"{run} has no {REUSE_FILE}; compute it with `tlmic similarity --run {run}`")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["split"]), []).append(r)
    out = []
    for (method, split), rs in groups.items():
        rs.sort(key=lambda r: address_key(address_from_label(r["address"])))
        addresses = tuple(address_from_label(r["address"]) for r in rs)
        values = tuple(float(r["value"]) for r in rs)
        out.append(FeatureReuse(run, method, split, int(rs[0]["n_images"]), addresses, values))
    return out


def read_feature_reuse(run_dir: str | Path, *, method: str = "cka", split: str = "test") -> FeatureReuse:
    """The :class:`FeatureReuse` of ``method`` on ``split`` that :func:`feature_reuse` wrote into a run."""
    found = {(r.method, r.split): r for r in read_feature_reuse_all(run_dir)}
    if (method, split) not in found:
        have = ", ".join(f"{m} on {s}" for m, s in found)
        raise UsageError(f"{Path(run_dir) / REUSE_FILE} holds no {method} on {split} images; it holds {have}")
    return found[(method, split)]


def stored_feature_reuse(run_dir: str | Path, *, method: str = "cka", split: str = "test") -> tuple[FeatureReuse, float]:
    """The :class:`FeatureReuse` of ``method`` on ``split`` a run holds, computed by
    :func:`feature_reuse` (and written into the run) when it holds none; with the seconds spent
    computing it (0.0 when it was read)."""
    try:
        return read_feature_reuse(run_dir, method=method, split=split), 0.0
    except UsageError:
        start = time.perf_counter()
        reuse = feature_reuse(SimilarityConfig(run=str(run_dir), method=method, split=split))
        return reuse, time.perf_counter() - start


def plot_feature_reuse(curves: Mapping[str, FeatureReuse], path: str | Path, *, title: str = "feature reuse") -> Path:
    """One line per curve (``{label: reuse}``, e.g. full finetuning and the best truncated arm):
    similarity between pretrained and finetuned features by cut point, in depth order, block ends
    in bold on the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    addresses = sorted({a for r in curves.values() for a in r.addresses}, key=address_key)
    where = {a: i for i, a in enumerate(addresses)}
    fig, ax = plt.subplots(figsize=(max(5.0, 0.32 * len(addresses) + 2), 3.6))
    n_images = {r.n_images for r in curves.values()}
    for label, reuse in curves.items():
        ax.plot([where[a] for a in reuse.addresses], reuse.values, "o-", ms=3.5, label=label)
    ax.set_xticks(range(len(addresses)), [layer_label(a) for a in addresses], rotation=90, fontsize=7)
    for tick, a in zip(ax.get_xticklabels(), addresses, strict=True):
        if "." not in a:
            tick.set_fontweight("bold")
    low = min([0.0] + [v for r in curves.values() for v in r.values if np.isfinite(v)])
    ax.set_ylim(low - 0.02, 1.02)
    ax.set_ylabel("pretrained vs finetuned")
    ax.set_xlabel("cut point (block ends in bold)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    suffix = f", {n_images.pop()} images" if len(n_images) == 1 else ""
    ax.set_title(title + suffix, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return Path(path)
