"""ONNX export of a network built from a backbone (a finetuned classifier, or the onnx engine's tapping
network), checked against torch with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.errors import RunError


def export_onnx(model, example, path: str | Path, *, atol: float = 1e-4) -> dict:
    """Export ``model`` (uint8 ``(N, 1, S, S)`` -> logits) to ``path``; return the parity check.

    The graph takes raw grayscale pixels, so normalization travels with the model. Its outputs
    on ``example`` must match torch's within ``atol`` (max absolute difference), else RunError.
    """
    model = model.eval().to("cpu")
    example = example.to("cpu")
    return write_onnx(
        model, example, path, output_names=["logits"], check=lambda p: check_onnx(model, example, p, atol=atol)
    )


def write_onnx(model, example, path: str | Path, *, output_names: list[str], check=None):
    """Export ``model`` with a dynamic batch dimension to one self-contained ``.onnx`` file.

    Written in a temporary folder and renamed into place only after ``check(tmp_path)`` (if
    given) passed; returns what ``check`` returned. Uses the dynamo exporter, falling back to the
    TorchScript one where dynamo cannot trace.
    """
    import tempfile
    import warnings

    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    names = {"input_names": ["pixels"], "output_names": output_names}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmpdir:
        raw = Path(tmpdir) / "raw.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter chatter (deprecations inside torch.onnx)
            try:
                torch.onnx.export(
                    model, (example,), str(raw), dynamo=True, dynamic_shapes={"x": {0: batch}}, verbose=False, **names
                )
            except Exception:
                axes = {n: {0: "batch"} for n in ["pixels", *output_names]}
                torch.onnx.export(model, (example,), str(raw), dynamo=False, dynamic_axes=axes, **names)
        # weights inline (fine below protobuf's 2 GB): one file to move, copy or cache
        single = Path(tmpdir) / "model.onnx"
        onnx.save_model(onnx.load(str(raw)), str(single), save_as_external_data=False)
        result = check(single) if check is not None else None
        single.replace(path)
    return result


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
