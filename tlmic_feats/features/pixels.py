"""Decode once: every image decoded, resized and center-cropped to a square, kept in Zarr.

Chest radiographs are large (often 2,000 px a side) and decoding them can cost more than the
network; the paper's protocol decodes every image again for every backbone and every finetuning
epoch. The pixel cache decodes each image once, to ``(N, S, S)`` at working size ``S`` (uint8, or
float32 where the interpolation resizes in float: :func:`tlmic_feats.data.images.pixel_dtype`; the
shorter side resized to S, center square; JPEGs decoded at reduced scale where that loses
nothing), in a Zarr array keyed by the dataset fingerprint, S and the interpolation. Extraction
for every backbone with that preprocessing and every finetuning epoch read from it: the
evaluation view (center crop of ``input_size``) equals resizing to S then center-cropping, so
features are unchanged.

Built in chunk-aligned shards with done flags, like the feature store: an interrupted build
resumes. Rows that cannot be decoded are recorded with their error, for the caller to report.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from ..runtime.errors import BadImageError
from ..runtime.progress import progress_bar
from .workers import dead_workers_reported, spawned_loader

CHUNK = 64


def pixel_cache_path(root: Path, dataset_fingerprint: str, size: int, interpolation: str, crop: int = 0) -> Path:
    """Where the squares of ``size`` px for an evaluation view of ``crop`` px (0: the whole square) are."""
    aligned = f"-for{crop}" if crop and crop < size else ""
    return Path(root) / f"{dataset_fingerprint[:20]}-{size}px{aligned}-{interpolation}.zarr"


class PixelCache:
    """Read access to a built pixel cache."""

    def __init__(self, path: Path, group) -> None:
        self.path = path
        self._pixels = group["pixels"]
        self._bad = np.asarray(group["bad"][:])
        self.errors: dict[int, str] = {int(k): v for k, v in json.loads(group.attrs["tlmic_pixels"]["errors"]).items()}
        self.size = int(self._pixels.shape[-1])

    def __len__(self) -> int:
        return int(self._pixels.shape[0])

    @property
    def bad(self) -> np.ndarray:
        return self._bad

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Pixels of ``rows`` (sorted, or any order: contiguous ranges are read as slices)."""
        rows = np.asarray(rows)
        if len(rows) and (np.diff(rows) == 1).all():
            return np.asarray(self._pixels[int(rows[0]) : int(rows[-1]) + 1])
        return np.asarray(self._pixels.get_orthogonal_selection((rows, slice(None), slice(None))))


