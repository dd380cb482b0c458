"""One extraction job and the two runners that carry it out.

An :class:`ExtractJob` holds what an extraction decided before computing anything: what to extract
(the dataset's rows, their preprocessing, the cut points and the arrays that store them, the dtype,
the policy for unreadable images), where (the store being written) and with which engine
(:class:`~.engines.EngineSpec`: backbone, weights, pool, engine, precision, device). A runner's
``run(job, writer, pending, on_rows, on_shard)`` computes the pending shards and reports each one
with its skipped rows once it is written:

* :class:`LocalRunner` in this process, its batches decoded ahead of the engine (from the pixel
  cache, by decode worker processes, or in this process);
* :class:`DaskRunner` as Dask tasks, one per shard (:func:`extract_shard`), each decoding its
  shard's images and running the worker's engine.

Everything else is shared: the batches of a shard, filling a shard's rows batch by batch
(:func:`fill_shard`, where the unreadable-image policy applies), and writing a shard's rows before
its done flag, which is what makes a killed run resume exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..runtime.errors import BadImageError
from ..runtime.paths import cache_root
from ..runtime.progress import progress_bar
from .store import LayerInfo, StoreWriter

Skipped = list[tuple[int, str]]  # (row, error) of the rows whose image could not be read


@dataclass(frozen=True)
class ExtractJob:
    """What to extract, where and with which engine; the same for every runner.

    ``layers`` are every requested cut point with the array that stores it; the engine computes one
    output per array, in the order of ``engine.addresses`` (aliased cut points such as ResNet's
    ``2``, which is unit ``2.4``, are computed once).
    """

    manifest: object  # data.manifest.Manifest: the rows, their images and ids
    preprocess: object  # backbones.preprocess.Preprocess
    layers: tuple[LayerInfo, ...]
    engine: object  # engines.EngineSpec
    store: str
    dtype: str
    batch_size: int
    on_bad_image: str

    def batches(self, writer: StoreWriter, shards: Iterable[int]) -> list[list[int]]:
        """The rows of ``shards``, in batches of at most ``batch_size`` that never straddle a shard."""
        out = []
        for s in shards:
            start, stop = writer.shard_rows(s)
            out.extend(list(range(b, min(stop, b + self.batch_size))) for b in range(start, stop, self.batch_size))
        return out


def fill_shard(
    job: ExtractJob,
    engine: Callable,
    writer: StoreWriter,
    shard: int,
    batches: Iterable[tuple],
    on_rows: Callable[[int], None] | None = None,
) -> Skipped:
    """Run ``engine`` on the shard's ``batches`` of ``(rows, uint8 pixels, errors)``, write the
    shard's rows of every array and then its done flag; returns the skipped rows."""
    buf = ShardBuffer(writer.shard_rows(shard), job.layers, job.dtype)
    skipped: Skipped = []
    for rows, pixels, errors in batches:
        rows = np.asarray(rows)
        bad = buf.add(rows, engine(pixels), errors, job.engine.addresses, job.manifest.ids, job.on_bad_image)
        skipped += [(int(rows[j]), errors[j]) for j in np.flatnonzero(bad)]
        if on_rows:
            on_rows(len(rows))
    writer.write_shard(shard, *buf.result())
    return skipped


class ShardBuffer:
    """One shard's rows of every array, filled batch by batch, written when complete."""

    def __init__(self, rows: tuple[int, int], layers: Iterable[LayerInfo], dtype: str) -> None:
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

    def result(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        for arr in self.features.values():
            arr[self.skipped] = np.nan  # an unreadable image has no features
        return self.features, self.skipped


# --- decoding ------------------------------------------------------------------------------------


class PixelDataset:
    """Decoded, resized, center-cropped images ``(1, S, S)`` (:attr:`Preprocess.pixel_dtype`); a row that
    fails to decode is returned with its error message instead of raising inside a worker (the main
    process decides)."""

    def __init__(self, source, preprocess) -> None:
        self.source = source
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, str]:
        from ..data.images import resize_center_crop

        p = self.preprocess
        try:
            im = self.source.load(i, min_side=p.resize_size)
            arr = resize_center_crop(
                im, resize_size=p.resize_size, input_size=p.input_size, interpolation=p.interpolation
            )
            return i, np.ascontiguousarray(arr)[None], ""
        except BadImageError as e:
            return i, np.zeros((1, p.input_size, p.input_size), p.pixel_dtype), str(e)


