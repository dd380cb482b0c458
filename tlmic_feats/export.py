"""ONNX export of a finetuned network, checked against torch with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import RunError


def export_onnx(model, example, path: str | Path, *, atol: float = 1e-4) -> dict:
    """Export ``model`` (uint8 ``(N, 1, S, S)`` -> logits) to ``path``; return the parity check.

    The graph takes raw grayscale pixels, so normalization travels with the model. Its outputs
    on ``example`` must match torch's within ``atol`` (max absolute difference), else RunError.
    """
    import tempfile
    import warnings

    import onnx
    import torch

    path = Path(path)
    model = model.eval().to("cpu")
    example = example.to("cpu")
    batch = torch.export.Dim("batch", min=1, max=1024)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmpdir:
        raw = Path(tmpdir) / "raw.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter chatter (deprecations inside torch.onnx)
            try:
                torch.onnx.export(
                    model,
                    (example,),
                    str(raw),
                    input_names=["pixels"],
                    output_names=["logits"],
                    dynamo=True,
                    dynamic_shapes={"x": {0: batch}},
                    verbose=False,
                )
            except Exception:  # fall back to the TorchScript exporter where dynamo cannot trace
                torch.onnx.export(
                    model,
                    (example,),
                    str(raw),
                    input_names=["pixels"],
                    output_names=["logits"],
                    dynamo=False,
                    dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
                )
        # One self-contained file (weights inline; fine below protobuf's 2 GB), checked before it
        # takes the final name.
        single = Path(tmpdir) / "model.onnx"
        onnx.save_model(onnx.load(str(raw)), str(single), save_as_external_data=False)
        check = check_onnx(model, example, single, atol=atol)
        single.replace(path)
    return check


def check_onnx(model, example, path: str | Path, *, atol: float = 1e-4) -> dict:
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        want = model(example).float().numpy()
    got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
    diff = float(np.abs(got - want).max())
    if not diff <= atol:
        raise RunError(f"ONNX export of {path} disagrees with torch: max |diff| {diff:.2e} > {atol:g}")
    return {"max_abs_diff": diff, "atol": atol, "providers": session.get_providers(), "batch": int(example.shape[0])}
