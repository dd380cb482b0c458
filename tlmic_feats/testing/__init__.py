"""Testing utilities for tlmic and for code built on it (as ``numpy.testing`` is for numpy).

``datasets``: generated image folders; ``stores``: feature stores with one informative layer;
``simulation``: a two-level model of training runs with a known difference between two arms;
``fuzz``: hypothesis strategies for hard inputs to the image decoders and manifest readers (needs
``hypothesis``). tlmic's own tests and benchmarks import them from here; the library never imports
this package.

>>> from tlmic_feats.testing import disk_dataset, planted_store  # doctest: +SKIP
>>> data = disk_dataset("easy/")  # train/ val/ test/, a class folder each  # doctest: +SKIP
>>> store = planted_store("s.zarr", signal_layer="2")  # layer 2 carries the label  # doctest: +SKIP
"""

# name -> submodule that defines it, imported on first use (as the top-level package does)
_LAZY = {"disk_dataset": "datasets", "write_images": "datasets", "planted_store": "stores"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    from ..runtime.lazy import lazy_attributes

    return lazy_attributes(__name__, _LAZY)(name)


def __dir__() -> list[str]:
    from ..runtime.lazy import lazy_dir

    return lazy_dir(__name__, _LAZY)()
