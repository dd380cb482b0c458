"""Options declared once: a config dataclass field carries its help line, its choices, its bounds and
its command-line flag, and everything else (validation, the click options, the docs) is derived from
it.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Example:
...     pool: str = option("avg", "Global pooling.", choices=("avg", "max"))
...     lr: float = option(1e-3, "Learning rate.", gt=0)
>>> check_fields(Example(pool="sum"))
Traceback (most recent call last):
...
tlmic_feats.runtime.errors.UsageError: pool 'sum' is not valid; valid: avg, max

Errors name the field; under :func:`cli_names` (how the command line runs a library function) they
name the flag as well: ``--pool (pool) 'sum' is not valid; valid: avg, max``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import typing
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from .errors import UsageError, choices as format_choices

_KEY = "tlmic"
_FROM_CLI: ContextVar[bool] = ContextVar("tlmic_option_names_from_cli", default=False)


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: tuple | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    cli: bool = True,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with its option metadata.

    Parameters
    ----------
    default, default_factory
        The field's default, as for :func:`dataclasses.field`.
    help
        One line: the command-line help, the docs and the field's documentation.
    choices
        Valid values (for a tuple field: of each element).
    ge, gt, le
        Numeric bounds (>=, >, <=), of the value or of each element of a tuple.
    flag
        The command-line spelling when it is not ``--field-name``: ``"--jobs"``, or a boolean pair
        ``"--onnx/--no-onnx"``.
    aliases
        Older spellings the command line still accepts (hidden from nothing: click lists them).
    cli
        False: a library-only field (set by the code that builds the config, not by a flag).
    parse
        Command line: turns the typed text into the field's value (lists, seeds).
    """
    meta = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "ge": ge,
        "gt": gt,
        "le": le,
        "flag": flag,
        "aliases": tuple(aliases),
        "cli": cli,
        "parse": parse,
        "metavar": metavar,
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: meta})


def option_meta(f: dataclasses.Field) -> dict:
    """The option metadata of a field (an undeclared field: empty help, no checks)."""
    return f.metadata.get(_KEY) or _UNDECLARED


_UNDECLARED = option().metadata[_KEY]


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a field: ``--batch-size`` (the first of a ``--x/--no-x`` pair)."""
    flag = option_meta(f)["flag"]
    return flag.split("/")[0] if flag else "--" + f.name.replace("_", "-")


@contextlib.contextmanager
def cli_names() -> Iterator[None]:
    """Within this block, errors name the command-line flag beside the field."""
    token = _FROM_CLI.set(True)
    try:
        yield
    finally:
        _FROM_CLI.reset(token)


def name_of(config_or_cls: Any, field_name: str) -> str:
    """How an error names a field: ``lr``, or ``--lr (lr)`` from the command line."""
    cls = config_or_cls if isinstance(config_or_cls, type) else type(config_or_cls)
    f = {f.name: f for f in dataclasses.fields(cls)}.get(field_name)
    if not _FROM_CLI.get() or f is None or not option_meta(f)["cli"]:
        return field_name
    flag = flag_of(f)
    return flag if flag.lstrip("-").replace("-", "_") == field_name else f"{flag} ({field_name})"


def check_fields(config: Any) -> None:
    """Raise :class:`UsageError` for the first field whose value breaks its declared choices or bounds
    (nested configs included), naming the field, the bad value and the valid ones."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_fields(value)
            continue
        meta = option_meta(f)
        values = value if isinstance(value, tuple) else (value,)
        if meta["choices"] is not None:
            for v in values:
                if v not in meta["choices"]:
                    raise UsageError(f"{name_of(config, f.name)} {v!r} is not valid; valid: "
                                     f"{format_choices(meta['choices'])}")
        for key, ok, words in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                               ("le", lambda v, b: v <= b, "<=")):
            bound = meta[key]
            if bound is None:
                continue
            for v in values:
                if isinstance(v, (int, float)) and not isinstance(v, bool) and not ok(v, bound):
                    raise UsageError(f"{name_of(config, f.name)} {v!r} is out of range: must be {words} {bound:g}")


