"""Which seeds a command runs: a count (``3``: seeds 0, 1, 2) or a list (``3,4,5``: those seeds), so that
two independent reruns of a study can be made and compared."""

from __future__ import annotations

from .errors import UsageError

Seeds = int | tuple[int, ...]


def seed_list(seeds: Seeds) -> tuple[int, ...]:
    """The seeds themselves: ``3 -> (0, 1, 2)``, ``(3, 4, 5) -> (3, 4, 5)``."""
    if isinstance(seeds, int):
        return tuple(range(seeds))
    return tuple(int(s) for s in seeds)


def check_seeds(seeds: Seeds, option: str = "--seeds") -> None:
    """Raise :class:`UsageError` unless ``seeds`` is a count >= 1 or distinct seeds >= 0."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise UsageError(f"{option} {seeds}: need at least 1 (a count, e.g. 3, or a list, e.g. 3,4,5)")
        return
    values = seed_list(seeds)
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise UsageError(f"{option} {','.join(map(str, values))}: need distinct seeds >= 0, e.g. 3,4,5")


def parse_seeds(text: str, option: str = "--seeds") -> Seeds:
    """``"3" -> 3`` (a count), ``"3,4,5" -> (3, 4, 5)``; a single seed as a list: ``"4,"``."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts if p]
    except ValueError:
        raise UsageError(f"{option} {text!r}: not a count (3) or a list of seeds (3,4,5)") from None
    seeds: Seeds = values[0] if len(parts) == 1 and values else tuple(values)
    check_seeds(seeds, option)
    return seeds
