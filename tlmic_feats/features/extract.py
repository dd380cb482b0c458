"""The extract arm: one forward pass of a frozen backbone, pooled features of every cut point.

:func:`extract_features` reads a dataset, runs the backbone truncated after the deepest requested
cut point, taps every requested cut point with forward hooks, pools on the device right after
each tap (C floats per image, never a C x H x W map kept around) and writes the results shard by
shard into a :class:`~tlmic_feats.features.store.FeatureStore`. Interrupted runs resume where they stopped;
finished runs are not redone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..backbones.cutpoints import select_cut_points, storage_groups
from ..backbones.pooling import check_pool, describe_pooling, pooled_width
from ..data.readers import load_manifest
from ..runtime.devices import resolve_device
from ..runtime.errors import BadImageError, StoreError
from ..runtime.locations import store_location
from ..runtime.locks import StoreLock
from ..runtime.paths import cache_root, slug
from ..runtime.progress import default_log, progress_bar
from .auto import choose_engine
from .config import ExtractConfig
from .engines import make_engine
from .pixels import build_pixel_cache
from .store import FeatureStore, LayerInfo, StoreWriter, open_for_writing
from .workers import dead_workers_reported, spawned_loader


@dataclass
class ExtractReport:
    """What one call of :func:`extract_features` did."""

    store: FeatureStore
    computed_images: int = 0
    seconds: float = 0.0
    skipped_ids: list[str] = field(default_factory=list)
    already_complete: bool = False
    input_wait_seconds: float = 0.0  # time the engine waited for decoded pixels

    @property
    def images_per_second(self) -> float:
        return self.computed_images / self.seconds if self.seconds > 0 else float("nan")

    def to_pandas(self):
        """The store's cut points as a :class:`pandas.DataFrame`, one row per layer in depth order:
        ``layer`` (address), ``module``, ``channels`` (feature columns of the layer; twice the
        channels with ``avgmax`` pooling), ``stride`` and ``array`` (the stored array; an alias such
        as ResNet's block end ``2``, which is unit ``2.4``, names its unit's array).

        >>> extract_features(config).to_pandas()                                     # doctest: +SKIP
        """
        import pandas as pd

        columns = ["layer", "module", "channels", "stride", "array"]
        rows = [(i.address, i.module, i.channels, i.stride, i.array) for i in self.store.layers]
        return pd.DataFrame(rows, columns=columns)


# --- the forward pass ----------------------------------------------------------------------------


class PixelDataset:
    """Decoded, resized, center-cropped uint8 images; a row that fails to decode is returned with
    its error message instead of raising inside a worker (the main process decides)."""

    def __init__(self, source, preprocess) -> None:
        self.source = source
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        import torch

        from ..data.images import resize_center_crop

        p = self.preprocess
        try:
            im = self.source.load(i, min_side=p.resize_size)
            arr = resize_center_crop(
                im, resize_size=p.resize_size, input_size=p.input_size, interpolation=p.interpolation
            )
            return i, torch.from_numpy(arr.copy())[None], ""
        except BadImageError as e:
            return i, torch.zeros(1, p.input_size, p.input_size, dtype=torch.uint8), str(e)


def _shard_batches(writer, shards: list[int], batch_size: int) -> list[list[int]]:
    batches = []
    for s in shards:
        start, stop = writer.shard_rows(s)
        batches.extend(list(range(b, min(stop, b + batch_size))) for b in range(start, stop, batch_size))
    return batches


def _auto_workers(n_rows: int, source) -> int:
    import os

    from ..data.manifest import ArrayImageSource

    if isinstance(source, ArrayImageSource) or n_rows <= 512:
        return 0  # arrays are in memory; small runs don't repay worker start-up
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def default_store_path(config: ExtractConfig, fingerprint: dict) -> Path:
    import hashlib
    import json

    content = {k: v for k, v in fingerprint.items() if k != "tlmic_version"}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:10]
    dataset = slug(Path(config.data.path).resolve().name)
    weights = slug(config.weights if config.weights in ("imagenet", "random") else fingerprint["weights"]["kind"])
    return (
        cache_root()
        / "stores"
        / dataset
        / (f"{slug(config.backbone)}-{weights}-{config.pool}-{slug(config.layers)[:40]}-{digest}.zarr")
    )


def store_fingerprint(config: ExtractConfig, backbone, selected, manifest, engine: str, precision: str) -> dict:
    """What defines a store's contents (its root attrs; a rerun with other values is refused)."""
    fingerprint = {
        "backbone": backbone.name,
        "weights": {"kind": backbone.weights.kind, "id": backbone.weights.id, "sha256": backbone.weights.sha256},
        "preprocess": asdict(backbone.preprocess),
        # a single-channel network (torchxrayvision's) sees the grey image itself
        "decode": {"color": "gray8-to-3ch" if backbone.preprocess.channels == 3 else "gray8", "jpeg_draft": True},
        "pool": config.pool,
        "dtype": config.dtype,
        "layers": [cp.address for cp in selected],
        "dataset": manifest.fingerprint(),
        "engine": engine,
        "precision": precision,
        "tlmic_version": __version__,
    }
    if selected[0].layout == "tokens":  # recorded only for transformers: CNN stores keep their fingerprint
        fingerprint["tokens"] = {
            "prefix_tokens": selected[0].prefix,
            "class_token": selected[0].class_token,
            "pooled": describe_pooling(config.pool, selected[0]),
        }
    return fingerprint


