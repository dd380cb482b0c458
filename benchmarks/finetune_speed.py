"""Benchmark: training and inference cost of ResNet-50 truncated at 1, 2, 3 and at full depth.

For each cut point: seconds per training epoch of ``--images`` 224-px images (AdamW step,
class-weighted BCE, augmentation; the same code path as ``tlmic finetune``), images/s, and the
compactness table (parameters, MACs, CPU latency per image at batch 1). Prints a table, writes
JSON, notes the machine.

    python benchmarks/finetune_speed.py [--backbone resnet50] [--images 64] [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def main() -> None:
    import numpy as np
    import torch

    from tlmic_feats.augment import AugmentConfig, augment_batch
    from tlmic_feats.backbones import build_backbone
    from tlmic_feats.compactness import measure
    from tlmic_feats.device import autocast
    from tlmic_feats.finetune import build_network, full_depth_address, make_loss

    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--cuts", default="1,2,3,all")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--out", default="cache/bench/finetune_speed.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    b = build_backbone(args.backbone, "random")
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(0, 256, (args.images, 1, 256, 256), dtype=np.uint8))
    y = torch.from_numpy((rng.random((args.images, 1)) < 0.3).astype(np.float32))
    loss_fn = make_loss("binary", y.numpy())
    rows = []
    for cut in args.cuts.split(","):
        address = full_depth_address(b) if cut == "all" else cut
        net = build_network(b, address, 1, 0.2).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(0)
        net.train()
        # one warm-up step, then a timed epoch
        for i, start in enumerate([0, *range(0, args.images, args.batch_size)]):
            if i == 1:
                t = time.perf_counter()
            x = augment_batch(pixels[start : start + args.batch_size], 224, AugmentConfig(), gen)
            with autocast("cpu", args.precision):
                logits = net(x.contiguous(memory_format=torch.channels_last))
            loss = loss_fn(logits, y[start : start + args.batch_size])
            opt.zero_grad()
            loss.backward()
            opt.step()
        epoch_s = time.perf_counter() - t
        c = measure(f"{args.backbone} @ {address}", net.eval(), pixels[:1, :, 16:240, 16:240].float(), runs=10)
        rows.append(
            {
                "cut": address,
                "epoch_seconds": round(epoch_s, 2),
                "train_img_per_s": round(args.images / epoch_s, 1),
                "params": c.params,
                "macs": c.macs,
                "latency_ms": round(c.latency_ms, 1),
            }
        )
        print(
            f"{args.backbone} cut {address:>3}: epoch of {args.images} images {epoch_s:6.1f} s "
            f"({args.images / epoch_s:5.1f} img/s), {c.params / 1e6:5.2f} M params, {c.macs / 1e9:5.2f} GMACs, "
            f"latency {c.latency_ms:6.1f} ms/img"
        )
    doc = {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, torch {torch.__version__}",
        "precision": args.precision,
        "images": args.images,
        "batch_size": args.batch_size,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc["machine"]))


if __name__ == "__main__":
    main()
