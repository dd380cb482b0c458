"""Click options generated from the library's config dataclasses, and the configs built back from them.

Each option is declared once, as a field of a frozen config (:mod:`tlmic_feats.runtime.options`):
its flag, default, choices and help line come from there, so the command line, the Python API and
the docs cannot disagree (tests/test_options.py checks every command).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable

import click

from tlmic_feats.runtime.options import cli_names, flag_of, option_meta


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
    return value


def _click_option(f: dataclasses.Field, hints: dict, default, *, required: bool = False) -> Callable:
    """The click option of one scalar field (``default``: the command's default for it)."""
    meta = option_meta(f)
    flag = meta["flag"] or "--" + f.name.replace("_", "-")
    decls = [flag, *meta["aliases"], f.name]
    kw: dict = {"help": meta["help"] or None, "metavar": meta["metavar"]}
    if required:
        kw["required"] = True
    else:
        kw["default"] = _show(default) if meta["parse"] else default
        kw["show_default"] = default not in ("", None)
    if meta["parse"] is not None:
        parse = meta["parse"]

        def callback(ctx, param, value, parse=parse):
            from tlmic_feats.runtime.errors import UsageError

            if value is None or not isinstance(value, str):
                return value
            try:
                return parse(value)
            except UsageError as e:
                raise click.BadParameter(str(e)) from None

        kw["callback"] = callback
        kw["type"] = str
    elif hints.get(f.name) is bool:
        if "/" not in flag:
            kw["is_flag"] = True
    elif meta["choices"] is not None:
        kw["type"] = click.Choice([str(c) for c in meta["choices"]])
    elif hints.get(f.name) in (int, float, str):
        kw["type"] = hints[f.name]
    return click.option(*decls, **kw)


def _nested_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints.get(f.name))}


def config_fields(cls: type, *, exclude: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dataclasses.Field]]:
    """``[(path, field)]`` of the command-line fields of ``cls``, nested configs flattened
    (``("training", "lr")``), in declaration order, without ``exclude`` (field names at any depth)."""
    out = []
    nested = _nested_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or not option_meta(f)["cli"]:
            continue
        if f.name in nested:
            out += [((f.name, *p), g) for p, g in config_fields(nested[f.name], exclude=exclude)]
        else:
            out.append(((f.name,), f))
    return out


def _field_default(cls: type, path: tuple[str, ...]):
    """The default of a (possibly nested) field: ``("training", "lr")`` -> 1e-3."""
    f = {f.name: f for f in dataclasses.fields(cls)}[path[0]]
    if len(path) > 1:
        return _field_default(_nested_types(cls)[path[0]], path[1:])
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def config_options(
    cls: type,
    *,
    exclude: tuple[str, ...] = (),
    defaults: dict[str, object] | None = None,
    into: str = "config",
):
    """Decorate a click command with one option per field of ``cls`` and hand it ``cls(...)`` as
    ``into`` (fields in ``exclude`` take their defaults; a field without a default is a required
    option). ``defaults``: a command's own default for a field (by field name)."""
    defaults = defaults or {}
    hints_cache: dict[type, dict] = {}

    def hints_of(owner: type) -> dict:
        if owner not in hints_cache:
            hints_cache[owner] = typing.get_type_hints(owner)
        return hints_cache[owner]

    fields = config_fields(cls, exclude=exclude)
    names = [p[-1] for p, _ in fields]
    assert len(names) == len(set(names)), f"{cls.__name__}: two fields share a name: {sorted(names)}"

    def owner_of(path: tuple[str, ...]) -> type:
        owner = cls
        for name in path[:-1]:
            owner = _nested_types(owner)[name]
        return owner

    def decorate(command: Callable) -> Callable:
        params = []
        for path, f in fields:
            owner = owner_of(path)
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            default = defaults.get(f.name, _field_default(cls, path))
            params.append(_click_option(f, hints_of(owner), default, required=required))

        @functools.wraps(command)
        def wrapper(*args, **kw):
            values: dict = {}
            for path, _f in fields:
                if path[-1] in kw:
                    values[path] = kw.pop(path[-1])
            kw[into] = build(cls, values)
            with cli_names():
                return command(*args, **kw)

        for p in reversed(params):
            wrapper = p(wrapper)
        return wrapper

    return decorate


def build(cls: type, values: dict[tuple[str, ...], object]):
    """``cls`` from ``{path: value}`` (nested configs built from their own paths)."""
    from tlmic_feats.runtime.options import from_flat

    return from_flat(cls, **{p[-1]: v for p, v in values.items()})


def given(ctx: click.Context, name: str) -> bool:
    """Whether the user typed the option ``name`` (a parameter name), rather than taking its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def flags_of(cls: type) -> dict[str, str]:
    """``{field path: flag}`` of a config's command-line fields (for messages and the docs)."""
    return {".".join(p): flag_of(f) for p, f in config_fields(cls)}


def data_options(f):
    """The data options alone (``tlmic data check``), handed to the command as ``data``."""
    from tlmic_feats.data.readers import DataConfig

    return config_options(DataConfig, into="data")(f)


def seeds_option(help: str):
    """``--seeds 3`` or ``--seeds 3,4,5`` for a command without a config of its own (``tlmic demo``)."""
    from tlmic_feats.runtime.options import seeds_option as declared

    f = dataclasses.make_dataclass("Seeds", [("seeds", int, declared(help))])
    return _click_option(dataclasses.fields(f)[0], {"seeds": int}, 3)
