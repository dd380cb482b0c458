"""Lazy package attributes: a package names its public objects and where they live, and each is
imported on first use, so that importing a package (or a light module inside it, such as a
config) never loads torch, zarr or LightGBM (PEP 562's module ``__getattr__`` and ``__dir__``)."""

from __future__ import annotations

import importlib
import sys


def lazy_attributes(package: str, where: dict[str, str]):
    """A module ``__getattr__`` for ``package``: ``where[name]`` is the submodule defining ``name``.
    A loaded name is kept on the package, so the next access is a plain attribute lookup."""

    def __getattr__(name: str):
        if name in where:
            value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def lazy_dir(package: str, where: dict[str, str]):
    """A module ``__dir__`` for ``package``: its lazy names (loaded or not) and whatever it holds
    already, so that ``dir()`` and tab completion list the public API without importing it."""

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __dir__
