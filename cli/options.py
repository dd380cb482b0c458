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

from tlmic_feats.runtime.options import cli_names, from_flat, nested_configs, option_meta


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
    return value


def _click_option(f: dataclasses.Field, hints: dict, default) -> Callable:
    """The click option of one scalar field (``default``: MISSING for a required option)."""
    meta = option_meta(f)
    flag = meta["flag"] or "--" + f.name.replace("_", "-")
    decls = [flag, *meta["aliases"], f.name]
    kw: dict = {"help": meta["help"] or None, "metavar": meta["metavar"]}
    if default is dataclasses.MISSING:
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


def config_fields(cls: type) -> list[tuple[tuple[str, ...], dataclasses.Field, type]]:
    """``[(path, field, owner)]`` of the command-line fields of ``cls``, nested configs flattened
    (``("training", "lr")``, its field, ``TrainingConfig``), in declaration order."""
    out = []
    nested = nested_configs(cls)
    for f in dataclasses.fields(cls):
        if not option_meta(f)["cli"]:
            continue
        if f.name in nested:
            out += [((f.name, *p), g, owner) for p, g, owner in config_fields(nested[f.name])]
        else:
            out.append(((f.name,), f, cls))
    return out


def config_options(cls: type, *, into: str = "config"):
    """Decorate a click command with one option per field of ``cls`` and hand it ``cls(...)`` as
    ``into``; a field without a default is a required option."""
    fields = config_fields(cls)
    names = [p[-1] for p, _f, _o in fields]
    assert len(names) == len(set(names)), f"{cls.__name__}: two fields share a name: {sorted(names)}"

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args, **kw):
            kw[into] = from_flat(cls, **{name: kw.pop(name) for name in names if name in kw})
            with cli_names():
                return command(*args, **kw)

        for _path, f, owner in reversed(fields):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            wrapper = _click_option(f, typing.get_type_hints(owner), default)(wrapper)
        return wrapper

    return decorate


def given(ctx: click.Context, name: str) -> bool:
    """Whether the user typed the option ``name`` (a parameter name), rather than taking its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def data_options(f):
    """The data options alone (``tlmic data check``), handed to the command as ``data``."""
    from tlmic_feats.data.readers import DataConfig

    return config_options(DataConfig, into="data")(f)


def seeds_option(help: str):
    """``--seeds 3`` or ``--seeds 3,4,5`` for a command without a config of its own (``tlmic demo``)."""
    from tlmic_feats.runtime.options import seeds_option as declared

    f = dataclasses.make_dataclass("Seeds", [("seeds", int, declared(help))])
    return _click_option(dataclasses.fields(f)[0], {"seeds": int}, 3)
