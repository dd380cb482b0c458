"""tlmic's one exception hierarchy.

Every error a user can cause derives from :class:`TlmicError`. Two branches decide how the
command line reports it: :class:`UsageError` (the request itself is wrong; exit code 2) and
:class:`RunError` (a valid request failed while running; exit code 1). Each class also derives
from the standard exception a caller would expect (``ValueError``, ``FileNotFoundError``, ...),
so library users can catch either.

Messages say what was wrong, the bad value and the valid choices, in one line.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BackboneStructureError",
    "BadImageError",
    "DataFormatError",
    "MissingColumnError",
    "MissingDependencyError",
    "RunError",
    "StoreError",
    "StoreIncompleteError",
    "StoreLockedError",
    "StoreMismatchError",
    "TlmicError",
    "UnknownBackboneError",
    "UnknownCutPointError",
    "UsageError",
    "WeightsUnavailableError",
    "check_choice",
    "choices",
]


def choices(values: Iterable[object], limit: int = 12) -> str:
    """Format valid choices for an error message, eliding the middle of long lists."""
    items = [str(v) for v in values]
    if len(items) > limit:
        head, tail = items[: limit - 2], items[-2:]
        return ", ".join(head) + f", ... ({len(items) - limit} more) ..., " + ", ".join(tail)
    return ", ".join(items)


def check_choice(option: str, value: object, valid: Iterable[object]) -> None:
    """Raise :class:`UsageError` unless ``value`` is one of ``valid`` (``option`` as typed: --pool)."""
    valid = tuple(valid)
    if value not in valid:
        raise UsageError(f"{option} {value!r} is not valid; valid: {choices(valid)}")


class TlmicError(Exception):
    """Base class of every error tlmic raises on purpose."""

    exit_code = 1


class UsageError(TlmicError, ValueError):
    """The request is invalid (bad option value, unknown name, missing column)."""

    exit_code = 2


class RunError(TlmicError, RuntimeError):
    """A valid request failed while running (unreadable file, interrupted store, ...)."""

    exit_code = 1


class UnknownBackboneError(UsageError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownCutPointError(UsageError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class BackboneStructureError(UsageError):
    """A backbone whose structure tlmic cannot cut (no stages of blocks, or not traceable)."""


class DataFormatError(UsageError):
    """The dataset is not in the format asked for, or its contents are inconsistent."""


class MissingColumnError(DataFormatError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(UsageError, ImportError):
    """An optional package that the request needs is not installed; the message names the extra."""


class WeightsUnavailableError(RunError, FileNotFoundError):
    """Pretrained weights could not be loaded (offline, missing file, wrong architecture)."""


class BadImageError(RunError, OSError):
    """An image could not be decoded; the message names the file and its row."""


class StoreError(RunError):
    """A feature store cannot be used as asked."""


class StoreMismatchError(StoreError):
    """A store exists at the path but was made from different inputs."""

    exit_code = 2


class StoreIncompleteError(StoreError):
    """A store whose extraction has not finished is opened as a finished result."""


class StoreLockedError(StoreError):
    """Another process holds the store's write lock."""


class ClusterError(RunError):
    """A Dask cluster or torchrun group could not be used (unreachable, a worker that cannot see
    the store, workers lost too often)."""


class SubsetTooSmallError(UsageError):
    """A training subset (a small --fraction) lacks a class: nothing can be trained on it."""
