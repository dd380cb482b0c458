"""A griffe extension for the API reference: every field of a config dataclass declared with
``option(...)`` or a shared ``*_option()`` (tlmic_feats.runtime.options) gets its help line as its
docstring and its real default as its shown value, read from the class itself, so the reference
states each option as it is declared, once."""

from __future__ import annotations

import ast
import dataclasses
import importlib

import griffe


def _field(attr):
    module, _, cls = attr.parent.path.rpartition(".")
    try:
        owner = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        return None
    if not dataclasses.is_dataclass(owner):
        return None
    return {f.name: f for f in dataclasses.fields(owner)}.get(attr.name)


class OptionDocs(griffe.Extension):
    def on_attribute_instance(self, *, node, attr, agent, **kwargs) -> None:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.value, ast.Call):
            return
        call = node.value
        name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")
        if not name.endswith("option"):
            return
        f = _field(attr)
        if f is None:
            return
        meta = f.metadata.get("tlmic", {})
        if meta.get("help") and attr.docstring is None:
            attr.docstring = griffe.Docstring(meta["help"], parent=attr)
        if f.default is not dataclasses.MISSING:
            attr.value = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            attr.value = f"{getattr(f.default_factory, '__name__', 'factory')}()"
        else:
            attr.value = None  # no default: a required field