def finished_store(config: ExtractConfig) -> FeatureStore | None:
    """The finished store this extraction would produce, found without building the backbone (a
    rerun's answer in a second instead of the time it takes to import torch and build the network):
    the same recorded configuration, the same data (by the manifest's fingerprint) and the same
    weights file. None when that cannot be told without the network; :func:`extract_features` then
    checks the whole fingerprint as before."""
    import json

    from ..backbones.availability import weights_sha256_without_building
    from .locate import stores_for

    if config.overwrite or config.cluster or "auto" in (config.engine, config.precision):
        return None  # ("auto" resolves by hardware: the full fingerprint check decides)
    sha = weights_sha256_without_building(config.backbone, config.weights)
    if sha is None:
        return None
    if config.store:
        try:
            candidates = [FeatureStore.open(config.store)]
        except (StoreError, OSError, ValueError):  # absent, unfinished or foreign: the full path decides and explains
            return None
    else:
        candidates = stores_for(config.data.path, backbone=config.backbone)
    wanted = json.loads(json.dumps(asdict(config)))
    manifest = None
    for store in candidates:
        recorded = {k: v for k, v in store.config.items() if k not in ("store", "engine_choice")}
        fp = store.fingerprint
        if recorded != {k: v for k, v in wanted.items() if k != "store"} or fp.get("weights", {}).get("sha256") != sha:
            continue
        if fp.get("tlmic_version") != __version__:
            continue
        manifest = manifest or load_manifest(config.data)
        if fp.get("dataset") == manifest.fingerprint():
            return store
    return None


