"""An extraction's configuration, recorded in the store's attributes, and its choices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ..backbones.options import backbone_option, input_size_option, pool_option, weights_option
from ..data.readers import DataConfig
from ..runtime.options import check_fields, cluster_option, coerce_paths, device_option, option, precision_option
from .auto import ENGINE_CHOICES

Dtype = Literal["float32", "float16"]
DTYPES: tuple[str, ...] = get_args(Dtype)

BadImagePolicy = Literal["error", "skip"]
BAD_IMAGE_POLICIES: tuple[str, ...] = get_args(BadImagePolicy)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that defines an extraction. Recorded in the store's attributes.

    >>> from tlmic_feats import DataConfig, ExtractConfig
    >>> ExtractConfig(DataConfig("cxr/"), layers="blocks").backbone
    'efficientnet_lite0'
    """

    data: DataConfig = option(help="The dataset (see DataConfig).")
    backbone: str = backbone_option()
    weights: str = weights_option()
    layers: str = option("all", "all, blocks, units, or addresses like 3,3.4.")
    pool: str = pool_option("Global pooling after each tap; avgmax keeps small local findings that avg washes out.")
    dtype: Dtype = option("float32", "Stored feature dtype.", choices=DTYPES)
    store: str = option("", "Store path (default: under cache/stores, derived from the inputs).")
    batch_size: int = option(32, "Images per forward pass.", ge=1)
    workers: int = option(-1, "Decode worker processes (-1: automatic).", ge=-1)
    device: str = device_option()
    on_bad_image: BadImagePolicy = option(
        "error", "Stop on an unreadable image, or record it as skipped and go on.", choices=BAD_IMAGE_POLICIES
    )
    overwrite: bool = option(False, "Replace a store made from different inputs.")
    seed: int = option(0, "Seed of random weights.", ge=0)
    chunk_rows: int = option(256, "Rows per chunk (and per resumable shard).", ge=1)
    engine: str = option(
        "torch",
        "torch (eager or compiled), onnx (onnxruntime; graph cached under cache/onnx), openvino (CPU; pip install "
        "'tlmic[openvino]'; IR cached under cache/openvino), or auto: the fastest engine validated for the backbone "
        "on this hardware; recorded in the store.",
        choices=ENGINE_CHOICES,
    )
    precision: str = precision_option("auto: the fastest precision validated for the backbone and engine here, else fp32.")
    compile: bool = option(False, "torch.compile the network (pays off on long runs).")
    pixel_cache: bool = option(
        True, "Decode each image once into cache/pixels, shared by backbones and finetuning.",
        flag="--pixel-cache/--no-pixel-cache",
    )
    cluster: str = cluster_option(
        "Run the shards as Dask tasks: a local cluster of N workers (one per GPU on GPU machines) or an existing "
        "scheduler whose workers see the store."
    )
    input_size: int = input_size_option()

    def __post_init__(self) -> None:
        coerce_paths(self, "store", "weights")

    def validate(self) -> None:
        check_fields(self)
        if self.cluster:
            from ..runtime.cluster import parse_cluster

            parse_cluster(self.cluster, device="cpu")
