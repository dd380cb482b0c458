"""The optional libraries some backbone families need, imported on first use.

``hf:`` needs ``transformers`` (``pip install 'tlmic[hf]'``), ``openclip:`` needs ``open_clip_torch``
(``[openclip]``) and ``xrv:`` needs ``torchxrayvision`` (``[xrv]``). Without one, naming such a
backbone fails in one line that names the extra.
"""

from __future__ import annotations

import importlib

from ..runtime.errors import MissingDependencyError

# prefix -> (import name, distribution, extra)
EXTRAS = {
    "hf:": ("transformers", "transformers", "hf"),
    "openclip:": ("open_clip", "open_clip_torch", "openclip"),
    "xrv:": ("torchxrayvision", "torchxrayvision", "xrv"),
}


def require(prefix: str):
    """The library behind backbone names starting with ``prefix``, imported; a one-line
    :class:`MissingDependencyError` naming the extra when it is not installed."""
    module, dist, extra = EXTRAS[prefix]
    try:
        if module == "torchxrayvision":
            import warnings

            # torchxrayvision switches every warning off for the whole process when imported
            with warnings.catch_warnings():
                return importlib.import_module(module)
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{prefix}NAME backbones need {dist}, which is not installed ({e}); pip install 'tlmic[{extra}]'"
        ) from None