def decode_batch(dataset: PixelDataset, rows: list[int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(rows, pixels (N, 1, S, S), errors)`` of ``rows``, decoded in this process."""
    items = [dataset[i] for i in rows]
    return np.asarray(rows), np.stack([p for _, p, _ in items]), [e for _, _, e in items]


def _cached_batches(cache, batches: list[list[int]], pre) -> Iterator[tuple]:
    """(rows, pixels (N, 1, s, s), errors) per batch from the pixel cache, read one batch ahead in a
    thread so that reading overlaps the forward pass."""
    from concurrent.futures import ThreadPoolExecutor

    from ..backbones.preprocess import center_crop

    def read(rows):
        px = cache.read(np.asarray(rows))[:, None]
        errors = [cache.errors.get(r, "") if cache.bad[r] else "" for r in rows]
        return np.asarray(rows), np.ascontiguousarray(center_crop(px, pre.input_size, pre.interpolation)), errors

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(read, batches[0]) if batches else None
        for i in range(len(batches)):
            result = future.result()
            future = pool.submit(read, batches[i + 1]) if i + 1 < len(batches) else None
            yield result


def run_job(
    job: ExtractJob,
    runner: LocalRunner | DaskRunner,
    writer: StoreWriter,
    *,
    progress: bool = False,
    log: Callable[[str], None] = lambda message: None,
    on_shard: Callable[[int, int], None] | None = None,
) -> tuple[int, list[str], float]:
    """Compute ``job``'s pending shards with ``runner`` (:class:`LocalRunner` or :class:`DaskRunner`),
    with the progress bar, the log of skipped images and ``on_shard(done, total)`` alike for both.
    Returns ``(images computed, skipped ids, seconds)``."""
    pending = writer.pending_shards()
    n, n_todo = len(job.manifest), sum(b - a for a, b in map(writer.shard_rows, pending))
    skipped_ids: list[str] = []
    done = [writer.n_shards - len(pending)]
    bar = []  # made once the runner is set up (after its engine, pixel cache or cluster)

    def on_rows(rows: int) -> None:
        if not bar:
            desc = f"extract {job.engine.backbone}{runner.where}"
            bar.append(progress_bar(n, desc, "img", progress, initial=n - n_todo, smoothing=0.1))
        bar[0].update(rows)

    def shard_done(shard: int, skipped: list[tuple[int, str]]) -> None:
        for row, error in skipped:
            skipped_ids.append(str(job.manifest.ids[row]))
            log(f"skipped unreadable image: {error}")
        done[0] += 1
        if on_shard:
            on_shard(done[0], writer.n_shards)

    t0 = time.perf_counter()
    try:
        runner.run(job, writer, pending, on_rows, shard_done)
    finally:
        if bar:
            bar[0].close()
    return n_todo, skipped_ids, time.perf_counter() - t0


# --- the runners ---------------------------------------------------------------------------------

OnRows = Callable[[int], None]  # n rows computed (called with 0 once set up, before the first batch)
OnShard = Callable[[int, Skipped], None]  # a shard and its skipped rows, once the shard is written


class LocalRunner:
    """Runs a job in this process: the engine here, batches decoded ahead of it (the pixel cache,
    ``workers`` spawned decode processes, or this process). ``input_wait_seconds`` is the time the
    engine waited for decoded pixels."""

    where = ""

    def __init__(self, *, workers: int = -1, pixel_cache: bool = True, progress: bool = False, backbone=None) -> None:
        self.workers = workers
        self.pixel_cache = pixel_cache
        self.progress = progress
        self.backbone = backbone  # the job's backbone when already built here (else built if needed)
        self.input_wait_seconds = 0.0

    def run(self, job: ExtractJob, writer: StoreWriter, pending: list[int], on_rows: OnRows, on_shard: OnShard) -> None:
        from .engines import engine_from_spec
        from .workers import dead_workers_reported

        engine = engine_from_spec(job.engine, backbone=self.backbone)
        source = self._pixels(job, job.batches(writer, pending))

        def timed(n: int) -> Iterator[tuple]:  # the next n batches, the wait for each one timed
            for _ in range(n):
                t = time.perf_counter()
                item = next(source)
                self.input_wait_seconds += time.perf_counter() - t
                yield item

        on_rows(0)
        try:
            with dead_workers_reported():  # a decode worker's death may surface anywhere in the loop
                for shard in pending:
                    n = len(job.batches(writer, [shard]))
                    on_shard(shard, fill_shard(job, engine, writer, shard, timed(n), on_rows))
        finally:
            getattr(source, "close", lambda: None)()  # a generator's workers and files go now, not at GC

    def _pixels(self, job: ExtractJob, batches: list[list[int]]) -> Iterator[tuple]:
        from .pixels import build_pixel_cache
        from .workers import spawned_loader

        manifest, pre = job.manifest, job.preprocess
        n_todo = sum(len(b) for b in batches)
        workers = self.workers if self.workers >= 0 else _auto_workers(n_todo, manifest.source)
        if self.pixel_cache and n_todo:
            cache = build_pixel_cache(
                manifest, pre.resize_size, pre.interpolation, cache_root() / "pixels", crop=pre.input_size,
                workers=workers, progress=self.progress,
            )  # fmt: skip
            return _cached_batches(cache, batches, pre)
        dataset = PixelDataset(manifest.source, pre)
        if workers > 0:
            return spawned_loader(dataset, workers, batch_sampler=batches)
        return (decode_batch(dataset, rows) for rows in batches)


def _auto_workers(n_rows: int, source) -> int:
    import os

    from ..data.manifest import ArrayImageSource

    if isinstance(source, ArrayImageSource) or n_rows <= 512:
        return 0  # arrays are in memory; small runs don't repay worker start-up
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class DaskRunner:
    """Runs a job as Dask tasks, one per shard (:func:`extract_shard`), on the cluster ``cluster``
    names (see :mod:`tlmic_feats.runtime.cluster`). The job goes to every worker once."""

    input_wait_seconds = 0.0  # waits for input happen on the workers

    def __init__(self, cluster: str, *, device: str = "auto", log: Callable[[str], None] | None = None) -> None:
        self.cluster = cluster
        self.device = device
        self.log = log
        self.where = f" on {cluster}"

    def run(self, job: ExtractJob, writer: StoreWriter, pending: list[int], on_rows: OnRows, on_shard: OnShard) -> None:
        from ..runtime.cluster import check_visible, connect, gather, torch_threads_per_worker

        if not pending:
            return
        with connect(self.cluster, device=self.device, log=self.log) as client:
            check_visible(client, writer.path)
            threads = torch_threads_per_worker(client)
            shared = client.scatter(job, broadcast=True, hash=False)
            futures = [
                client.submit(extract_shard, shared, shard, threads, key=f"tlmic-extract-shard-{shard}", pure=False)
                for shard in pending
            ]

            def finished(result: tuple[int, Skipped]) -> None:
                shard, skipped = result
                start, stop = writer.shard_rows(shard)
                on_rows(stop - start)
                on_shard(shard, skipped)

            on_rows(0)
            gather(client, futures, finished)


def extract_shard(job: ExtractJob, shard: int, threads: dict[str, int]) -> tuple[int, Skipped]:
    """A Dask task: decode one shard's images, run the worker's engine, write the shard's rows of
    every array and then its done flag. Returns ``(shard, skipped rows)``."""
    from ..runtime.cluster import my_threads
    from .engines import worker_engine

    engine = worker_engine(job.engine, my_threads(threads))
    writer = StoreWriter.attach(job.store)
    dataset = PixelDataset(job.manifest.source, job.preprocess)
    batches = (decode_batch(dataset, rows) for rows in job.batches(writer, [shard]))
    return shard, fill_shard(job, engine, writer, shard, batches)