def extract_features(
    config: ExtractConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_shard: Callable[[int, int], None] | None = None,
) -> ExtractReport:
    """Extract pooled features of every requested cut point into a feature store.

    ``on_shard(done, total)`` is called after each shard is committed (progress reporting; tests
    use it to interrupt a run). Returns an :class:`ExtractReport` whose ``store`` is the finished
    :class:`FeatureStore`.
    """
    config.validate()
    log = log or default_log(progress)
    finished = finished_store(config)
    if finished is not None:
        return ExtractReport(finished, already_complete=True)
    from ..backbones.registry import build_backbone

    device = resolve_device("cpu" if config.engine == "openvino" and config.device == "auto" else config.device)
    manifest = load_manifest(config.data)
    if manifest.meta.get("split_note"):
        log(f"note: {manifest.meta['split_note']}")
    if manifest.meta.get("patients_straddling"):
        log(
            f"warning: the data's own split puts {manifest.meta['patients_straddling']} patient(s) in more than one "
            "split; metrics will be optimistic (`tlmic data check` lists them)"
        )
    backbone = build_backbone(config.backbone, config.weights, seed=config.seed, input_size=config.input_size)
    choice = choose_engine(config.engine, config.precision, backbone.name, device, log=log)
    engine, precision = choice.engine, choice.precision
    selected = select_cut_points(backbone.cut_points, config.layers, backbone.name)
    check_pool(config.pool, selected, backbone.name)
    arrays = storage_groups(selected)
    layers = [
        LayerInfo(cp.address, cp.module, pooled_width(cp.channels, config.pool), cp.stride, arrays[cp.address])
        for cp in selected
    ]
    fingerprint = store_fingerprint(config, backbone, selected, manifest, engine, precision)
    path = store_location(config.store) if config.store else default_store_path(config, fingerprint)
    record = asdict(config)
    record["store"] = str(path)
    record["engine_choice"] = asdict(choice)

    with StoreLock(path):
        writer, finished = open_for_writing(
            path,
            fingerprint=fingerprint,
            config=record,
            manifest=manifest,
            layers=layers,
            chunk_rows=config.chunk_rows,
            dtype=config.dtype,
            overwrite=config.overwrite,
        )
        if finished:
            return ExtractReport(FeatureStore.open(path), already_complete=True)
        pending = writer.pending_shards()
        # Aliased cut points (ResNet's "2" is "2.4") are computed once, under their array.
        stored = tuple(cp for cp in selected if arrays[cp.address] == cp.address)
        engine_key = {k: fingerprint[k] for k in ("backbone", "weights", "preprocess", "pool", "layers")}
        t0 = time.perf_counter()
        if config.cluster:
            n_todo, skipped_ids, waited = _extract_on_cluster(
                config,
                manifest,
                backbone.preprocess,
                writer,
                pending,
                stored,
                layers,
                engine,
                precision,
                engine_key,
                log,
                progress,
                on_shard,
            )
        else:
            n_todo, skipped_ids, waited = _extract_here(
                config,
                manifest,
                backbone,
                writer,
                pending,
                stored,
                layers,
                device,
                engine,
                precision,
                engine_key,
                log,
                progress,
                on_shard,
            )
        seconds = time.perf_counter() - t0
        store = writer.finalize()
    return ExtractReport(
        store, computed_images=n_todo, seconds=seconds, skipped_ids=skipped_ids, input_wait_seconds=waited
    )


