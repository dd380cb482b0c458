"""``tlmic extract``."""

from __future__ import annotations

import click

from tlmic_feats.backbones.pooling import POOLS
from tlmic_feats.features.auto import ENGINE_CHOICES
from tlmic_feats.features.config import BAD_IMAGE_POLICIES, DTYPES

from ..options import backbone_option, data_options, input_size_option, precision_option


@click.command()
@data_options
@backbone_option
@click.option(
    "--weights",
    default="imagenet",
    show_default=True,
    help="imagenet[:MEMBER], random[:SEED], or a .pth/.safetensors file.",
)
@click.option("--layers", default="all", show_default=True, help="all, blocks, units, or addresses like 3,3.4.")
@click.option(
    "--pool",
    type=click.Choice(POOLS),
    default="avg",
    show_default=True,
    help="Global pooling after each tap; avgmax keeps small local findings that avg washes out.",
)
@input_size_option
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True)
@click.option("--store", default="", help="Store path (default: under cache/stores, derived from the inputs).")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--workers", default=-1, show_default=True, help="Decode worker processes (-1: automatic).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option(
    "--on-bad-image",
    type=click.Choice(BAD_IMAGE_POLICIES),
    default="error",
    show_default=True,
    help="Stop on an unreadable image, or record it as skipped and go on.",
)
@click.option("--overwrite", is_flag=True, help="Replace a store made from different inputs.")
@click.option("--seed", default=0, show_default=True, help="Seed of random weights.")
@click.option("--chunk-rows", default=256, show_default=True, help="Rows per chunk (and per resumable shard).")
@click.option(
    "--engine",
    type=click.Choice(ENGINE_CHOICES),
    default="torch",
    show_default=True,
    help="torch (eager or compiled), onnx (onnxruntime; graph cached under cache/onnx), openvino (CPU; "
    "pip install 'tlmic[openvino]'; IR cached under cache/openvino), or auto: the fastest engine validated "
    "for the backbone on this hardware (see the README's Speed section); recorded in the store.",
)
@precision_option(
    "fp32", "auto: the fastest precision validated for the backbone and engine on this hardware, else fp32."
)
@click.option("--compile", is_flag=True, help="torch.compile the network (pays off on long runs).")
@click.option("--no-pixel-cache", is_flag=True, help="Decode images directly instead of through cache/pixels.")
@click.option(
    "--cluster",
    default="",
    metavar="local:N|tcp://HOST:PORT",
    help="Run the shards as Dask tasks: a local cluster of N workers (one per GPU on GPU machines) or an "
    "existing scheduler whose workers see the store.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract(data, quiet, no_pixel_cache, **kw):
    """Extract pooled features of every requested cut point into a Zarr feature store."""
    from tlmic_feats.features.config import ExtractConfig
    from tlmic_feats.features.extract import extract_features

    report = extract_features(ExtractConfig(data=data, pixel_cache=not no_pixel_cache, **kw), progress=not quiet)
    store = report.store
    if report.already_complete:
        click.echo(f"store is complete already (nothing to do): {store.path}")
    else:
        click.echo(
            f"extracted {report.computed_images} images in {report.seconds:.1f} s "
            f"({report.images_per_second:.1f} img/s); {len(store.layers)} layers, "
            f"{len(report.skipped_ids)} skipped"
        )
    click.echo(f"store: {store.path}")