def build_pixel_cache(
    manifest, size: int, interpolation: str, root: Path, *, crop: int = 0, workers: int = 0, progress: bool = False
) -> PixelCache:
    """Open the cache for ``manifest`` at ``size`` (building what is missing) and return it. ``crop``: the
    evaluation view that will be centre-cropped from its squares (see ``then_crop`` of
    :func:`tlmic_feats.data.images.resize_center_crop`); 0 for the plain centre squares."""
    import zarr

    from ..data.images import pixel_dtype
    from ..runtime.locks import StoreLock

    path = pixel_cache_path(root, manifest.fingerprint(), size, interpolation, crop)
    dtype = str(pixel_dtype(interpolation))
    n = len(manifest)
    n_chunks = max(1, -(-n // CHUNK))
    with StoreLock(path):
        meta = _meta(path)
        # a cache of another pixel format (torchxrayvision's, 8-bit until its float path) is rebuilt
        if meta is None or meta.get("n") != n or meta.get("dtype", "uint8") != dtype:
            group = zarr.open_group(str(path), mode="w")
            group.create_array(
                "pixels", shape=(n, size, size), chunks=(min(CHUNK, n), size, size), dtype=dtype, fill_value=0
            )
            group.create_array("bad", shape=(n,), chunks=(min(CHUNK, n),), dtype="bool", fill_value=False)
            group.create_array("done", shape=(n_chunks,), chunks=(1,), dtype="bool", fill_value=False)
            group.attrs["tlmic_pixels"] = {
                "n": n,
                "size": size,
                "interpolation": interpolation,
                "dtype": dtype,
                "dataset": manifest.fingerprint(),
                "status": "in_progress",
                "errors": "{}",
            }
        group = zarr.open_group(str(path), mode="r+")
        done = np.asarray(group["done"][:])
        todo = [int(c) for c in np.flatnonzero(~done)]
        if todo:
            errors = json.loads(group.attrs["tlmic_pixels"]["errors"])
            bar = progress_bar(len(todo) * CHUNK, "decode once (pixel cache)", "img", progress)
            decoder = _ChunkDecoder(manifest.source, n, todo, size, interpolation, crop)
            chunks = contextlib.closing(_decode_chunks(decoder, workers))
            with dead_workers_reported(), chunks as decoded:  # a worker's death may surface mid-loop
                for chunk, (pixels, errs) in decoded:
                    start = chunk * CHUNK
                    group["pixels"][start : start + len(pixels)] = pixels
                    bad = np.zeros(len(pixels), bool)
                    for k, e in errs.items():
                        bad[k] = True
                        errors[str(start + k)] = e
                    group["bad"][start : start + len(pixels)] = bad
                    if errs:  # metadata: single writer (this process), rare
                        group.attrs["tlmic_pixels"] = {**group.attrs["tlmic_pixels"], "errors": json.dumps(errors)}
                    group["done"][chunk] = True
                    bar.update(len(pixels))
            bar.close()
            group.attrs["tlmic_pixels"] = {**group.attrs["tlmic_pixels"], "status": "complete"}
    return PixelCache(path, zarr.open_group(str(path), mode="r"))


def _meta(path: Path) -> dict | None:
    zj = path / "zarr.json"
    if not zj.is_file():
        return None
    try:
        return json.loads(zj.read_text()).get("attributes", {}).get("tlmic_pixels")
    except (OSError, ValueError):
        return None


def _decode_chunks(ds: _ChunkDecoder, workers: int):
    """Yield ``(chunk, (pixels, {offset: error}))`` for each of ``ds``'s chunks, decoded in worker
    processes (spawned: Zarr and fork do not mix) when ``workers > 0``."""
    if workers > 0:
        loader = spawned_loader(ds, workers, batch_size=None)
        for chunk, (pixels, errors) in zip(ds.chunks, loader, strict=True):
            yield chunk, (np.asarray(pixels), {int(k): v for k, v in errors.items()})  # the loader made tensors
        return
    for i, chunk in enumerate(ds.chunks):
        yield chunk, ds[i]


class _ChunkDecoder:
    def __init__(self, source, n, chunks, size, interpolation, crop) -> None:
        self.source, self.n, self.chunks, self.size = source, n, chunks, size
        self.interpolation, self.crop = interpolation, crop

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int):
        from ..data.images import pixel_dtype, resize_center_crop

        start = self.chunks[i] * CHUNK
        rows = range(start, min(self.n, start + CHUNK))
        out = np.zeros((len(rows), self.size, self.size), pixel_dtype(self.interpolation))
        errors = {}
        for k, r in enumerate(rows):
            try:
                im = self.source.load(r, min_side=self.size)
                out[k] = resize_center_crop(
                    im, resize_size=self.size, input_size=self.size, interpolation=self.interpolation,
                    then_crop=self.crop,
                )  # fmt: skip
            except BadImageError as e:
                errors[k] = str(e)
        return out, errors


def load_pixels(source, rows: np.ndarray, size: int, interpolation: str, crop: int = 0) -> np.ndarray:
    """Decode ``rows`` of an image source to ``(len(rows), size, size)`` (:func:`pixel_dtype`), without a
    cache: the cache's squares (``crop`` as for :func:`build_pixel_cache`)."""
    from ..data.images import pixel_dtype, resize_center_crop

    out = np.empty((len(rows), size, size), dtype=pixel_dtype(interpolation))
    for k, i in enumerate(np.asarray(rows).tolist()):
        im = source.load(i, min_side=size)
        out[k] = resize_center_crop(im, resize_size=size, input_size=size, interpolation=interpolation, then_crop=crop)
    return out