def _extract_here(
    config,
    manifest,
    backbone,
    writer,
    pending,
    stored,
    layers,
    device,
    engine_name,
    precision,
    engine_key,
    log,
    progress,
    on_shard,
) -> tuple[int, list[str], float]:
    """The single-process extraction loop: ``(images computed, skipped ids, seconds waiting for input)``."""
    import torch

    engine = make_engine(
        engine_name,
        backbone,
        stored,
        config.pool,
        device,
        precision,
        compile=config.compile,
        cache_dir=cache_root(),
        key=engine_key,
    )
    batches = _shard_batches(writer, pending, config.batch_size)
    n_todo = sum(len(b) for b in batches)
    workers = config.workers if config.workers >= 0 else _auto_workers(n_todo, manifest.source)
    pre = backbone.preprocess
    if config.pixel_cache and n_todo:
        cache = build_pixel_cache(
            manifest, pre.resize_size, pre.interpolation, cache_root() / "pixels", workers=workers, progress=progress
        )
        source = _cached_batches(cache, batches, pre.input_size)
    elif workers > 0:
        source = spawned_loader(
            PixelDataset(manifest.source, pre), workers, batch_sampler=batches, pin_memory=device.startswith("cuda")
        )
    else:
        source = iter(
            torch.utils.data.DataLoader(
                PixelDataset(manifest.source, pre), batch_sampler=batches, pin_memory=device.startswith("cuda")
            )
        )
    bar = progress_bar(
        len(manifest), f"extract {backbone.name}", "img", progress, initial=len(manifest) - n_todo, smoothing=0.1
    )
    addresses = [cp.address for cp in stored]
    buffers: dict[int, ShardBuffer] = {}
    skipped_ids: list[str] = []
    done_shards = writer.n_shards - len(pending)
    waited = 0.0
    try:
        with dead_workers_reported():  # a decode worker's death may surface anywhere in the loop
            while True:
                t_wait = time.perf_counter()
                item = next(source, None)
                waited += time.perf_counter() - t_wait
                if item is None:
                    break
                rows, pixels, errors = item
                rows = np.asarray(rows)
                shard = int(rows[0]) // writer.chunk_rows
                buf = buffers.setdefault(shard, ShardBuffer(writer.shard_rows(shard), layers, config.dtype))
                bad = buf.add(rows, engine(pixels), errors, addresses, manifest.ids, config.on_bad_image)
                for j in np.flatnonzero(bad):
                    skipped_ids.append(str(manifest.ids[rows[j]]))
                    log(f"skipped unreadable image: {errors[j]}")
                bar.update(len(rows))
                if buf.complete:
                    writer.write_shard(shard, *buf.result())
                    del buffers[shard]
                    done_shards += 1
                    if on_shard:
                        on_shard(done_shards, writer.n_shards)
    finally:
        try:
            bar.close()
        finally:
            getattr(source, "close", lambda: None)()  # a generator's workers and files go now, not at GC
    return n_todo, skipped_ids, waited


