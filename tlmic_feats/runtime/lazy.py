"""Lazy package attributes: a package names its public objects and where they live, and each is
imported on first use, so that importing a package (or a light module inside it, such as a
config) never loads torch, zarr or LightGBM."""

from __future__ import annotations

import importlib


def lazy_attributes(package: str, where: dict[str, str]):
    """A module ``__getattr__`` for ``package``: ``where[name]`` is the submodule defining ``name``."""

    def __getattr__(name: str):
        if name in where:
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
