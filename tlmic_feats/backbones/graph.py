"""Taps and truncations of any traceable model, by torch.fx (torchvision's feature extractor).

A model is traced once into a graph whose nodes carry the name of the module that made them
(``stages.1.blocks.2.mlp.fc2``); a module's output is the last node under its name. Asking for
some modules' outputs rewrites the graph to return exactly those and drops every node they do not
depend on: what follows the deepest tap is never computed, and the parameters of the dropped
modules are not part of the result (so a truncation's parameter count follows the cut). The
result is an ordinary ``nn.Module`` sharing its parameters with the model, which torch.compile,
torch.export and the ONNX exporter trace like any other.

timm's own leaf modules and functions (``timm.layers``: the ones its FX feature extraction
registers) are kept whole, as timm does.
"""

from __future__ import annotations

from ..runtime.errors import BackboneStructureError


def _tracer_kwargs() -> dict:
    from timm.layers import get_notrace_functions, get_notrace_modules

    return {"leaf_modules": get_notrace_modules(), "autowrap_functions": get_notrace_functions()}


def module_outputs(model, name: str) -> dict[str, str]:
    """Map every module (and every traced node) of ``model`` to the node holding its output in the
    eval-mode graph: the last node under its qualified name. ``name`` names the model in errors."""
    from torchvision.models.feature_extraction import get_graph_node_names

    try:
        _, nodes = get_graph_node_names(model, tracer_kwargs=_tracer_kwargs(), suppress_diff_warning=True)
    except Exception as e:  # torch.fx raises many types on untraceable Python
        raise BackboneStructureError(
            f"{name} cannot be cut: its forward is not traceable by torch.fx ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''})"
        ) from e
    out: dict[str, str] = {}
    for node in nodes:  # graph order: a later node under the same module overwrites an earlier one
        parts = node.split(".")
        for i in range(1, len(parts) + 1):
            out[".".join(parts[:i])] = node
    return out


def graph_taps(model, modules: list[str]):
    """A module mapping the model's input to ``{module: output}`` for ``modules`` (in that order),
    computing nothing beyond the deepest of them."""
    import warnings

    from torchvision.models.feature_extraction import create_feature_extractor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FX chatter about leaf modules that hold their own submodules
        return create_feature_extractor(
            model, {m: m for m in modules}, tracer_kwargs=_tracer_kwargs(), suppress_diff_warning=True
        )


def graph_truncation(model, module: str, layout: str):
    """The model cut after ``module``: its input -> that module's output, NHWC maps permuted to NCHW."""
    import torch.nn as nn

    taps = graph_taps(model, [module])

    class GraphTruncation(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.graph = taps

        def forward(self, x):
            out = self.graph(x)[module]
            return out.permute(0, 3, 1, 2) if layout == "nhwc" else out

        def extra_repr(self) -> str:
            return f"up to {module}"

    return GraphTruncation()