class ShardBuffer:
    """One shard's rows of every array, filled batch by batch, written when complete."""

    def __init__(self, rows: tuple[int, int], layers: list[LayerInfo], dtype: str) -> None:
        self.start, self.stop = rows
        n = self.stop - self.start
        self.features = {li.array: np.empty((n, li.channels), dtype=dtype) for li in layers}
        self.skipped = np.zeros(n, bool)
        self.filled = 0

    def add(self, rows: np.ndarray, outputs: list[np.ndarray], errors, arrays, ids, on_bad_image: str) -> np.ndarray:
        """Store one batch's pooled outputs (one per array, in ``arrays`` order); returns the unreadable rows' mask.
        With ``on_bad_image="error"`` an unreadable row raises instead."""
        bad = np.array([bool(e) for e in errors])
        if bad.any() and on_bad_image == "error":
            j = int(np.flatnonzero(bad)[0])
            raise BadImageError(f"{errors[j]}; id {ids[rows[j]]} (pass --on-bad-image skip to record it and go on)")
        offset = rows - self.start
        for array, values in zip(arrays, outputs, strict=True):
            self.features[array][offset] = values
        self.skipped[offset[bad]] = True
        self.filled += len(rows)
        return bad

    @property
    def complete(self) -> bool:
        return self.filled == self.stop - self.start

    def result(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        for arr in self.features.values():
            arr[self.skipped] = np.nan  # an unreadable image has no features
        return self.features, self.skipped


# --- on a Dask cluster --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ShardJob:
    """What every shard task shares (sent once with each task; small)."""

    store: str
    engine: object  # cluster.EngineSpec
    preprocess: object
    stored: tuple[str, ...]
    layers: tuple[LayerInfo, ...]
    dtype: str
    batch_size: int
    on_bad_image: str


def extract_shard(job: _ShardJob, data, shard: int, threads: dict[str, int]) -> tuple[int, list[tuple[int, str]]]:
    """A Dask task: decode one shard's images, run the worker's backbone, write the shard's rows of
    every array and then its done flag. Returns ``(shard, [(row, error) of skipped rows])``."""
    import torch

    from ..runtime.cluster import my_threads
    from .engines import worker_engine

    source, ids = data
    _, engine = worker_engine(job.engine, my_threads(threads))
    writer = StoreWriter.attach(job.store)
    start, stop = writer.shard_rows(shard)
    dataset = PixelDataset(source, job.preprocess)
    buf = ShardBuffer((start, stop), list(job.layers), job.dtype)
    skipped = []
    for b in range(start, stop, job.batch_size):
        items = [dataset[i] for i in range(b, min(stop, b + job.batch_size))]
        rows = np.array([i for i, _, _ in items])
        errors = [e for _, _, e in items]
        with torch.inference_mode():
            outputs = engine(torch.stack([p for _, p, _ in items]))
        bad = buf.add(rows, outputs, errors, job.stored, ids, job.on_bad_image)
        skipped += [(int(rows[j]), errors[j]) for j in np.flatnonzero(bad)]
    writer.write_shard(shard, *buf.result())
    return shard, skipped


def _extract_on_cluster(
    config,
    manifest,
    preprocess,
    writer,
    pending,
    stored,
    layers,
    engine,
    precision,
    engine_key,
    log,
    progress,
    on_shard,
) -> tuple[int, list[str], float]:
    """As :func:`_extract_here`, on a Dask cluster (input waits happen on the workers: reported as 0)."""
    import json

    from ..runtime.cluster import check_visible, connect, gather, torch_threads_per_worker
    from .engines import EngineSpec

    spec = EngineSpec(
        backbone=config.backbone,
        weights=config.weights,
        seed=config.seed,
        input_size=config.input_size,
        addresses=tuple(cp.address for cp in stored),
        pool=config.pool,
        engine=engine,
        precision=precision,
        device="cpu" if engine == "openvino" else config.device,
        compile=config.compile,
        cache_dir=str(cache_root()),
        key=json.dumps(engine_key, sort_keys=True),
    )
    job = _ShardJob(
        store=str(writer.path),
        engine=spec,
        preprocess=preprocess,
        stored=spec.addresses,
        layers=tuple(layers),
        dtype=config.dtype,
        batch_size=config.batch_size,
        on_bad_image=config.on_bad_image,
    )
    skipped_ids: list[str] = []
    n_todo = sum(writer.shard_rows(s)[1] - writer.shard_rows(s)[0] for s in pending)
    if not pending:
        return n_todo, skipped_ids, 0.0
    with connect(config.cluster, device=config.device, log=log) as client:
        check_visible(client, writer.path)
        threads = torch_threads_per_worker(client)
        data = client.scatter((manifest.source, manifest.ids), broadcast=True, hash=False)
        futures = [
            client.submit(extract_shard, job, data, shard, threads, key=f"tlmic-extract-shard-{shard}", pure=False)
            for shard in pending
        ]
        bar = progress_bar(
            len(manifest),
            f"extract {config.backbone} on {config.cluster}",
            "img",
            progress,
            initial=len(manifest) - n_todo,
            smoothing=0.1,
        )
        done = [writer.n_shards - len(pending)]

        def finished(result) -> None:
            shard, skipped = result
            start, stop = writer.shard_rows(shard)
            for row, error in skipped:
                skipped_ids.append(str(manifest.ids[row]))
                log(f"skipped unreadable image: {error}")
            bar.update(stop - start)
            done[0] += 1
            if on_shard:
                on_shard(done[0], writer.n_shards)

        try:
            gather(client, futures, finished)
        finally:
            bar.close()
    return n_todo, skipped_ids, 0.0


def _cached_batches(cache, batches: list[list[int]], input_size: int):
    """(rows, uint8 (N, 1, s, s) tensor, errors) per batch from the pixel cache, read one batch
    ahead in a thread so that reading overlaps the forward pass."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from ..backbones.preprocess import center_crop

    def read(rows):
        px = torch.from_numpy(cache.read(np.asarray(rows)))[:, None]
        errors = [cache.errors.get(r, "") if cache.bad[r] else "" for r in rows]
        return np.asarray(rows), center_crop(px, input_size).contiguous(), errors

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(read, batches[0]) if batches else None
        for i in range(len(batches)):
            result = future.result()
            future = pool.submit(read, batches[i + 1]) if i + 1 < len(batches) else None
            yield result
