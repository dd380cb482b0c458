"""Taps and truncations of any traceable model, by torch.fx (as torchvision's feature extractor).

A model is traced (once per model, in training and in eval mode, with torchvision's node-path
tracer) into a graph whose nodes carry the name of the module that made them
(``stages.1.blocks.2.mlp.fc2``); a module's output is the last node under its name. Asking for
some modules' outputs copies the graph, makes it return exactly those, and drops every node they
do not depend on: what follows the deepest tap is never computed, and the parameters of the dropped
modules are not part of the result (so a truncation's parameter count follows the cut). The result
is torchvision's ``DualGraphModule`` (the training graph in training mode, the eval graph in eval
mode), an ordinary ``nn.Module`` sharing its parameters with the model, which torch.compile,
torch.export and the ONNX exporter trace like any other.

timm's own leaf modules and functions (``timm.layers``: the ones its FX feature extraction
registers) are kept whole, as timm does, and torchvision's ops as torchvision does.
"""

from __future__ import annotations

import weakref

from ..runtime.errors import BackboneStructureError

_TRACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {training: (graph, node names)}


def _tracer_kwargs() -> dict:
    import inspect
    import math

    import torch
    import torchvision
    from timm.layers import get_notrace_functions, get_notrace_modules

    ops = [o for _, o in inspect.getmembers(torchvision.ops) if inspect.isclass(o) and issubclass(o, torch.nn.Module)]
    return {
        "leaf_modules": list({*get_notrace_modules(), *ops}),
        "autowrap_functions": list(get_notrace_functions()),
        "autowrap_modules": (math, torchvision.ops),
    }


def _traces(model, name: str) -> dict:
    """``{training: (graph, {node: qualified name})}`` of ``model``, traced on first use."""
    if model not in _TRACES:
        from torchvision.models.feature_extraction import NodePathTracer

        was = model.training
        traces = {}
        try:
            for training in (True, False):
                model.train(training)
                tracer = NodePathTracer(**_tracer_kwargs())
                traces[training] = (tracer.trace(model), dict(tracer.node_to_qualname))
        except Exception as e:  # torch.fx raises many types on untraceable Python
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
            raise BackboneStructureError(
                f"{name or type(model).__name__} cannot be cut: its forward is not traceable by torch.fx "
                f"({type(e).__name__}: {first})"
            ) from e
        finally:
            model.train(was)
        _TRACES[model] = traces
    return _TRACES[model]


def module_outputs(model, name: str = "") -> dict[str, str]:
    """Map every module (and every traced node) of ``model`` to the name of the node holding its
    output in the eval-mode graph: the last node under its qualified name. ``name`` names the model
    in errors."""
    _, names = _traces(model, name)[False]
    out: dict[str, str] = {}
    for node in names.values():  # graph order: a later node under the same module overwrites an earlier one
        parts = node.split(".")
        for i in range(1, len(parts) + 1):
            out[".".join(parts[:i])] = node
    return out


def graph_taps(model, modules: list[str], name: str = ""):
    """A module mapping the model's input to ``{module: output}`` for ``modules`` (in that order),
    computing nothing beyond the deepest of them."""
    import torch.fx as fx
    from torchvision.models.feature_extraction import DualGraphModule

    graphs = {}
    for training, (graph, names) in _traces(model, name).items():
        last = {}
        for node in graph.nodes:  # graph order: the last node under a module is its output
            q = names.get(node)
            if q is None:
                continue
            for m in modules:
                if q == m or q.startswith(m + "."):
                    last[m] = node
        missing = [m for m in modules if m not in last]
        if missing:
            raise BackboneStructureError(f"{name or type(model).__name__}: no module {missing[0]} in its traced graph")
        copy = fx.Graph()
        env: dict = {}
        copy.graph_copy(graph, env)  # every node but the output
        copy.output({m: env[last[m]] for m in modules})
        owner = fx.GraphModule(model, copy)  # dead-code elimination asks the owning module what is pure
        owner.graph.eliminate_dead_code()
        graphs[training] = owner.graph
    taps = DualGraphModule(model, graphs[True], graphs[False], class_name=type(model).__name__)
    taps.train(model.training)
    return taps


def graph_truncation(model, module: str, layout: str, name: str = ""):
    """The model cut after ``module``: its input -> that module's output, NHWC maps permuted to NCHW."""
    import torch.nn as nn

    taps = graph_taps(model, [module], name)

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
