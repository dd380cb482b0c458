"""The distribution's own name as an import: ``python -m tlmic`` runs the command line and
``import tlmic`` offers the library's public API.

The library lives in :mod:`tlmic_feats` and the command line in ``tlmic_cli``; this package only
forwards to them (``tlmic.run_probes is tlmic_feats.run_probes``), so importing it stays as cheap
as importing ``tlmic_feats``: nothing heavy loads until a name is used.
"""

from tlmic_feats import __all__, __version__  # noqa: F401 (re-exported)


def __getattr__(name: str):
    if name in __all__:
        import tlmic_feats

        return getattr(tlmic_feats, name)
    raise AttributeError(f"module 'tlmic' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