def coerce_paths(config: Any, *names: str) -> None:
    """In a frozen dataclass's ``__post_init__``: store path-like values of ``names`` as strings, so
    that ``ProbeConfig(store=Path(...))`` records and compares like ``ProbeConfig(store="...")``."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, os.PathLike):
            object.__setattr__(config, name, os.fspath(value))


# Options several configs share, declared here once (their choices live in this package).


def device_option() -> Any:
    return option("auto", "auto, cpu, cuda or cuda:N.")


def precision_option(help: str = "auto: the fastest precision validated here; fp32 is the reference.") -> Any:
    from .devices import PRECISIONS

    return option("fp32", help, choices=PRECISIONS)


def seeds_option(help: str = "Seeds: a count (3: seeds 0, 1, 2) or the seeds themselves (3,4,5).") -> Any:
    from .seeds import parse_seeds

    return option(3, help, parse=parse_seeds)


def cluster_option(help: str) -> Any:
    return option("", help, metavar="local:N|tcp://HOST:PORT")


def bootstrap_option() -> Any:
    return option(1000, "Bootstrap resamples of the test images for confidence intervals.", ge=0)


def float_list(text: str) -> tuple[float, ...]:
    """``"0.05,0.1,1.0"`` -> ``(0.05, 0.1, 1.0)`` (a command line's list of numbers)."""
    try:
        return tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{text!r} is not a comma-separated list of numbers, e.g. 0.05,0.1,1.0") from None


def name_list(text: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``; ``""`` or ``"none"`` -> ``()``."""
    return tuple(v.strip() for v in str(text).split(",") if v.strip()) if str(text) not in ("", "none") else ()


def nested_configs(cls: type) -> dict[str, type]:
    """``{field: config class}`` of the fields of ``cls`` that are configs themselves."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints.get(f.name))}


def from_flat(cls: type, /, **values: Any) -> Any:
    """``cls`` from field names at any depth: ``from_flat(FinetuneConfig, data=d, truncate="3", steps=200)``
    puts ``steps`` into the nested :class:`~tlmic_feats.finetune.training.TrainingConfig`. A name no
    field has raises :class:`UsageError` naming the valid ones."""
    return replace_flat(None, cls, **values)


def replace_flat(config: Any, cls: type | None = None, /, **values: Any) -> Any:
    """``config`` with fields at any depth replaced (``replace_flat(fc, steps=20, lr=1e-4)``)."""
    cls = cls or type(config)
    nested = nested_configs(cls)
    own = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in values.items() if k in own}
    rest = {k: v for k, v in values.items() if k not in own}
    for name, sub in nested.items():
        inner_names = set(flat_names(sub))
        inner = {k: v for k, v in rest.items() if k in inner_names}
        if inner and name not in kw:
            kw[name] = replace_flat(getattr(config, name) if config is not None else None, sub, **inner)
        rest = {k: v for k, v in rest.items() if k not in inner_names}
    if rest:
        raise UsageError(
            f"{cls.__name__} has no option {', '.join(sorted(rest))}; valid: {format_choices(sorted(flat_names(cls)))}"
        )
    return dataclasses.replace(config, **kw) if config is not None else cls(**kw)


def flat_names(cls: type) -> list[str]:
    """Every field name of ``cls``, nested configs' included."""
    nested = nested_configs(cls)
    out = []
    for f in dataclasses.fields(cls):
        out += flat_names(nested[f.name]) if f.name in nested else [f.name]
    return out


def from_record(cls: type, record: dict) -> Any:
    """``cls`` from the JSON a run directory recorded of one (``dataclasses.asdict`` of the config,
    as ``run.json`` holds it): nested configs rebuilt, lists back to tuples. A key ``cls`` has no
    field for is ignored and a field the record lacks takes its default, so that a run recorded by
    another version of tlmic still reads."""
    hints = typing.get_type_hints(cls)

    def value(kind, v):
        if isinstance(v, dict):
            inner = [t for t in (kind, *typing.get_args(kind)) if dataclasses.is_dataclass(t)]
            if inner:
                return from_record(inner[0], v)
        return tuple(value(None, e) for e in v) if isinstance(v, list) else v

    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: value(hints[k], v) for k, v in record.items() if k in names})
