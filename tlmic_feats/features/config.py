"""An extraction's configuration, recorded in the store's attributes, and its choices."""

from __future__ import annotations

from dataclasses import dataclass

from ..backbones.pooling import POOLS
from ..data.readers import DataConfig
from ..runtime.devices import PRECISIONS
from ..runtime.errors import UsageError, check_choice
from .auto import ENGINE_CHOICES

DTYPES = ("float32", "float16")


BAD_IMAGE_POLICIES = ("error", "skip")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that defines an extraction. Recorded in the store's attributes."""

    data: DataConfig
    backbone: str = "resnet50"
    weights: str = "imagenet"
    layers: str = "all"
    pool: str = "avg"
    dtype: str = "float32"
    store: str = ""  # default: a path under cache/stores derived from the inputs
    batch_size: int = 32
    workers: int = -1  # -1: automatic
    device: str = "auto"
    on_bad_image: str = "error"
    overwrite: bool = False
    seed: int = 0
    chunk_rows: int = 256
    engine: str = "torch"  # auto: the fastest engine validated for the backbone on this hardware (features/auto.py)
    precision: str = "fp32"  # auto: likewise, the fastest validated precision (fp32 when none is)
    compile: bool = False
    pixel_cache: bool = True  # decode each image once into cache/pixels, shared by backbones and finetuning
    cluster: str = ""  # "": this process; local:N or tcp://HOST:PORT: shards run as Dask tasks (see cluster.py)
    input_size: int = 0  # 0: the weights' own (see backbones.preprocess.at_input_size)

    def validate(self) -> None:
        check_choice("--pool", self.pool, POOLS)
        check_choice("--dtype", self.dtype, DTYPES)
        check_choice("--on-bad-image", self.on_bad_image, BAD_IMAGE_POLICIES)
        check_choice("--engine", self.engine, ENGINE_CHOICES)
        check_choice("--precision", self.precision, PRECISIONS)
        if self.cluster:
            from ..runtime.cluster import parse_cluster

            parse_cluster(self.cluster, device="cpu")
        if self.batch_size < 1 or self.chunk_rows < 1:
            raise UsageError(f"batch size and chunk rows must be >= 1 (got {self.batch_size}, {self.chunk_rows})")
