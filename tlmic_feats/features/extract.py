"""The extract arm: one forward pass of a frozen backbone, pooled features of every cut point.

:func:`extract_features` reads a dataset, runs the backbone truncated after the deepest requested
cut point, taps every requested cut point with forward hooks, pools on the device right after
each tap (C floats per image, never a C x H x W map kept around) and writes the results shard by
shard into a :class:`~tlmic_feats.features.store.FeatureStore`. Interrupted runs resume where they stopped;
finished runs are not redone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..backbones.cutpoints import select_cut_points, storage_groups
from ..backbones.pooling import check_pool, describe_pooling, pooled_width
from ..data.readers import load_manifest
from ..runtime.devices import resolve_device
from ..runtime.errors import StoreError
from ..runtime.locations import store_location
from ..runtime.locks import StoreLock
from ..runtime.paths import cache_root, slug
from ..runtime.progress import default_log
from .auto import choose_engine
from .config import ExtractConfig
from .engines import EngineSpec
from .job import DaskRunner, ExtractJob, LocalRunner, run_job
from .store import FeatureStore, LayerInfo, open_for_writing


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


def decode_record(preprocess) -> dict:
    """How the host decodes the images for ``preprocess`` (a store's ``decode``): a single-channel
    network (torchxrayvision's) sees the grey image itself; the pixels' dtype is recorded only where they
    are not 8-bit (torchxrayvision's float32), so that the other stores keep their fingerprints."""
    decode = {"color": "gray8-to-3ch" if preprocess.channels == 3 else "gray8", "jpeg_draft": True}
    if preprocess.pixel_dtype != "uint8":
        decode["pixels"] = str(preprocess.pixel_dtype)
    return decode


def store_fingerprint(config: ExtractConfig, backbone, selected, manifest, engine: str, precision: str) -> dict:
    """What defines a store's contents (its root attrs; a rerun with other values is refused)."""
    fingerprint = {
        "backbone": backbone.name,
        "weights": {"kind": backbone.weights.kind, "id": backbone.weights.id, "sha256": backbone.weights.sha256},
        "preprocess": asdict(backbone.preprocess),
        "decode": decode_record(backbone.preprocess),
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
    from ..backbones.preprocess import Preprocess
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
        try:
            decoded_as_now = fp.get("decode") == decode_record(Preprocess(**fp["preprocess"]))
        except (KeyError, TypeError):  # a store of another layout: the full path decides and explains
            return None
        if not decoded_as_now:
            continue  # decoded otherwise than this tlmic decodes (torchxrayvision's pixels were 8-bit): extract again
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
    from ..backbones.described import described_backbone, remember_backbone
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
    # Its description when a build was remembered (the engine builds the network only if it needs it:
    # an onnx or openvino graph already cached runs without torch), else built and remembered.
    backbone = described_backbone(config.backbone, config.weights, seed=config.seed, input_size=config.input_size)
    if backbone is None:
        backbone = build_backbone(config.backbone, config.weights, seed=config.seed, input_size=config.input_size)
        remember_backbone(backbone, config.weights, seed=config.seed, input_size=config.input_size)
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
        job = ExtractJob(
            manifest=manifest,
            preprocess=backbone.preprocess,
            layers=tuple(layers),
            engine=EngineSpec(
                backbone=config.backbone,
                weights=config.weights,
                seed=config.seed,
                input_size=config.input_size,
                # Aliased cut points (ResNet's "2" is "2.4") are computed once, under their array.
                addresses=tuple(cp.address for cp in selected if arrays[cp.address] == cp.address),
                pool=config.pool,
                engine=engine,
                precision=precision,
                device="cpu" if engine == "openvino" and config.device == "auto" else config.device,
                compile=config.compile,
                cache_dir=str(cache_root()),
                key=engine_key(fingerprint),
            ),
            store=str(writer.path),
            dtype=config.dtype,
            batch_size=config.batch_size,
            on_bad_image=config.on_bad_image,
        )
        if config.cluster:
            runner = DaskRunner(config.cluster, device=config.device, log=log)
        else:
            runner = LocalRunner(
                workers=config.workers, pixel_cache=config.pixel_cache, progress=progress, backbone=backbone
            )
        computed, skipped_ids, seconds = run_job(job, runner, writer, progress=progress, log=log, on_shard=on_shard)
        store = writer.finalize()
    return ExtractReport(
        store,
        computed_images=computed,
        seconds=seconds,
        skipped_ids=skipped_ids,
        input_wait_seconds=runner.input_wait_seconds,
    )


# The fingerprint's parts that define the network an engine runs (its graph's cache key).
ENGINE_KEY = ("backbone", "weights", "preprocess", "pool", "layers")


def engine_key(fingerprint: dict) -> str:
    """The cache key of the graph an engine runs for ``fingerprint``: :data:`ENGINE_KEY`'s parts, and the
    pixels' dtype where it is not 8-bit (torchxrayvision's float32: a graph exported for uint8 input
    cannot take them; 8-bit backbones keep the keys of graphs already cached)."""
    key = {k: fingerprint[k] for k in ENGINE_KEY}
    if "pixels" in fingerprint.get("decode", {}):
        key["pixels"] = fingerprint["decode"]["pixels"]
    return json.dumps(key, sort_keys=True)
