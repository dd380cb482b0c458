"""GPU check: all-cut-point extraction throughput on one GPU (run by gpu_check.sh).

Reports, for resnet50 and densenet121 at bf16 and batch 256: images/s from uint8 tensors already
in GPU-side memory, images/s through the pixel cache (Zarr, read on the host, copied with pinned
memory), the plain fp32 eager hooks loop (b) on the same GPU, and whether onnxruntime's CUDA
provider really ran. Targets: >= 8,000 img/s for resnet50 from memory and >= 4x (b).

    python benchmarks/gpu_check.py [--device cuda] [--images 4096] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_engine(backbone: str, x, device: str, batch: int, precision: str) -> float:
    import torch

    from tlmic_feats.backbones import build_backbone
    from tlmic_feats.features.engines import TorchEngine

    b = build_backbone(backbone, "random:0")
    eng = TorchEngine(b, b.cut_points, "avg", device, precision)
    xs = x.to(device)
    with torch.inference_mode():
        eng.net(xs[:batch].contiguous(memory_format=torch.channels_last))  # warm-up (cudnn autotune)
        sync(device)
        t = time.perf_counter()
        for i in range(0, len(xs), batch):
            with eng._autocast():
                outs = eng.net(xs[i : i + batch].contiguous(memory_format=torch.channels_last))
        sync(device)
    _ = [o.float().cpu() for o in outs]
    return len(xs) / (time.perf_counter() - t)


def bench_hooks_fp32(backbone: str, x, device: str, batch: int) -> float:
    import torch

    from tlmic_feats.backbones import build_backbone
    from tlmic_feats.backbones.preprocess import device_normalize

    b = build_backbone(backbone, "random:0")
    model, norm = b.model.to(device).eval(), device_normalize(b.preprocess).to(device)
    store = {}
    for cp in b.cut_points:
        t = cp.taps[-1]
        b.model.get_submodule(t.module).register_forward_hook(
            lambda _m, _i, o, a=cp.address: store.__setitem__(a, o.mean((2, 3)).cpu())
        )
    xs = x.to(device)
    with torch.inference_mode():
        model(norm(xs[:batch]))
        sync(device)
        t0 = time.perf_counter()
        for i in range(0, len(xs), batch):
            model(norm(xs[i : i + batch]))
        sync(device)
    return len(xs) / (time.perf_counter() - t0)


def bench_pixel_cache(backbone: str, n: int, device: str, batch: int, precision: str) -> dict:
    from PIL import Image

    from tlmic_feats import DataConfig, ExtractConfig, extract_features
    from tlmic_feats.data.phantom import render_phantom

    root = Path(tempfile.mkdtemp()) / "data"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
    base = [render_phantom(rng, 224, k % 3) for k in range(32)]
    for i in range(n):
        Image.fromarray(base[i % 32]).save(root / ("a", "b")[i % 2] / f"{i:05d}.png", compress_level=1)
    cfg = dict(
        data=DataConfig(str(root)),
        backbone=backbone,
        weights="random:0",
        layers="all",
        precision=precision,
        device=device,
        batch_size=batch,
        chunk_rows=1024,
        workers=min(8, os.cpu_count() or 1),
    )
    # first run builds the pixel cache (decode once); the second extraction reads it
    extract_features(ExtractConfig(**cfg, store=str(root.parent / "warm.zarr")), progress=False)
    r = extract_features(ExtractConfig(**cfg, store=str(root.parent / "s.zarr")), progress=False)
    return {"img_per_s": round(r.images_per_second, 1), "input_wait_share": round(r.input_wait_seconds / r.seconds, 4)}


def ort_cuda_check() -> dict:
    import onnxruntime as ort
    import torch

    from tlmic_feats.backbones import build_backbone
    from tlmic_feats.backbones.cutpoints import tap_network
    from tlmic_feats.backbones.export import write_onnx

    b = build_backbone("resnet18", "random:0")
    net = tap_network(b.family, b.model, b.cut_points[-1:], "avg", b.preprocess).eval()
    path = Path(tempfile.mkdtemp()) / "r18.onnx"
    write_onnx(net, torch.zeros(2, 1, 224, 224, dtype=torch.uint8), path, output_names=["out"])
    s = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    s.run(None, {s.get_inputs()[0].name: np.zeros((8, 1, 224, 224), np.uint8)})
    return {
        "available": ort.get_available_providers(),
        "session": s.get_providers(),
        "cuda_ran": s.get_providers()[0] == "CUDAExecutionProvider",
    }


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--cache-images", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--out", default="gpu_check.json")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (args.images, 1, 224, 224), dtype=np.uint8))
    doc = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "batch": args.batch,
        "precision": args.precision,
        "backbones": {},
    }
    for backbone in ("resnet50", "densenet121"):
        mem = bench_engine(backbone, x, args.device, args.batch, args.precision)
        hooks = bench_hooks_fp32(backbone, x, args.device, args.batch)
        cache = bench_pixel_cache(backbone, args.cache_images, args.device, args.batch, args.precision)
        doc["backbones"][backbone] = {
            "from_memory_img_per_s": round(mem, 1),
            "hooks_fp32_img_per_s": round(hooks, 1),
            "speedup_vs_hooks": round(mem / hooks, 2),
            "pixel_cache": cache,
        }
        print(
            f"{backbone}: {mem:,.0f} img/s from memory ({args.precision}, all cut points), "
            f"(b) hooks fp32 {hooks:,.0f} img/s -> {mem / hooks:.2f}x; through the pixel cache "
            f"{cache['img_per_s']:,.0f} img/s (waiting for input {100 * cache['input_wait_share']:.1f}%)",
            flush=True,
        )
    try:
        doc["onnxruntime"] = ort_cuda_check()
    except Exception as e:  # report, don't hide
        doc["onnxruntime"] = {"error": f"{type(e).__name__}: {e}"}
    print("onnxruntime:", json.dumps(doc["onnxruntime"]))
    r50 = doc["backbones"]["resnet50"]
    print(
        f"targets: resnet50 >= 8000 img/s from memory: {r50['from_memory_img_per_s'] >= 8000}; "
        f">= 4x (b): {r50['speedup_vs_hooks'] >= 4}"
    )
    Path(args.out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
