"""One extraction's loops: in this process and on a Dask cluster."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..runtime.errors import BadImageError
from ..runtime.paths import cache_root
from ..runtime.progress import progress_bar
from .engines import make_engine
from .pixels import build_pixel_cache
from .store import LayerInfo, StoreWriter
from .workers import dead_workers_reported, spawned_loader

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
